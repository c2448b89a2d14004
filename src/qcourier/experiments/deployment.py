"""The deployment heartbeat: a wide, shallow circuit whose ideal output is known exactly.

Circuit on ``n`` qubits: H on all, a CX chain ``i -> i+1``, ``RZ(step * i)`` on qubit ``i``,
H on all, measure all.

Why its ideal distribution is a product: after the first layer of H the state is the
uniform superposition ``|+>^n``. Every CX permutes computational basis states, and a
permutation leaves the uniform superposition unchanged, so after the chain the state is
still ``|+>^n``. Each qubit then evolves alone: ``H RZ(t) |+>`` has amplitude
``-i sin(t/2)`` on ``|1>``, so the qubits are independent with
``P(q_i = 1) = sin^2(step * i / 2)``. The probability of a bitstring is the product of its
bits' probabilities — exact, for any ``n``, without simulating ``2^n`` amplitudes.

The CX chain still matters on hardware: its errors (and the readout) pull each qubit's
P(1) towards other values, which is what the heartbeat watches.

Analysis: per-qubit measured P(1) against the ideal, their mean absolute deviation, and the
Hellinger fidelity between the measured distribution and the ideal one.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from qcourier.experiments.base import Calibration, Experiment, ExperimentParams, JobUnit
from qcourier.experiments.statistics import hellinger_fidelity_to, normalise_key

DEFAULT_STEP = 0.123


class DeploymentParams(ExperimentParams):
    """Parameters of the heartbeat circuit."""

    shots: int = Field(2048, gt=0, le=1_000_000)
    width: int = Field(27, ge=2, le=156, description="number of qubits")
    step: float = Field(DEFAULT_STEP, description="RZ angle step: qubit i gets RZ(step * i)")


def ideal_p1(width: int, step: float = DEFAULT_STEP) -> list[float]:
    """Ideal P(1) of each qubit: ``sin^2(step * i / 2)``."""
    return [math.sin(step * i / 2) ** 2 for i in range(width)]


def ideal_probability(bitstring: str, p1: list[float]) -> float:
    """Ideal probability of a bitstring (Qiskit order: qubit 0 is the rightmost character)."""
    prob = 1.0
    for i, bit in enumerate(reversed(bitstring)):
        prob *= p1[i] if bit == "1" else 1.0 - p1[i]
    return prob


def heartbeat_circuit(width: int, step: float = DEFAULT_STEP) -> Any:
    """The heartbeat circuit (see the module docstring)."""
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister

    qc = QuantumCircuit(QuantumRegister(width, "q"), ClassicalRegister(width, "meas"),
                        name=f"heartbeat_{width}")
    qc.h(range(width))
    for i in range(width - 1):
        qc.cx(i, i + 1)
    for i in range(width):
        qc.rz(step * i, i)
    qc.h(range(width))
    qc.measure(range(width), range(width))
    return qc


class DeploymentExperiment(Experiment):
    name = "deployment"
    description = "Heartbeat: H, CX chain, RZ(0.123 i), H on n qubits; exact ideal distribution."
    Params = DeploymentParams

    def build(self, params: ExperimentParams) -> list[JobUnit]:
        assert isinstance(params, DeploymentParams)
        circuit = heartbeat_circuit(params.width, params.step)
        return [JobUnit([circuit], params.shots, {"width": params.width, "step": params.step})]

    def analyse(self, metadata: dict[str, Any], counts: list[dict[str, int]],
                calibration: Calibration | None) -> dict[str, Any]:
        width, step = int(metadata["width"]), float(metadata.get("step", DEFAULT_STEP))
        clean: dict[str, int] = {}
        for key, n in counts[0].items():
            k = normalise_key(key)
            if len(k) != width:
                raise ValueError(f"bitstring {key!r} has {len(k)} bits, expected {width}")
            clean[k] = clean.get(k, 0) + n
        shots = sum(clean.values())
        ideal = ideal_p1(width, step)
        ones = [0] * width
        for key, n in clean.items():
            for i, bit in enumerate(reversed(key)):
                if bit == "1":
                    ones[i] += n
        measured = [o / shots for o in ones] if shots else [0.0] * width
        deviations = [abs(m - p) for m, p in zip(measured, ideal, strict=True)]
        return {
            "experiment": self.name,
            "width": width,
            "shots": shots,
            "p1_measured": measured,
            "p1_ideal": ideal,
            "mean_absolute_deviation": sum(deviations) / width,
            "max_absolute_deviation": max(deviations),
            "hellinger_fidelity": hellinger_fidelity_to(clean, lambda k: ideal_probability(k, ideal)),
        }

    def headline(self, analysis: dict[str, Any]) -> str | None:
        return (f"{analysis['width']} qubits: mean |P(1) - ideal| "
                f"{analysis['mean_absolute_deviation']:.4f}, "
                f"max {analysis['max_absolute_deviation']:.4f}")
