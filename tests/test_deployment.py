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
    bernoulli_fidelity,
    chi2_survival,
    heartbeat_circuit,
    ideal_p1,
    ideal_probability,
    marginal_fidelity_shot_noise,
    shot_noise_fidelity,
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
    assert "hellinger_fidelity" not in result  # shot-count dependent: not computed any more
    assert result["marginal_fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert result["marginal_fidelities"] == pytest.approx([1.0] * width, abs=1e-9)
    assert result["mean_absolute_deviation"] < 1e-5
    assert result["max_absolute_deviation"] < 1e-5
    assert result["p1_ideal"] == pytest.approx(ideal_p1(width))
    assert result["p1_measured"] == pytest.approx(ideal_p1(width), abs=1e-5)
    assert max(abs(z) for z in result["p1_z"]) < 0.1
    assert result["pair_covariance"] == pytest.approx([0.0] * (width - 1), abs=1e-5)


def test_analyse_uses_step_from_metadata():
    width, step = 4, 1.1
    counts = _ideal_counts(width, 1_000_000, step)
    good = EXP.analyse({"width": width, "step": step}, [counts], None)
    assert good["marginal_fidelity"] == pytest.approx(1.0, abs=1e-6)
    wrong = EXP.analyse({"width": width}, [counts], None)  # default step assumed
    assert wrong["marginal_fidelity"] < 0.98
    assert wrong["p1_chi2_p_value"] < 1e-12
    assert wrong["mean_absolute_deviation"] > 0.05


def test_analyse_qubit0_flipped():
    width = 5
    counts = _flip(_ideal_counts(width, 1_000_000), 0)
    result = EXP.analyse({"width": width, "step": DEFAULT_STEP}, [counts], None)
    # ideal P(q0=1) = 0: that qubit's marginal has fidelity 0, the others 1
    assert result["marginal_fidelities"][0] == pytest.approx(0.0, abs=1e-9)
    assert result["marginal_fidelity"] == pytest.approx(1 - 1 / width, abs=1e-5)
    assert result["worst_qubit"] == 0 and result["worst_qubit_z"] > 1000
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
    assert result["worst_qubit"] == width - 1 and result["worst_qubit_z"] > 100
    expected = bernoulli_fidelity(1 - ideal[-1], ideal[-1])
    assert result["marginal_fidelities"][-1] == pytest.approx(expected, abs=1e-4)
    assert result["marginal_fidelity"] == pytest.approx((width - 1 + expected) / width, abs=1e-4)


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


# --- the metric's statistics ---------------------------------------------------------------------


def _sample(p1: list[float], shots: int, seed: int, pair_flip: tuple[int, float] | None = None
            ) -> dict[str, int]:
    """Counts of a device whose qubits are independent with these P(1) (Qiskit bit order).

    ``pair_flip=(i, eps)``: with probability ``eps`` per shot, qubits i and i+1 are flipped
    together (a correlated error that keeps independent marginals' shape).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    bits = rng.random((shots, len(p1))) < np.asarray(p1)
    if pair_flip is not None:
        i, eps = pair_flip
        both = rng.random(shots) < eps
        bits[:, i] ^= both
        bits[:, i + 1] ^= both
    counts: dict[str, int] = {}
    for row in bits[:, ::-1]:  # qubit 0 rightmost
        key = "".join("1" if b else "0" for b in row)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _noisy_p1(p1: list[float], readout: float) -> list[float]:
    """A device whose every qubit's outcome flips with probability ``readout``."""
    return [p * (1 - readout) + (1 - p) * readout for p in p1]


def _analyse(counts: dict[str, int], width: int) -> dict:
    return EXP.analyse({"width": width, "step": DEFAULT_STEP}, [counts], None)


def test_chi2_survival_known_values():
    assert chi2_survival(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    for x in (0.1, 2.0, 9.0, 60.0):  # two degrees of freedom: exactly exp(-x/2)
        assert chi2_survival(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    scipy_stats = pytest.importorskip("scipy.stats")
    for x, dof in [(26.0, 26), (3.0, 7), (100.0, 27), (0.5, 5), (200.0, 150), (1e3, 26)]:
        assert chi2_survival(x, dof) == pytest.approx(scipy_stats.chi2.sf(x, dof), rel=1e-9)
    assert chi2_survival(0.0, 5) == 1.0 and chi2_survival(5.0, 0) == 1.0


@pytest.mark.parametrize("p", [0.0038, 0.05, 0.5, 0.97])
def test_shot_noise_fidelity_matches_its_approximation_and_a_simulation(p):
    import numpy as np

    shots = 2048
    mean, variance = shot_noise_fidelity(p, shots)
    # small deviations: 1 - F ~ d^2 / (4 p (1 - p)), E[d^2] = p (1 - p) / N
    assert 1 - mean == pytest.approx(1 / (4 * shots), rel=0.15)
    k = np.random.default_rng(7).binomial(shots, p, size=20_000)
    simulated = [bernoulli_fidelity(x / shots, p) for x in k]
    assert float(np.mean(simulated)) == pytest.approx(mean, abs=4 * math.sqrt(variance / 20_000))
    assert float(np.std(simulated)) == pytest.approx(math.sqrt(variance), rel=0.05)
    assert shot_noise_fidelity(0.0, shots) == (1.0, 0.0)


def test_perfect_sampler_at_27_qubits_scores_1_within_shot_noise():
    """The old bug: a perfect sampler's full-distribution Hellinger fidelity is ~0.17 here."""
    from qcourier.experiments.statistics import hellinger_fidelity_to

    width, shots = 27, 2048
    p1 = ideal_p1(width)
    expected, sd = marginal_fidelity_shot_noise(p1, shots)
    assert 1 - 1 / (4 * shots) - 3 * sd < expected < 1
    for seed in range(5):
        counts = _sample(p1, shots, seed)
        result = _analyse(counts, width)
        # For a perfect sampler 1 - F is about chi2(dof) / (4 N n): skewed, with a long tail
        # below the mean (seed 4 is a 1% event, 4.0 sd low), hence 5 sd below, 3 above.
        assert expected - 5 * sd < result["marginal_fidelity"] < expected + 3 * sd, seed
        assert 1 - 5 * sd < result["marginal_fidelity_debiased"] < 1 + 3 * sd, seed
        assert result["p1_chi2_p_value"] > 1e-3 and result["pair_chi2_p_value"] > 1e-3
        assert result["p1_chi2_dof"] == width - 1  # qubit 0's ideal is deterministic
        # qubit 0 never varies: no pair (0, 1); nor any pair of a qubit with a P(1) close to
        # 0 or 1 (qubit 1: 0.0038, qubit 26: 0.9994) that happened not to vary either
        assert width - 5 <= result["pair_chi2_dof"] <= width - 2
        assert result["pair_covariance_z"][0] is None
        # what the heartbeat used to report for the same perfect sampler:
        old = hellinger_fidelity_to(counts, lambda k: ideal_probability(k, p1))
        assert old < 0.3


def test_metric_does_not_depend_on_the_shot_count():
    width = 27
    device = _noisy_p1(ideal_p1(width), 0.02)
    few, many = (_analyse(_sample(device, shots, 3), width) for shots in (512, 8192))
    tolerance = 4 * math.hypot(few["marginal_fidelity_stderr"], many["marginal_fidelity_stderr"])
    assert abs(few["marginal_fidelity_debiased"] - many["marginal_fidelity_debiased"]) < tolerance
    # the plain metric too, once its known shot-noise bias (<= 1/(4N)) is allowed for
    assert abs(few["marginal_fidelity"] - many["marginal_fidelity"]) < tolerance + 1 / (4 * 512)
    # and both sit on the device's true value, whatever the shot count
    true = sum(bernoulli_fidelity(d, p) for d, p in zip(device, ideal_p1(width),
                                                        strict=True)) / width
    for result in (few, many):
        assert abs(result["marginal_fidelity_debiased"] - true) < 4 * result[
            "marginal_fidelity_stderr"]


def test_standard_error_matches_the_session_to_session_spread():
    import statistics

    width, shots = 27, 2048
    device = _noisy_p1(ideal_p1(width), 0.015)
    results = [_analyse(_sample(device, shots, seed), width) for seed in range(40)]
    spread = statistics.stdev(r["marginal_fidelity"] for r in results)
    stderr = statistics.mean(r["marginal_fidelity_stderr"] for r in results)
    assert 0.75 < stderr / spread < 1.35


@pytest.mark.parametrize("shots", [512, 2048])
def test_a_noisier_device_scores_lower_outside_shot_noise(shots):
    width = 27
    ideal = ideal_p1(width)
    scores = [_analyse(_sample(_noisy_p1(ideal, e), shots, 11), width) for e in (0.0, 0.03, 0.06)]
    for better, worse in zip(scores, scores[1:]):
        gap = better["marginal_fidelity"] - worse["marginal_fidelity"]
        assert gap > 4 * math.hypot(better["marginal_fidelity_stderr"],
                                    worse["marginal_fidelity_stderr"])
    assert scores[0]["p1_chi2_p_value"] > 1e-3
    assert scores[2]["p1_chi2_p_value"] < 1e-6


def test_a_flipped_qubit_is_named_by_its_z_score():
    width, shots, sick = 27, 2048, 9
    ideal = ideal_p1(width)
    device = list(ideal)
    device[sick] = 1 - ideal[sick]  # e.g. a Z error on every shot
    result = _analyse(_sample(device, shots, 5), width)
    assert result["worst_qubit"] == sick and result["worst_qubit_z"] > 20
    assert sorted(range(width), key=lambda i: -abs(result["p1_z"][i]))[0] == sick
    others = [z for i, z in enumerate(result["p1_z"]) if i != sick]
    assert max(abs(z) for z in others) < 4.5
    assert result["p1_chi2_p_value"] < 1e-12


def test_correlated_pair_errors_are_caught_by_the_pair_check():
    """Marginals alone miss correlated errors; the adjacent-pair covariance does not."""
    width, shots, pair = 27, 8192, 3
    ideal = ideal_p1(width)
    result = _analyse(_sample(ideal, shots, 2, pair_flip=(pair, 0.01)), width)
    z = result["pair_covariance_z"]
    assert z[0] is None  # qubit 0 never varies
    assert max(range(1, width - 1), key=lambda i: abs(z[i])) == pair and z[pair] > 5
    assert result["pair_chi2_p_value"] < 1e-6
    clean = _analyse(_sample(ideal, shots, 2), width)
    assert clean["pair_chi2_p_value"] > 1e-3


# --- noiseless simulation through the local service --------------------------------------------


def _local_heartbeat(tmp_path, width: int, shots: int, noise: bool, seed: int = 1) -> dict:
    from qcourier.circuits.transpile import transpile
    from qcourier.services.base import JobState
    from qcourier.services.local import LocalService, LocalServiceConfig

    service = LocalService(LocalServiceConfig(root=tmp_path / f"local-{noise}-{shots}",
                                              queue_seconds=0, run_seconds=0, seed=seed,
                                              noise=noise))
    (unit,) = EXP.build(DeploymentParams(width=width, shots=shots))
    isa = transpile(unit.circuits, service.backend("fake_fez"))
    job_id = service.submit("fake_fez", isa, unit.shots)
    assert service.job_status(job_id).state is JobState.DONE
    result = service.job_result(job_id)
    assert sum(result.counts[0].values()) == shots
    return EXP.analyse(unit.metadata, result.counts, None)


def test_noiseless_local_service_heartbeat_scores_1_within_shot_noise(tmp_path):
    """27 qubits, 2048 shots (the defaults), noise off: the metric is 1 within shot noise."""
    width, shots = 27, 2048
    analysis = _local_heartbeat(tmp_path, width, shots, noise=False)
    expected, sd = marginal_fidelity_shot_noise(ideal_p1(width), shots)
    assert analysis["marginal_fidelity_shot_noise_mean"] == pytest.approx(expected)
    assert expected - 5 * sd < analysis["marginal_fidelity"] < expected + 3 * sd
    assert analysis["marginal_fidelity"] > 0.999
    assert analysis["p1_chi2_p_value"] > 1e-3
    assert analysis["pair_chi2_p_value"] > 1e-3
    assert max(abs(z) for z in analysis["p1_z"]) < 4.5


def test_noisy_local_service_heartbeat_scores_lower_outside_shot_noise(tmp_path):
    """fake_fez's calibrated noise: lower than a perfect sampler by many standard errors."""
    width, shots = 27, 2048
    analysis = _local_heartbeat(tmp_path, width, shots, noise=True)
    gap = analysis["marginal_fidelity_shot_noise_mean"] - analysis["marginal_fidelity"]
    assert gap > 5 * analysis["marginal_fidelity_stderr"]
    assert analysis["p1_chi2_p_value"] < 1e-6
