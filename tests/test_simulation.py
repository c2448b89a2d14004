"""The local service's simulation: compaction, method choice, and the two Clifford engines."""

from __future__ import annotations

import math

import pytest
from qiskit import QuantumCircuit

from qcourier.services.local import fake_backend
from qcourier.services.simulation import (
    NoiseSpec,
    _aer_counts,
    _stim_counts,
    as_clifford,
    compact,
    noise_spec,
    simulate_counts,
)
from qcourier.submission import transpile


def tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def mid_circuit_clifford() -> QuantumCircuit:
    """Clifford, with a mid-circuit measurement, a reset, and a clbit written twice."""
    qc = QuantumCircuit(3, 4)
    qc.h(0)
    qc.cx(0, 1)
    qc.s(1)
    qc.sx(2)
    qc.measure(1, 3)
    qc.reset(1)
    qc.cz(0, 2)
    qc.h(2)
    qc.measure(0, 0)
    qc.measure(1, 1)
    qc.measure(2, 2)
    qc.measure(2, 3)  # overwrites clbit 3
    return qc


def test_stim_and_aer_agree_under_strong_noise():
    circuit = mid_circuit_clifford()
    noise = NoiseSpec(
        gate_errors={("h", (0,)): 0.05, ("cx", (0, 1)): 0.08, ("s", (1,)): 0.03,
                     ("sx", (2,)): 0.06, ("cz", (0, 2)): 0.1, ("h", (2,)): 0.04},
        readout_errors={0: 0.1, 1: 0.02, 2: 0.07},
    )
    shots = 40_000
    stim_counts = _stim_counts(circuit, shots, 1, noise)
    aer_counts = _aer_counts(circuit, shots, 2, noise, "stabilizer")
    noiseless = _stim_counts(circuit, shots, 3, NoiseSpec())
    assert sum(stim_counts.values()) == shots == sum(aer_counts.values())
    # Shot noise alone gives a TVD of about 0.01 here; the noise moves it by ~0.2.
    assert tvd(stim_counts, aer_counts) < 0.025
    assert tvd(stim_counts, noiseless) > 0.1


def test_noiseless_stim_counts_are_exact_for_a_bell_pair_and_respect_bit_order():
    qc = QuantumCircuit(2, 3)
    qc.x(0)
    qc.measure(0, 2)  # qubit 0 (always 1) -> clbit 2 = leftmost character
    qc.measure(1, 0)
    counts = _stim_counts(qc, 100, 1, NoiseSpec())
    assert counts == {"100": 100}


def test_compact_drops_idle_qubits_and_keeps_clbits():
    qc = QuantumCircuit(10, 2)
    qc.h(7)
    qc.cx(7, 3)
    qc.barrier()
    qc.measure(7, 0)
    qc.measure(3, 1)
    small, physical = compact(qc)
    assert physical == [3, 7] and small.num_qubits == 2 and small.num_clbits == 2
    assert [i.operation.name for i in small.data] == ["h", "cx", "measure", "measure"]


def test_clifford_detection():
    qc = QuantumCircuit(1, 1)
    qc.rz(math.pi / 2, 0)
    qc.rz(math.pi, 0)
    qc.rz(-math.pi / 2, 0)
    qc.rz(0.0, 0)
    converted = as_clifford(qc)
    assert [i.operation.name for i in converted.data] == ["s", "z", "sdg"]
    qc.rz(0.3, 0)
    assert as_clifford(qc) is None


@pytest.mark.parametrize(
    ("width", "non_clifford", "method"),
    [(4, False, "stim_stabilizer"), (4, True, "statevector"), (24, True, "matrix_product_state")],
)
def test_method_per_circuit(width, non_clifford, method):
    qc = QuantumCircuit(width, width)
    qc.h(0)
    for i in range(width - 1):
        qc.cx(i, i + 1)
    if non_clifford:
        qc.rx(0.3, 0)
    qc.measure(range(width), range(width))
    counts, used = simulate_counts(qc, 50, 1, None)
    assert used == method and sum(counts.values()) == 50
    assert all(len(k) == width for k in counts)


def test_noise_comes_from_the_used_qubits_of_the_target():
    backend = fake_backend("fake_fez")
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    isa = transpile([qc], backend)[0]
    small, physical = compact(isa)
    spec = noise_spec(backend.target, physical, {i.operation.name for i in small.data})
    assert set(spec.readout_errors) == {0, 1}
    assert spec.readout_errors[0] == pytest.approx(backend.target["measure"][(physical[0],)].error)
    assert all(max(q) < 2 for _, q in spec.gate_errors)
    assert any(name == "cz" for name, _ in spec.gate_errors)


def test_depolarizing_conventions():
    assert NoiseSpec.depolarizing_lambda(0.01, 1) == pytest.approx(0.02)
    assert NoiseSpec.depolarizing_lambda(0.03, 2) == pytest.approx(0.04)
    assert NoiseSpec.depolarizing_lambda(0.9, 1) == 1.0


def test_noise_scale_multiplies_every_rate():
    backend = fake_backend("fake_fez")
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    isa = transpile([qc], backend)[0]
    small, physical = compact(isa)
    ops = {i.operation.name for i in small.data}
    base = noise_spec(backend.target, physical, ops)
    double = noise_spec(backend.target, physical, ops, scale=2.0)
    assert double.readout_errors == {q: pytest.approx(min(2 * p, 0.5)) for q, p in base.readout_errors.items()}
    assert double.gate_errors == {k: pytest.approx(min(2 * r, 0.5)) for k, r in base.gate_errors.items()}
    off = noise_spec(backend.target, physical, ops, scale=0.0)
    assert not off.gate_errors and set(off.readout_errors.values()) == {0.0}
    counts, _ = simulate_counts(isa, 400, 1, backend.target, noise_scale=0.0)
    assert set(counts) <= {"00", "11"}


def test_noise_scale_setting_is_validated(monkeypatch):
    from pydantic import ValidationError

    from qcourier.config import Settings

    monkeypatch.setenv("QCOURIER_LOCAL_NOISE_SCALE", "0.3")
    assert Settings(_env_file=None).local_noise_scale == pytest.approx(0.3)
    monkeypatch.setenv("QCOURIER_LOCAL_NOISE_SCALE", "-1")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
