"""Tests of the deployment heartbeat: its claimed ideal distribution, analysis and params."""

from __future__ import annotations

import itertools
import math

import pytest
from pydantic import ValidationError

from qcourier.experiments.deployment import (
    DEFAULT_STEP,
    DeploymentExperiment,
    DeploymentParams,
    heartbeat_circuit,
    ideal_p1,
    ideal_probability,
)

EXP = DeploymentExperiment()


def _all_bitstrings(n: int) -> list[str]:
    return ["".join(bits) for bits in itertools.product("01", repeat=n)]


def _exact_probabilities(width: int, step: float) -> dict[str, float]:
    from qiskit.quantum_info import Statevector

    circuit = heartbeat_circuit(width, step).remove_final_measurements(inplace=False)
    return Statevector(circuit).probabilities_dict()


# --- the module docstring's claim: a product distribution, P(q_i=1) = sin^2(step*i/2) ----------


@pytest.mark.parametrize("width", range(2, 9))
def test_ideal_distribution_matches_statevector(width):
    exact = _exact_probabilities(width, DEFAULT_STEP)
    p1 = ideal_p1(width)
    outcomes = _all_bitstrings(width)
    assert set(exact) <= set(outcomes)
    for bits in outcomes:
        assert ideal_probability(bits, p1) == pytest.approx(exact.get(bits, 0.0), abs=1e-12), bits
    assert sum(ideal_probability(b, p1) for b in outcomes) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("width", "step"), [(5, 0.7), (4, 2.1), (3, -1.3)])
def test_ideal_distribution_matches_statevector_other_steps(width, step):
    exact = _exact_probabilities(width, step)
    p1 = ideal_p1(width, step)
    for bits in _all_bitstrings(width):
        assert ideal_probability(bits, p1) == pytest.approx(exact.get(bits, 0.0), abs=1e-12), bits


def test_ideal_p1_formula_and_bit_order():
    p1 = ideal_p1(3, 0.5)
    assert p1 == pytest.approx([0.0, math.sin(0.25) ** 2, math.sin(0.5) ** 2])
    # qubit 0 is the rightmost character and has P(1) = 0
    assert ideal_probability("001", p1) == 0.0
    assert ideal_probability("100", p1) == pytest.approx(p1[2] * (1 - p1[1]))


def test_build_records_width_and_step():
    (unit,) = EXP.build(DeploymentParams(width=4, shots=100, step=0.5))
    assert unit.shots == 100
    assert unit.metadata == {"width": 4, "step": 0.5}
    (circuit,) = unit.circuits
    assert circuit.num_qubits == 4 and circuit.num_clbits == 4 and len(circuit.cregs) == 1
    assert EXP.build(DeploymentParams(width=7))[0].circuits[0].num_qubits == 7


# --- analyse() ----------------------------------------------------------------------------------


def _ideal_counts(width: int, shots: int, step: float = DEFAULT_STEP) -> dict[str, int]:
    p1 = ideal_p1(width, step)
    counts = {b: round(shots * ideal_probability(b, p1)) for b in _all_bitstrings(width)}
    return {b: n for b, n in counts.items() if n}


