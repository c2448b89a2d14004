"""Heavy-hex subsystem code prototype: decoded logical error vs noise, plain vs flag-aware.

Uniform circuit-level noise ``p`` on the abstract HHC circuit of
``qcourier.experiments.heavy_hex_code`` (not the ISA circuit of a backend, not the device's
calibration: that is still to be done). Two decoders on the same shots: plain PyMatching on the
decomposed DEM (``decompose_errors=True, ignore_decomposition_failures=True``), and
``qcourier.experiments.decoding.make_decoder`` (flag-conditioned matching in the X basis; the
same plain matching in the Z basis, which has no flags). Prints a Markdown table: logical error
per shot (errors in parentheses) and the least-squares slope of ``log P_L`` vs ``log p``.

    python scripts/bench_heavy_hex_code.py [--shots 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymatching

from qcourier.experiments.decoding import make_decoder
from qcourier.experiments.heavy_hex_code import memory_circuit

PS = (4e-3, 2e-3, 1e-3)


def _slope(ps, rates) -> float:
    if min(rates) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(ps), np.log(rates), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"{args.rounds} rounds, {args.shots} shots per point, sampler seed 7\n")
    print("| d | basis | decoder | " + " | ".join(f"p={p:.0e}" for p in PS) + " | slope |")
    print("|---|---|---|" + "---|" * len(PS) + "---|")
    for d in (3, 5):
        for basis in ("z", "x"):
            rows = {"plain": [], "flag-aware": []}
            for p in PS:
                circuit, _ = memory_circuit(d, args.rounds, basis, p)
                dets, obs = circuit.compile_detector_sampler(seed=7).sample(
                    args.shots, separate_observables=True)
                dem = circuit.detector_error_model(decompose_errors=True,
                                                   ignore_decomposition_failures=True)
                plain = pymatching.Matching.from_detector_error_model(dem).decode_batch(dets)
                aware = make_decoder(circuit).decode_batch(dets)
                for name, predicted in (("plain", plain), ("flag-aware", aware)):
                    rows[name].append(int(np.any(predicted != obs, axis=1).sum()))
            for name, errors in rows.items():
                rates = [e / args.shots for e in errors]
                cells = " | ".join(f"{r:.2e} ({e})" for r, e in zip(rates, errors))
                print(f"| {d} | {basis} | {name} | {cells} | {_slope(PS, rates):.2f} |",
                      flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
