"""The shared device noise model: channel conversions and the ISA -> stim translation."""

from __future__ import annotations

import math

import pytest

from qcourier.circuits.noise import (
    DeviceNoise,
    NotClifford,
    depolarizing_probability,
    idle_pauli_probabilities,
    isa_to_stim,
)

SNAPSHOT = {
    "qubits": [
        [{"name": "T1", "unit": "us", "value": 100.0}, {"name": "T2", "unit": "us", "value": 80.0},
         {"name": "readout_error", "unit": "", "value": 0.02},
         {"name": "readout_length", "unit": "ns", "value": 1000}],
        [{"name": "T1", "unit": "us", "value": 50.0}, {"name": "T2", "unit": "us", "value": 40.0},
         {"name": "readout_error", "unit": "", "value": 0.01},
         {"name": "readout_length", "unit": "ns", "value": 1000}],
    ],
    "gates": [
        {"gate": "sx", "qubits": [0], "parameters": [{"name": "gate_error", "unit": "", "value": 2e-4},
                                                      {"name": "gate_length", "unit": "ns", "value": 30}]},
        {"gate": "cz", "qubits": [0, 1], "parameters": [{"name": "gate_error", "unit": "", "value": 4e-3},
                                                         {"name": "gate_length", "unit": "ns", "value": 80}]},
        {"gate": "reset", "qubits": [1], "parameters": [{"name": "gate_length", "unit": "ns", "value": 1500}]},
    ],
}


def test_depolarizing_probability_matches_average_infidelity():
    # stim DEPOLARIZE1(p) has process fidelity 1-p; r = d p / (d + 1).
    assert depolarizing_probability(1e-3, 1) == pytest.approx(1.5e-3)
    assert depolarizing_probability(1e-3, 2) == pytest.approx(1.25e-3)
    import numpy as np
    # Check against the definition: average fidelity of the channel rho -> sum_P q_P P rho P.
    p = 0.03
    paulis = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1, -1])]
    f_pro = (1 - p) * 1 + sum(p / 3 * abs(np.trace(P) / 2) ** 2 for P in paulis[1:])
    r = 1 - (2 * f_pro + 1) / 3
    assert depolarizing_probability(r, 1) == pytest.approx(p)


def test_idle_twirl():
    px, py, pz = idle_pauli_probabilities(10e-6, 100e-6, 80e-6)
    assert px == py == pytest.approx((1 - math.exp(-0.1)) / 4)
    assert pz == pytest.approx((1 - math.exp(-0.125)) / 2 - (1 - math.exp(-0.1)) / 4)
    assert idle_pauli_probabilities(0, 1e-4, 1e-4) == (0.0, 0.0, 0.0)
    assert idle_pauli_probabilities(1e-6, 1e-4, 3e-4)[2] == 0.0  # T2 > 2 T1 clipped


def test_snapshot_units_and_scale():
    noise = DeviceNoise.from_snapshot(SNAPSHOT)
    assert noise.t1[0] == pytest.approx(100e-6)
    assert noise.duration("cz", (1, 0)) == pytest.approx(80e-9)
    assert noise.gate_depolarizing("cz", (0, 1)) == pytest.approx(5e-3)
    half = noise.scaled(0.5)
    assert half.gate_depolarizing("sx", (0,)) == pytest.approx(1.5e-4)
    assert half.readout_flip(0) == pytest.approx(0.01)
    assert sum(half.idle(0, 1e-6)) == pytest.approx(sum(noise.idle(0, 1e-6)) / 2)
    assert noise.scaled(0).gate_depolarizing("cz", (0, 1)) == 0.0


def test_isa_to_stim_noiseless_and_noisy():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2, 2)
    qc.rz(math.pi / 2, 0)
    qc.sx(0)
    qc.rz(math.pi / 2, 0)  # H up to phase
    qc.cz(0, 1)
    qc.barrier()
    qc.measure(0, 1)
    qc.reset(1)
    qc.measure(1, 0)
    program, records = isa_to_stim(qc)
    assert records == [1, 0]
    assert "DEPOLARIZE" not in str(program)
    noisy, _ = isa_to_stim(qc, DeviceNoise.from_snapshot(SNAPSHOT))
    text = str(noisy)
    assert "DEPOLARIZE2(0.005)" in text
    assert "M(0.02) 0" in text and "X_ERROR(0.01) 1" in text
    assert "PAULI_CHANNEL_1" in text  # qubit 1 idles while qubit 0 is measured


def test_ecr_translated_exactly():
    import stim
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Operator

    qc = QuantumCircuit(2)
    qc.ecr(0, 1)
    program, _ = isa_to_stim(qc)
    expected = stim.Tableau.from_unitary_matrix(Operator(qc).data, endian="little")
    assert program.to_tableau() == expected


def test_non_clifford_refused():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(1)
    qc.rz(0.3, 0)
    with pytest.raises(NotClifford):
        isa_to_stim(qc)
    for gate, qubits in (("rx", [0]), ("rzz", [0, 1])):  # stim alone would take them for Cliffords
        qc = QuantumCircuit(2)
        getattr(qc, gate)(0.3, *qubits)
        with pytest.raises(NotClifford):
            isa_to_stim(qc)
    qc = QuantumCircuit(2)
    qc.rzz(math.pi / 2, 0, 1)  # a Clifford angle is translated
    qc.rx(math.pi, 0)
    program, _ = isa_to_stim(qc)
    import stim
    from qiskit.quantum_info import Operator

    assert program.to_tableau() == stim.Tableau.from_unitary_matrix(Operator(qc).data, endian="little")