def _flip(counts: dict[str, int], qubit: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in counts.items():
        chars = list(key)
        pos = len(key) - 1 - qubit
        chars[pos] = "1" if chars[pos] == "0" else "0"
        flipped = "".join(chars)
        out[flipped] = out.get(flipped, 0) + n
    return out


def test_analyse_ideal_counts():
    width = 5
    counts = _ideal_counts(width, 1_000_000)
    result = EXP.analyse({"width": width, "step": DEFAULT_STEP}, [counts], None)
    assert result["experiment"] == "deployment"
    assert result["width"] == width
    assert result["shots"] == sum(counts.values())
    assert result["hellinger_fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert result["mean_absolute_deviation"] < 1e-5
    assert result["max_absolute_deviation"] < 1e-5
    assert result["p1_ideal"] == pytest.approx(ideal_p1(width))
    assert result["p1_measured"] == pytest.approx(ideal_p1(width), abs=1e-5)


def test_analyse_uses_step_from_metadata():
    width, step = 4, 1.1
    counts = _ideal_counts(width, 1_000_000, step)
    good = EXP.analyse({"width": width, "step": step}, [counts], None)
    assert good["hellinger_fidelity"] == pytest.approx(1.0, abs=1e-6)
    wrong = EXP.analyse({"width": width}, [counts], None)  # default step assumed
    assert wrong["hellinger_fidelity"] < 0.9
    assert wrong["mean_absolute_deviation"] > 0.05


def test_analyse_qubit0_flipped():
    width = 5
    counts = _flip(_ideal_counts(width, 1_000_000), 0)
    result = EXP.analyse({"width": width, "step": DEFAULT_STEP}, [counts], None)
    # ideal P(q0=1) = 0, so every observed outcome is impossible ideally
    assert result["hellinger_fidelity"] < 0.01
    assert result["p1_measured"][0] == pytest.approx(1.0)
    assert result["p1_measured"][1:] == pytest.approx(ideal_p1(width)[1:], abs=1e-5)
    assert result["max_absolute_deviation"] == pytest.approx(1.0, abs=1e-6)
    assert result["mean_absolute_deviation"] == pytest.approx(1.0 / width, abs=1e-5)


def test_analyse_last_qubit_flipped():
    width = 5
    ideal = ideal_p1(width)
    counts = _flip(_ideal_counts(width, 1_000_000), width - 1)
    result = EXP.analyse({"width": width, "step": DEFAULT_STEP}, [counts], None)
    assert result["p1_measured"][width - 1] == pytest.approx(1 - ideal[width - 1], abs=1e-5)
    assert result["p1_measured"][:-1] == pytest.approx(ideal[:-1], abs=1e-5)
    assert 0.0 < result["hellinger_fidelity"] < 0.5


def test_analyse_accepts_register_spaces():
    counts = {"0 0 0": 90, "0 1 0": 10}
    result = EXP.analyse({"width": 3, "step": DEFAULT_STEP}, [counts], None)
    assert result["shots"] == 100
    assert result["p1_measured"] == pytest.approx([0.0, 0.1, 0.0])


@pytest.mark.parametrize("bad_key", ["0000", "00", "000000"])
def test_analyse_wrong_length_raises(bad_key):
    counts = {"00000": 10, bad_key: 1}
    with pytest.raises(ValueError, match="bits, expected 5"):
        EXP.analyse({"width": 5, "step": DEFAULT_STEP}, [counts], None)


# --- parameters ---------------------------------------------------------------------------------


def test_params_defaults():
    params = DeploymentParams()
    assert params.width == 27 and params.step == DEFAULT_STEP and params.shots == 2048


@pytest.mark.parametrize(
    "values", [{"width": 1}, {"shots": 0}, {"shots": -5}, {"width": 157}, {"colour": "red"}]
)
def test_params_invalid(values):
    with pytest.raises(ValidationError):
        DeploymentParams(**values)


# --- noiseless simulation through the local service --------------------------------------------


def test_noiseless_local_service_heartbeat(tmp_path):
    from qcourier.services.base import JobState
    from qcourier.services.local import LocalService, LocalServiceConfig
    from qcourier.submission import transpile

    service = LocalService(LocalServiceConfig(root=tmp_path / "noiseless", queue_seconds=0,
                                              run_seconds=0, seed=1, noise=False))
    params = DeploymentParams(width=6, shots=4000)
    (unit,) = EXP.build(params)
    isa = transpile(unit.circuits, service.backend("fake_fez"))
    job_id = service.submit("fake_fez", isa, unit.shots)
    assert service.job_status(job_id).state is JobState.DONE
    result = service.job_result(job_id)
    assert sum(result.counts[0].values()) == 4000
    analysis = EXP.analyse(unit.metadata, result.counts, None)
    assert analysis["hellinger_fidelity"] > 0.99
    assert analysis["mean_absolute_deviation"] < 0.02
