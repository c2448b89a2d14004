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

Analysis (what a health metric must be: it moves with the device, not with the shot count;
a noiseless run scores 1):

- **Marginal fidelity** (the health metric): for each qubit the classical fidelity of its
  measured Bernoulli marginal against the exact ideal one,
  ``F_i = (sqrt(m_i p_i) + sqrt((1 - m_i)(1 - p_i)))^2`` (the Hellinger fidelity of the
  one-qubit distributions), and their **mean** over the qubits. The mean, not the product:
  the product falls as ``1 - n/(4N)`` with ``n`` qubits and ``N`` shots and so again
  depends on the width and shot count; the mean's shot-noise bias is only about
  ``1/(4N)`` (5e-4 at 512 shots, 1.2e-4 at 2048) whatever the width, because for a small
  deviation ``d_i`` from the ideal ``1 - F_i ~ d_i^2 / (4 p_i (1 - p_i))`` and shot noise
  gives ``E[d_i^2] = p_i (1 - p_i) / N``. A device error moves ``F_i`` by an amount that
  does not depend on ``N``. The result also records the exact mean and standard deviation
  of the metric for a perfect sampler at this shot count (a binomial sum per qubit), so
  "1 within shot noise" is a number, not a judgement; its standard error at the measured
  marginals (delta method, never below the perfect sampler's); and, to compare sessions of
  different shot counts, ``marginal_fidelity_debiased`` = the metric plus the perfect
  sampler's shortfall ``1 - E[F]`` (its expectation for a perfect sampler is exactly 1, so
  it can exceed 1 by shot noise). Sessions of the same shot count compare the plain metric.
- **Per-qubit z-scores** against the ideal: ``z_i = (m_i - p_i) / s_i`` with the shot-noise
  standard error under the ideal, ``s_i = sqrt(p_i (1 - p_i) / N)``. Qubit 0 has
  ``p_0 = 0`` (no shot noise at all); its error is floored at that of one expected count
  in ``N``, ``sqrt((1/N)(1 - 1/N) / N)``, so a single stray 1 is not an infinite z. Their sum
  of squares is a chi-squared goodness-of-fit of the marginals (dof: the qubits whose ideal
  is not deterministic), with its p-value. On real hardware readout error alone makes some
  ``|z|`` large: the z-scores say *which* qubits deviate; whether that is new is the drift
  check's job (:mod:`qcourier.accounting.report`, against the study's earlier sessions).
- **Adjacent-pair correlation**: marginals miss correlated errors. A Pauli Z on a qubit
  flips its outcome distribution (``p_i -> 1 - p_i``), and a CX's two-qubit errors flip
  *neighbours in the chain together*, which makes them covary. For each chain pair
  ``(i, i+1)`` the result gives the sample covariance of the two outcomes (ideally 0: the
  ideal is a product), its standard error under independence
  ``sqrt(v_i v_{i+1} / N)`` with the measured variances ``v = m (1 - m)``, the z-score, and
  a chi-squared over the pairs. It costs one pass over the counts; longer-range
  correlations are not checked.

The full-distribution Hellinger fidelity is not computed: over ``2^n`` outcomes with
``N << 2^n`` shots nearly every shot is a distinct bitstring, so it measures ``N``, not the
device (a perfect sampler scores about 0.17 at 27 qubits and 2048 shots).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from qcourier.experiments.base import Calibration, Experiment, ExperimentParams, JobUnit
from qcourier.experiments.statistics import normalise_key

DEFAULT_STEP = 0.123
#: A binomial sum runs over this many standard deviations either side of its mean (beyond,
#: the probability is below 1e-30).
_BINOMIAL_WINDOW_SD = 12


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


def bernoulli_fidelity(measured: float, ideal: float) -> float:
    """Classical (Hellinger) fidelity of two one-bit distributions with P(1) = the arguments."""
    overlap = math.sqrt(max(measured * ideal, 0.0)) + math.sqrt(
        max((1.0 - measured) * (1.0 - ideal), 0.0))
    return min(1.0, overlap * overlap)


def marginal_fidelities(measured: Sequence[float], ideal: Sequence[float]) -> list[float]:
    """Per-qubit :func:`bernoulli_fidelity` of measured against ideal P(1)."""
    return [bernoulli_fidelity(m, p) for m, p in zip(measured, ideal, strict=True)]


