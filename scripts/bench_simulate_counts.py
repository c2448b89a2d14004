#!/usr/bin/env python
"""Time ``simulate_counts`` on the local demo's circuits (fake_fez, 2048 shots, best of 3).

The surface code (rounds 1..6, ``qcourier.experiments.surface_code`` built and transpiled with
``qcourier.circuits.transpile.transpile``) on stim, and the 27-qubit deployment heartbeat on matrix
product states; ``--aer`` adds the surface code's round 6 on Aer's stabilizer method (slow).
Works with the older ``simulate_counts(..., target)`` too, to compare a checkout of an
earlier commit: ``PYTHONPATH=<checkout>/src python scripts/bench_simulate_counts.py``.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import warnings

warnings.simplefilter("ignore")

from qcourier.experiments.deployment import heartbeat_circuit  # noqa: E402
from qcourier.experiments.surface_code import SurfaceCodeExperiment, SurfaceCodeParams  # noqa: E402
from qcourier.services.local import fake_backend  # noqa: E402
from qcourier.services.simulation import simulate_counts  # noqa: E402
from qcourier.submit.plan import transpile  # noqa: E402

SHOTS = 2048


def main() -> None:
    backend = fake_backend("fake_fez")
    unit = SurfaceCodeExperiment().build(SurfaceCodeParams(shots=SHOTS, rounds=6))[0]
    surface = transpile(unit.circuits, backend)
    heartbeat = transpile([heartbeat_circuit(27)], backend)[0]
    if "calibration" in inspect.signature(simulate_counts).parameters:
        noise = json.loads(json.dumps(backend.properties().to_dict(), default=str))
    else:  # before the shared noise model: the target
        noise = backend.target

    def best(circuits, engine: str = "stim", reps: int = 3) -> tuple[float, str]:
        times, method = [], ""
        for _ in range(reps):
            start = time.perf_counter()
            for i, circuit in enumerate(circuits):
                _, method = simulate_counts(circuit, SHOTS, 7 + i, noise, engine=engine)
            times.append(time.perf_counter() - start)
        return min(times), method

    print("surface code rounds 1..6, stim: %.3f s (%s)" % best(surface))
    print("surface code round 6, stim: %.3f s (%s)" % best(surface[-1:]))
    print("heartbeat 27 qubits: %.3f s (%s)" % best([heartbeat]))
    if "--aer" in sys.argv:
        print("surface code round 6, aer: %.3f s (%s)" % best(surface[-1:], "aer", 1))


if __name__ == "__main__":
    main()
