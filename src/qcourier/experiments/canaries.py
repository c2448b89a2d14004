"""Canary experiments: cheap circuits with known ideal outputs, to check a backend.

Both are analysed by the Hellinger fidelity between the measured distribution and the
ideal one (half all-zeros, half all-ones).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from qcourier.experiments.base import Calibration, Experiment, ExperimentParams, JobUnit
from qcourier.experiments.statistics import hellinger_fidelity_to, normalise_key


class BellParams(ExperimentParams):
    shots: int = Field(1024, gt=0, le=1_000_000)


class GHZParams(ExperimentParams):
    shots: int = Field(1024, gt=0, le=1_000_000)
    width: int = Field(5, ge=2, le=156, description="number of qubits")


def _cat_state(width: int, name: str) -> Any:
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister

    circuit = QuantumCircuit(QuantumRegister(width, "q"), ClassicalRegister(width, "meas"), name=name)
    circuit.h(0)
    for i in range(width - 1):
        circuit.cx(i, i + 1)
    circuit.measure(range(width), range(width))
    return circuit


def analyse_cat(counts: dict[str, int], width: int) -> dict[str, Any]:
    """Fidelity of counts to the ideal ``(|0...0> + |1...1>)/sqrt(2)`` distribution."""
    clean = {normalise_key(k): v for k, v in counts.items()}
    zeros, ones = "0" * width, "1" * width
    shots = sum(clean.values())
    ideal = {zeros: 0.5, ones: 0.5}
    return {
        "shots": shots,
        "hellinger_fidelity": hellinger_fidelity_to(clean, lambda k: ideal.get(k, 0.0)),
        "p_all_zeros": clean.get(zeros, 0) / shots if shots else 0.0,
        "p_all_ones": clean.get(ones, 0) / shots if shots else 0.0,
    }


class _CatExperiment(Experiment):
    """What the two cat-state canaries share: their headline."""

    def headline(self, analysis: dict[str, Any]) -> str | None:
        return (f"Hellinger fidelity {analysis['hellinger_fidelity']:.3f} to the ideal "
                f"({analysis['p_all_zeros'] + analysis['p_all_ones']:.3f} in 0...0 or 1...1)")


class BellExperiment(_CatExperiment):
    name = "bell"
    description = "Bell pair canary: H, CX, measure; ideal half 00, half 11."
    Params = BellParams

    def build(self, params: ExperimentParams) -> list[JobUnit]:
        return [JobUnit([_cat_state(2, "bell")], params.shots, {"width": 2})]

    def analyse(self, metadata: dict[str, Any], counts: list[dict[str, int]],
                calibration: Calibration | None) -> dict[str, Any]:
        return {"experiment": self.name, **analyse_cat(counts[0], 2)}


class GHZExperiment(_CatExperiment):
    name = "ghz"
    description = "GHZ canary of a given width: H, CX chain, measure; ideal half 0...0, half 1...1."
    Params = GHZParams

    def build(self, params: ExperimentParams) -> list[JobUnit]:
        if not isinstance(params, GHZParams):
            raise TypeError(f"expected GHZParams, got {type(params).__name__}")
        return [JobUnit([_cat_state(params.width, f"ghz_{params.width}")], params.shots,
                        {"width": params.width})]

    def analyse(self, metadata: dict[str, Any], counts: list[dict[str, int]],
                calibration: Calibration | None) -> dict[str, Any]:
        return {"experiment": self.name, **analyse_cat(counts[0], int(metadata["width"]))}