def shot_noise_fidelity(ideal: float, shots: int) -> tuple[float, float]:
    """Mean and variance of one qubit's fidelity for a perfect sampler at ``shots`` shots.

    Exact: the sum over ``K ~ Binomial(shots, ideal)`` of ``F(K / shots, ideal)``, over the
    window of :data:`_BINOMIAL_WINDOW_SD` standard deviations that holds all but a
    negligible part of the probability.
    """
    if shots <= 0:
        raise ValueError("shots must be positive")
    if ideal <= 0.0 or ideal >= 1.0:
        return 1.0, 0.0  # a deterministic ideal: a perfect sampler never deviates
    mean_k = shots * ideal
    spread = _BINOMIAL_WINDOW_SD * math.sqrt(shots * ideal * (1 - ideal)) + 10
    lo, hi = max(0, math.floor(mean_k - spread)), min(shots, math.ceil(mean_k + spread))
    log_p, log_q = math.log(ideal), math.log1p(-ideal)
    log_n = math.lgamma(shots + 1)
    total = first = second = 0.0
    for k in range(lo, hi + 1):
        weight = math.exp(log_n - math.lgamma(k + 1) - math.lgamma(shots - k + 1)
                          + k * log_p + (shots - k) * log_q)
        f = bernoulli_fidelity(k / shots, ideal)
        total += weight
        first += weight * f
        second += weight * f * f
    mean = first / total
    return mean, max(second / total - mean * mean, 0.0)


def marginal_fidelity_shot_noise(ideal: Sequence[float], shots: int) -> tuple[float, float]:
    """Mean and standard deviation of the mean marginal fidelity for a perfect sampler."""
    moments = [shot_noise_fidelity(p, shots) for p in ideal]
    mean = sum(m for m, _ in moments) / len(moments)
    return mean, math.sqrt(sum(v for _, v in moments)) / len(moments)


def marginal_fidelity_stderr(measured: Sequence[float], ideal: Sequence[float],
                             shots: int) -> float:
    """Shot-noise standard error of this session's mean marginal fidelity.

    Per qubit the delta-method variance at the measured ``m``,
    ``F (sqrt(p (1 - m)) - sqrt((1 - p) m))^2 / N`` (first order; zero when ``m = p``), plus
    the perfect sampler's variance (the second-order part that remains there). A noisy
    device has a larger error than a perfect sampler: a qubit whose ideal is 0 has
    ``F = 1 - m``, linear in ``m``.
    """
    total = 0.0
    for m, p in zip(measured, ideal, strict=True):
        f = bernoulli_fidelity(m, p)
        slope = math.sqrt(max(p * (1 - m), 0.0)) - math.sqrt(max((1 - p) * m, 0.0))
        total += max(f * slope * slope / shots, shot_noise_fidelity(p, shots)[1])
    return math.sqrt(total) / len(measured)


def p1_stderr(ideal: float, shots: int) -> float:
    """Shot-noise standard error of a measured P(1) under the ideal, floored at one count.

    A deterministic ideal (``p`` of 0 or 1) has no shot noise; its error is floored at that
    of one expected count in ``shots``, so one stray outcome is a large z, not an infinite one.
    """
    floor = (1.0 / shots) * (1.0 - 1.0 / shots)
    return math.sqrt(max(ideal * (1.0 - ideal), floor) / shots)


def p1_z_scores(measured: Sequence[float], ideal: Sequence[float], shots: int) -> list[float]:
    """Per-qubit ``(measured - ideal) / p1_stderr(ideal, shots)``."""
    return [(m - p) / p1_stderr(p, shots) for m, p in zip(measured, ideal, strict=True)]


def _deterministic(p: float, shots: int) -> bool:
    return p * (1.0 - p) < (1.0 / shots) * (1.0 - 1.0 / shots)


def chi2_survival(chi2: float, dof: int) -> float:
    """P(X >= chi2) for X chi-squared with ``dof`` degrees of freedom (1.0 when dof = 0).

    The regularised upper incomplete gamma function ``Q(dof/2, chi2/2)``: its series below
    ``a + 1``, its continued fraction (modified Lentz) above, to double precision.
    """
    if dof <= 0 or chi2 <= 0:
        return 1.0
    a, x = dof / 2.0, chi2 / 2.0
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-16:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_prefactor) * h)


