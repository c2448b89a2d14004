"""Tests of the rotated surface-code memory experiment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from qcourier.errors import UsageError
from qcourier.experiments import parse_params
from qcourier.experiments.base import Calibration
from qcourier.experiments.surface_code import (
    SurfaceCodeExperiment,
    SurfaceCodeParams,
    decoder_noise,
    fit_logical_error_per_round,
    observable_measurements,
    stim_circuit,
    to_qiskit,
)

stim = pytest.importorskip("stim")
pymatching = pytest.importorskip("pymatching")
qiskit_aer = pytest.importorskip("qiskit_aer")

EXP = SurfaceCodeExperiment()


def _simulate(circuits, shots, seed=11):
    sim = qiskit_aer.AerSimulator(method="stabilizer")
    result = sim.run(circuits, shots=shots, seed_simulator=seed).result()
    return [result.get_counts(i) for i in range(len(circuits))]


def _aer_channel(name, args):
    """stim noise channel -> Aer quantum error, with stim's conventions."""
    from qiskit_aer.noise import depolarizing_error, pauli_error

    (p,) = args
    if name == "X_ERROR":
        return pauli_error([("X", p), ("I", 1 - p)]).to_instruction()
    if name == "Z_ERROR":
        return pauli_error([("Z", p), ("I", 1 - p)]).to_instruction()
    if name == "DEPOLARIZE1":  # stim: non-identity Pauli w.p. p; Aer: lambda * 3/4
        return depolarizing_error(4 * p / 3, 1).to_instruction()
    if name == "DEPOLARIZE2":  # stim: non-identity 2q Pauli w.p. p; Aer: lambda * 15/16
        return depolarizing_error(16 * p / 15, 2).to_instruction()
    raise AssertionError(f"unexpected noise channel {name}")


# --- 1. noiseless correctness -------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "distance", "rounds", "shots"),
    [(s, 3, 3, 100) for s in "01+-"] + [(s, 5, 2, 30) for s in "01+-"],
)
def test_noiseless_no_detection_events_or_flips(state, distance, rounds, shots):
    params = SurfaceCodeParams(logical_state=state, distance=distance, rounds=rounds, shots=shots)
    (unit,) = EXP.build(params)
    counts = _simulate(unit.circuits, shots)
    out = EXP.analyse(unit.metadata, counts, None)
    assert len(out["per_round"]) == rounds
    for pub in out["per_round"]:
        assert pub["shots"] == shots
        assert pub["detection_event_fraction"] == 0
        assert pub["raw_logical_flip_rate"] == 0
        assert pub["logical_error_rate"] == 0
        assert pub["logical_errors"] == 0

    # The logical state is really prepared: the raw observable parity (no reference
    # sample) is 1 for |1> and |->, 0 for |0> and |+>, in every shot.
    expected = 1 if state in "1-" else 0
    for r, pub_counts in zip(unit.metadata["rounds"], counts, strict=True):
        records = observable_measurements(stim_circuit(distance, r, state))
        assert len(records) == distance
        parities = {sum(int(key[::-1][i]) for i in records) % 2 for key in pub_counts}
        assert parities == {expected}


# --- 2. pipeline vs stim directly ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("state", ["0", "+"])
def test_pipeline_matches_stim_at_known_noise(state):
    p, distance, rounds, shots = 0.01, 3, 3, 20_000
    basis = "z" if state == "0" else "x"

    # (a) reference: stim's own noisy circuit, sampled and decoded directly.
    ref = stim.Circuit.generated(
        f"surface_code:rotated_memory_{basis}",
        distance=distance,
        rounds=rounds,
        after_clifford_depolarization=p,
        before_round_data_depolarization=p,
        before_measure_flip_probability=p,
        after_reset_flip_probability=p,
    )
    ref_shots = 100_000
    dets, obs = ref.compile_detector_sampler(seed=5).sample(ref_shots, separate_observables=True)
    matching = pymatching.Matching.from_detector_error_model(ref.detector_error_model(decompose_errors=True))
    ref_ler = float(np.mean(np.any(matching.decode_batch(dets) != obs, axis=1)))

    # The decoder circuit of the pipeline at Calibration(p, p, p, p) is stim's circuit.
    noise = decoder_noise(Calibration(p, p, p, p))
    noisy = stim_circuit(distance, rounds, state, noise)
    assert (
        noisy.detector_error_model(decompose_errors=True).flattened()
        == ref.detector_error_model(decompose_errors=True).flattened()
    )

    # (b) the whole pipeline: build() -> Aer with the stim noise -> analyse().
    params = SurfaceCodeParams(logical_state=state, distance=distance, rounds=rounds, shots=shots)
    (unit,) = EXP.build(params)
    noisy_qc = to_qiskit(noisy, name="noisy", noise_channel=_aer_channel)
    # The noisy translation is the built circuit plus noise channels only.
    assert noisy_qc.num_clbits == unit.circuits[-1].num_clbits
    assert [i.operation.name for i in noisy_qc.data if i.operation.name != "quantum_channel"] == [
        i.operation.name for i in unit.circuits[-1].data
    ]
    (counts,) = _simulate([noisy_qc], shots, seed=3)
    metadata = dict(unit.metadata, rounds=[rounds], num_measurements=[noisy.num_measurements])
    out = EXP.analyse(metadata, [counts], Calibration(p, p, p, p))
    pipe_ler = out["per_round"][0]["logical_error_rate"]

    def std(x, n):
        return math.sqrt(max(x * (1 - x), 1e-4) / n)

    tolerance = 4 * math.hypot(std(ref_ler, ref_shots), std(pipe_ler, shots))
    assert ref_ler > 0.01
    assert abs(pipe_ler - ref_ler) <= tolerance, (pipe_ler, ref_ler, tolerance)
    assert out["per_round"][0]["detection_event_fraction"] == pytest.approx(
        float(dets.mean()), abs=0.004
    )

    # The comparison can fail: the same counts read in the wrong bit order are far off.
    flipped = [{key[::-1]: n for key, n in counts.items()}]
    bad = EXP.analyse(metadata, flipped, Calibration(p, p, p, p))["per_round"][0]
    assert abs(bad["logical_error_rate"] - ref_ler) > tolerance


