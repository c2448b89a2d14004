"""Heavy-hex subsystem code prototype: decoded logical error vs noise (stim + PyMatching).

Uniform circuit-level noise ``p`` on the abstract HHC circuit of
``qcourier.experiments.heavy_hex_code`` (not the ISA circuit of a backend, not the device's
calibration: that is still to be done). Prints one table row per (distance, basis, p).

    python scripts/bench_heavy_hex_code.py [--shots 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymatching

from qcourier.experiments.heavy_hex_code import memory_circuit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'d':>2} {'basis':>5} {'p':>8} {'rounds':>6} {'shots':>8} {'errors':>7} {'P_L':>10} {'sec':>5}")
    for d in (3, 5):
        for basis in ("z", "x"):
            for p in (4e-3, 2e-3, 1e-3):
                start = time.perf_counter()
                circuit, _ = memory_circuit(d, args.rounds, basis, p)
                dem = circuit.detector_error_model(decompose_errors=True,
                                                   ignore_decomposition_failures=True)
                matching = pymatching.Matching.from_detector_error_model(dem)
                dets, obs = circuit.compile_detector_sampler(seed=7).sample(
                    args.shots, separate_observables=True)
                predicted = matching.decode_batch(dets)
                errors = int(np.any(predicted != obs, axis=1).sum())
                print(f"{d:>2} {basis:>5} {p:>8.0e} {args.rounds:>6} {args.shots:>8} {errors:>7} "
                      f"{errors / args.shots:>10.2e} {time.perf_counter() - start:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