def marginal_summary(measured: Sequence[float], ideal: Sequence[float], shots: int
                     ) -> dict[str, Any]:
    """The marginal part of the analysis, from the per-qubit P(1) alone.

    Also what :mod:`qcourier.accounting.report` computes for result files written before these
    fields existed (they all have ``p1_measured``, ``p1_ideal`` and ``shots``).
    """
    fidelities = marginal_fidelities(measured, ideal)
    expected, sd = marginal_fidelity_shot_noise(ideal, shots)
    stderr = marginal_fidelity_stderr(measured, ideal, shots)
    z = p1_z_scores(measured, ideal, shots)
    chi2 = sum(v * v for v in z)
    dof = sum(1 for p in ideal if not _deterministic(p, shots))
    deviations = [abs(m - p) for m, p in zip(measured, ideal, strict=True)]
    worst = max(range(len(z)), key=lambda i: abs(z[i]))
    return {
        "marginal_fidelity": sum(fidelities) / len(fidelities),
        "marginal_fidelity_debiased": sum(fidelities) / len(fidelities) + (1.0 - expected),
        "marginal_fidelity_stderr": stderr,
        "marginal_fidelity_shot_noise_mean": expected,
        "marginal_fidelity_shot_noise_sd": sd,
        "marginal_fidelities": fidelities,
        "p1_stderr": [p1_stderr(p, shots) for p in ideal],
        "p1_z": z,
        "p1_chi2": chi2,
        "p1_chi2_dof": dof,
        "p1_chi2_p_value": chi2_survival(chi2, dof),
        "worst_qubit": worst,
        "worst_qubit_z": z[worst],
        "mean_absolute_deviation": sum(deviations) / len(deviations),
        "max_absolute_deviation": max(deviations),
    }


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
        if not isinstance(params, DeploymentParams):
            raise TypeError(f"expected DeploymentParams, got {type(params).__name__}")
        circuit = heartbeat_circuit(params.width, params.step)
        return [JobUnit([circuit], params.shots, {"width": params.width, "step": params.step})]

    def analyse(self, metadata: dict[str, Any], counts: list[dict[str, int]],
                calibration: Calibration | None) -> dict[str, Any]:
        width, step = int(metadata["width"]), float(metadata.get("step", DEFAULT_STEP))
        ones = [0] * width
        pairs = [0] * (width - 1)  # shots with both qubits i and i+1 measured 1
        shots = 0
        for key, n in counts[0].items():
            k = normalise_key(key)
            if len(k) != width:
                raise ValueError(f"bitstring {key!r} has {len(k)} bits, expected {width}")
            shots += n
            bits = k[::-1]  # qubit i is character i
            for i, bit in enumerate(bits):
                if bit == "1":
                    ones[i] += n
                    if i + 1 < width and bits[i + 1] == "1":
                        pairs[i] += n
        if shots == 0:
            raise ValueError("no shots in the counts")
        ideal = ideal_p1(width, step)
        measured = [o / shots for o in ones]
        return {
            "experiment": self.name,
            "width": width,
            "shots": shots,
            "p1_measured": measured,
            "p1_ideal": ideal,
            **marginal_summary(measured, ideal, shots),
            **_pair_correlations(measured, [n / shots for n in pairs], shots),
        }

    def headline(self, analysis: dict[str, Any]) -> str | None:
        spread = analysis.get("marginal_fidelity_stderr")
        return (f"{analysis['width']} qubits: marginal fidelity "
                f"{analysis['marginal_fidelity']:.5f}"
                + ("" if spread is None else f" ± {1.96 * spread:.5f} (95%)")
                + f", worst |P(1) - ideal| {analysis['max_absolute_deviation']:.4f}")

def _pair_correlations(measured: list[float], both: list[float], shots: int) -> dict[str, Any]:
    covariance, stderr, z = [], [], []
    for i, p11 in enumerate(both):
        a, b = measured[i], measured[i + 1]
        covariance.append(p11 - a * b)
        variance = a * (1 - a) * b * (1 - b)
        # A qubit that never varied cannot covary: no test for its pairs.
        stderr.append(math.sqrt(variance / shots) if variance > 0 else None)
        z.append(covariance[-1] / stderr[-1] if stderr[-1] else None)
    tested = [v for v in z if v is not None]
    chi2 = sum(v * v for v in tested)
    return {"pair_covariance": covariance, "pair_covariance_stderr": stderr,
            "pair_covariance_z": z, "pair_chi2": chi2, "pair_chi2_dof": len(tested),
            "pair_chi2_p_value": chi2_survival(chi2, len(tested))}