# --- 3. bad parameters --------------------------------------------------------------------


@pytest.mark.parametrize("distance", [4, 1, 7, 2])
def test_bad_distance(distance):
    with pytest.raises(ValidationError, match="distance must be odd, 3 or 5"):
        SurfaceCodeParams(distance=distance)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rounds": 0}, "greater than or equal to 1"),
        ({"rounds": 26}, "less than or equal to 25"),
        ({"shots": 0}, "greater than 0"),
        ({"shots": 1_000_001}, "less than or equal to 1000000"),
        ({"logical_state": "2"}, "'0', '1', '\\+' or '-'"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params(values, message):
    with pytest.raises(ValidationError, match=message):
        SurfaceCodeParams(**values)


def test_parse_params_names_valid_values():
    with pytest.raises(UsageError, match="distance must be odd, 3 or 5"):
        parse_params(EXP, {"distance": 4})
    with pytest.raises(UsageError, match="valid parameters: shots, distance, rounds, logical_state"):
        parse_params(EXP, {"colour": "red"})
    assert parse_params(EXP, {"distance": 5}).distance == 5


# --- 4. the fit ---------------------------------------------------------------------------


def _model(eps, r):
    return (1 - (1 - 2 * eps) ** r) / 2


def test_fit_exact_points():
    eps = 0.013
    n = 10**9
    points = [(r, round(_model(eps, r) * n), n) for r in range(1, 7)]
    got, stderr = fit_logical_error_per_round(points)
    assert got == pytest.approx(eps, rel=1e-6)
    assert 0 < stderr < 1e-5


def test_fit_edge_cases():
    assert fit_logical_error_per_round([]) == (None, None)
    assert fit_logical_error_per_round([(1, 60, 100), (2, 0, 0)]) == (None, None)
    eps, stderr = fit_logical_error_per_round([(1, 0, 1000), (2, 0, 1000)])
    assert eps == 0 and stderr > 0
    # P_L >= 0.5 points are skipped, not fatal.
    eps, _ = fit_logical_error_per_round([(1, 100, 1000), (9, 600, 1000)])
    assert eps == pytest.approx(0.1)


def test_fit_through_analyse_on_synthetic_counts():
    """Counts where a known fraction of shots carry an undetectable logical error."""
    eps, n = 0.02, 200_000
    (unit,) = EXP.build(SurfaceCodeParams(logical_state="0", rounds=6))
    counts = []
    for r in unit.metadata["rounds"]:
        circuit = stim_circuit(3, r, "0")
        clean = circuit.reference_sample().astype(np.uint8)
        wrong = clean.copy()
        wrong[-9:] ^= 1  # X on all 9 data qubits (a logical X): no detection events
        assert set(observable_measurements(circuit)) <= set(range(len(wrong) - 9, len(wrong)))
        key = lambda bits: "".join(map(str, bits[::-1]))  # noqa: E731 - clbit 0 rightmost
        k = round(_model(eps, r) * n)
        counts.append({key(clean): n - k, key(wrong): k})
    out = EXP.analyse(unit.metadata, counts, None)
    for pub, r in zip(out["per_round"], unit.metadata["rounds"], strict=True):
        assert pub["detection_event_fraction"] == 0
        assert pub["logical_error_rate"] == pytest.approx(_model(eps, r), abs=1 / n)
        assert pub["raw_logical_flip_rate"] == pub["logical_error_rate"]
        lo, hi = pub["logical_error_ci95"]
        assert lo < pub["logical_error_rate"] < hi
    assert out["logical_error_per_round"] == pytest.approx(eps, rel=1e-3)
    assert 0 < out["logical_error_per_round_stderr"] < 1e-3


# --- 5. metadata and structure ------------------------------------------------------------


@pytest.mark.parametrize("state", ["0", "1", "+", "-"])
def test_structure_and_metadata(state):
    params = SurfaceCodeParams(logical_state=state, rounds=4, shots=123)
    (unit,) = EXP.build(params)
    assert unit.shots == 123
    assert len(unit.circuits) == 4
    md = unit.metadata
    assert md["rounds"] == [1, 2, 3, 4]
    assert md["basis"] == ("z" if state in "01" else "x")
    assert md["logical_state"] == state and md["distance"] == 3
    label = {"0": "zero", "1": "one", "+": "plus", "-": "minus"}[state]
    for r, qc, n_det, n_meas in zip(
        md["rounds"], unit.circuits, md["num_detectors"], md["num_measurements"], strict=True
    ):
        circuit = stim_circuit(3, r, state)
        assert qc.name == f"surface_code_d3_r{r}_{label}"
        assert qc.num_qubits == 17
        assert [reg.name for reg in qc.cregs] == ["rec"]
        assert qc.num_clbits == n_meas == circuit.num_measurements
        assert n_det == circuit.num_detectors
        assert set(qc.count_ops()) <= {"h", "cx", "x", "z", "reset", "measure"}
        # clbit i is measurement i: every clbit written exactly once, in order.
        written = [qc.find_bit(i.clbits[0]).index for i in qc.data if i.operation.name == "measure"]
        assert written == list(range(n_meas))
    assert max(c.num_qubits for c in EXP.build(params)[0].circuits) == 17
    assert EXP.build(SurfaceCodeParams(distance=5, rounds=1))[0].circuits[0].num_qubits == 49


def test_defaults_and_json():
    import json

    params = SurfaceCodeParams()
    assert (params.shots, params.distance, params.rounds, params.logical_state) == (4096, 3, 6, "+")
    (unit,) = EXP.build(params)
    assert len(unit.circuits) == 6
    json.dumps(unit.metadata)


def test_translation_rejects_unknown_gates():
    with pytest.raises(ValueError, match="not supported"):
        to_qiskit(stim.Circuit("S 0\nM 0"))
    with pytest.raises(ValueError, match="noise channel"):
        to_qiskit(stim.Circuit("X_ERROR(0.1) 0\nM 0"))


def test_translation_of_reset_and_measure_variants():
    qc = to_qiskit(stim.Circuit("RX 0\nMRX 0\nMR 1\nMX 2"))
    names = [i.operation.name for i in qc.data]
    assert names == ["reset", "h", "h", "measure", "reset", "h", "measure", "reset", "h", "measure"]


def test_analyse_rejects_mismatched_counts():
    (unit,) = EXP.build(SurfaceCodeParams(rounds=2, shots=10))
    n0, n1 = unit.metadata["num_measurements"]
    good = [{"0" * n0: 10}, {"0" * n1: 10}]
    EXP.analyse(unit.metadata, good, None)
    with pytest.raises(ValueError, match="counts for 1 circuits"):
        EXP.analyse(unit.metadata, good[:1], None)
    with pytest.raises(ValueError, match="expected"):
        EXP.analyse(unit.metadata, [{"0" * n0: 10}, {"0" * (n1 + 1): 10}], None)
    with pytest.raises(ValueError, match="0 and 1"):
        EXP.analyse(unit.metadata, [{"0" * n0: 10}, {"2" * n1: 10}], None)
    # Register separators are ignored.
    spaced = [{"0" * 3 + " " + "0" * (n0 - 3): 10}, {"0" * n1: 10}]
    assert EXP.analyse(unit.metadata, spaced, None)["per_round"][0]["shots"] == 10


def test_decoder_noise_defaults_and_clamping():
    assert decoder_noise(None) == {
        "single_qubit_gate_error": 1e-3,
        "two_qubit_gate_error": 1e-3,
        "readout_error": 1e-2,
        "reset_error": 1e-2,
    }
    noise = decoder_noise(Calibration(0.0, 0.9, 0.02, None))
    assert noise["single_qubit_gate_error"] == 1e-6
    assert noise["two_qubit_gate_error"] == 0.4
    assert noise["reset_error"] == 0.02  # falls back to readout
