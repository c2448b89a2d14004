"""The local service's simulation: compaction, method choice, the two Clifford engines, noise."""

from __future__ import annotations

import math

import pytest
from qiskit import QuantumCircuit

from qcourier.circuits.noise import DeviceNoise, isa_to_aer, isa_to_stim
from qcourier.circuits.transpile import transpile
from qcourier.services.fake_backends import fake_backend, local_calibration
from qcourier.services.simulation import as_clifford, compact, device_noise, simulate_counts

FEZ_QUBITS = 156


def tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def xor(*flips: float) -> float:
    """Probability that an odd number of independent flips happen."""
    return (1 - math.prod(1 - 2 * f for f in flips)) / 2


def mid_circuit_clifford() -> QuantumCircuit:
    """Clifford, with a mid-circuit measurement, a reset, a delay, and a clbit written twice."""
    qc = QuantumCircuit(3, 4)
    qc.h(0)
    qc.cx(0, 1)
    qc.s(1)
    qc.sx(2)
    qc.measure(1, 3)
    qc.reset(1)
    qc.cz(0, 2)
    qc.h(2)
    qc.delay(2, 0, unit="us")
    qc.barrier()
    qc.measure(0, 0)
    qc.measure(1, 1)
    qc.measure(2, 2)
    qc.measure(2, 3)  # overwrites clbit 3
    return qc


def strong_noise() -> DeviceNoise:
    """Gate, readout, reset and (short T1/T2, long gates) idle errors, all large."""
    us = 1e-6
    return DeviceNoise(
        gate_error={("h", (0,)): 0.05, ("cx", (0, 1)): 0.08, ("s", (1,)): 0.03,
                    ("sx", (2,)): 0.06, ("cz", (0, 2)): 0.1, ("h", (2,)): 0.04},
        gate_length={("h", (0,)): 0.1 * us, ("cx", (0, 1)): 0.5 * us, ("sx", (2,)): 0.1 * us,
                     ("cz", (0, 2)): 0.4 * us, ("h", (2,)): 0.1 * us, ("reset", (1,)): 1.5 * us},
        readout_error={0: 0.1, 1: 0.02, 2: 0.07},
        readout_length={0: 1.0 * us, 1: 1.2 * us, 2: 1.0 * us},
        t1={0: 10 * us, 1: 8 * us, 2: 12 * us},
        t2={0: 6 * us, 1: 9 * us, 2: 5 * us},
    )


def test_stim_and_aer_agree_under_strong_noise():
    circuit = mid_circuit_clifford()
    noise = strong_noise()
    program, _ = isa_to_stim(circuit, noise)
    text = str(program)
    assert "PAULI_CHANNEL_1" in text and "X_ERROR" in text  # idle and reset noise are there
    shots = 40_000
    stim_counts, stim_method = simulate_counts(circuit, shots, 1, noise, engine="stim")
    aer_counts, aer_method = simulate_counts(circuit, shots, 2, noise, engine="aer")
    noiseless, _ = simulate_counts(circuit, shots, 3, None)
    assert (stim_method, aer_method) == ("stim_stabilizer", "stabilizer")
    assert sum(stim_counts.values()) == shots == sum(aer_counts.values())
    # Shot noise alone gives a TVD of about 0.01 here; the noise moves it by ~0.3.
    assert tvd(stim_counts, aer_counts) < 0.025
    assert tvd(stim_counts, noiseless) > 0.1


def test_both_emitters_place_the_same_channels():
    circuit = mid_circuit_clifford()
    noise = strong_noise()
    program, _ = isa_to_stim(circuit, noise)
    aer, readout = isa_to_aer(circuit, noise)
    channels = sum(1 for ins in program if ins.name in ("DEPOLARIZE1", "DEPOLARIZE2", "PAULI_CHANNEL_1", "X_ERROR"))
    assert channels == sum(1 for ins in aer.data if ins.operation.name == "quantum_channel")
    assert readout == {0: 0.1, 1: 0.02, 2: 0.07}
    flips = [ins.gate_args_copy()[0] for ins in program if ins.name == "M" and ins.gate_args_copy()
             for _ in ins.targets_copy()]
    assert sorted(flips) == sorted([0.1, 0.02, 0.07, 0.02, 0.07])  # one per measurement


def test_noiseless_counts_are_exact_and_respect_bit_order():
    qc = QuantumCircuit(2, 3)
    qc.x(0)
    qc.measure(0, 2)  # qubit 0 (always 1) -> clbit 2 = leftmost character
    qc.measure(1, 0)
    for engine in ("stim", "aer"):
        counts, _ = simulate_counts(qc, 100, 1, None, engine=engine)
        assert counts == {"100": 100}


def test_compact_drops_idle_qubits_and_keeps_clbits_barriers_and_delays():
    qc = QuantumCircuit(10, 2)
    qc.h(7)
    qc.cx(7, 3)
    qc.delay(100, 5, unit="ns")  # on an unused qubit: dropped
    qc.delay(100, 3, unit="ns")
    qc.barrier()
    qc.measure(7, 0)
    qc.measure(3, 1)
    small, physical = compact(qc)
    assert physical == [3, 7] and small.num_qubits == 2 and small.num_clbits == 2
    assert [i.operation.name for i in small.data] == ["h", "cx", "delay", "barrier", "measure", "measure"]
    assert small.data[3].operation.num_qubits == 2
    assert [small.find_bit(q).index for q in small.data[2].qubits] == [0]


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


def bell_isa() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return transpile([qc], fake_backend("fake_fez"))[0]


def test_noise_comes_from_the_calibration_of_the_used_qubits():
    isa = bell_isa()
    small, physical = compact(isa)
    snapshot = local_calibration("fake_fez")
    noise = device_noise(snapshot, physical)
    assert set(noise.readout_error) == set(physical) == set(noise.t1)
    assert all(set(q) <= set(physical) for _, q in noise.gate_error)
    full = DeviceNoise.from_snapshot(snapshot)
    assert noise.readout_flip(physical[0]) == full.readout_flip(physical[0])
    program, _ = isa_to_stim(small, noise, physical)
    assert program.num_qubits == 2
    with pytest.raises(TypeError, match="calibration snapshot"):  # a Target would mean no noise
        simulate_counts(isa, 10, 1, fake_backend("fake_fez").target)
    cz = full.gate_depolarizing("cz", tuple(physical))
    assert cz == pytest.approx(1.25 * full.gate_error[("cz", tuple(physical))])
    (depolarize,) = [ins for ins in program if ins.name == "DEPOLARIZE2"]
    assert depolarize.gate_args_copy() == [pytest.approx(cz)]


def test_the_simulator_samples_the_program_a_decoder_builds():
    """Compacted to its used qubits, the surface code's program is the decoder's program
    (``isa_to_stim`` of the whole ISA circuit, full-device noise), qubits relabelled."""
    import stim

    from qcourier.experiments.surface_code import SurfaceCodeExperiment, SurfaceCodeParams

    unit = SurfaceCodeExperiment().build(SurfaceCodeParams(shots=10, rounds=2))[0]
    isa = transpile(unit.circuits[-1:], fake_backend("fake_fez"))[0]
    snapshot = local_calibration("fake_fez")
    decoder, decoder_records = isa_to_stim(isa, DeviceNoise.from_snapshot(snapshot))
    small, physical = compact(isa)
    sampled, sampled_records = isa_to_stim(small, device_noise(snapshot, physical), physical)
    relabelled = stim.Circuit()
    for ins in sampled:
        relabelled.append(ins.name, [physical[t.value] for t in ins.targets_copy()], ins.gate_args_copy())
    assert relabelled == decoder and sampled_records == decoder_records
    assert sampled.num_qubits == len(physical) < decoder.num_qubits
    assert {"PAULI_CHANNEL_1", "X_ERROR", "DEPOLARIZE2"} <= {ins.name for ins in sampled}


def test_a_wide_circuit_is_simulated_on_its_used_qubits(monkeypatch):
    import qcourier.services.simulation as simulation

    qc = QuantumCircuit(FEZ_QUBITS, 3)
    qc.x(150)
    qc.x(120)
    qc.barrier()  # across all 156 qubits
    qc.measure([150, 120, 3], [0, 1, 2])
    sizes = []
    original = simulation._stim_counts

    def spy(program, *args):
        sizes.append(program.num_qubits)
        return original(program, *args)

    monkeypatch.setattr(simulation, "_stim_counts", spy)
    counts, _ = simulate_counts(qc, 100, 1, local_calibration("fake_fez"), noise_scale=0.0)
    assert sizes == [3] and counts == {"011": 100}


def idle_circuit(wait: str) -> QuantumCircuit:
    """X on device qubits 3 and 5; qubit 3 then waits (a 60 us delay, or 2,000 X gates on
    qubit 4 behind barriers) before both are measured."""
    qc = QuantumCircuit(FEZ_QUBITS, 2)
    qc.x([3, 5])
    if wait == "delay":
        qc.delay(60, 3, unit="us")
    elif wait == "delay_dt":
        qc.delay(15_000, 3, unit="dt")  # 60 us at fez's 4 ns
    else:
        qc.x(4)
        qc.barrier(3, 4)
        for _ in range(2000):  # 48 us of qubit 4's gates (an even number: X^2000 = I)
            qc.x(4)
        qc.barrier(3, 4)
    qc.measure([3, 5], [0, 1])
    return qc


@pytest.mark.parametrize(("wait", "engine"), [("delay", "stim"), ("delay", "aer"), ("delay_dt", "stim"),
                                              ("gates", "stim"), ("gates", "aer")])
def test_a_waiting_qubit_decays_as_its_t1_says(wait, engine):
    snapshot = local_calibration("fake_fez")
    full = DeviceNoise.from_snapshot(snapshot)
    qc = idle_circuit(wait)
    shots = 20_000
    counts, _ = simulate_counts(qc, shots, 5, snapshot, engine=engine,
                                dt=fake_backend("fake_fez").dt)
    wrong = [sum(n for k, n in counts.items() if k[::-1][i] == "0") / shots for i in (0, 1)]
    duration = 60e-6 if wait.startswith("delay") else 2000 * full.duration("x", (4,))
    px, py, _ = full.idle(3, duration)
    gate = [2 / 3 * full.gate_depolarizing("x", (q,)) for q in (3, 5)]
    expected_waiting = xor(px + py, gate[0], full.readout_flip(3))
    expected_control = xor(gate[1], full.readout_flip(5))
    assert px + py > 0.08  # the effect is big: 60 us on T1 = 220 us
    for measured, expected in zip(wrong, (expected_waiting, expected_control), strict=True):
        assert abs(measured - expected) < 5 * math.sqrt(expected * (1 - expected) / shots)
    assert wrong[0] > 5 * wrong[1]


def test_a_non_clifford_circuit_gets_the_same_idle_noise():
    """The Aer statevector path (an arbitrary RZ) has the idle channel too."""
    snapshot = local_calibration("fake_fez")
    full = DeviceNoise.from_snapshot(snapshot)
    qc = idle_circuit("delay")
    qc.rz(0.3, 7)
    qc.sx(7)
    counts, method = simulate_counts(qc, 8000, 6, snapshot)
    assert method == "statevector"
    wrong = sum(n for k, n in counts.items() if k[-1] == "0") / 8000
    px, py, _ = full.idle(3, 60e-6)
    expected = xor(px + py, 2 / 3 * full.gate_depolarizing("x", (3,)), full.readout_flip(3))
    assert abs(wrong - expected) < 5 * math.sqrt(expected * (1 - expected) / 8000)


@pytest.mark.parametrize("engine", ["stim", "aer"])
def test_a_reset_leaves_the_wrong_state_as_often_as_the_model_says(engine):
    snapshot = local_calibration("fake_fez")
    full = DeviceNoise.from_snapshot(snapshot).scaled(3.0)
    qc = QuantumCircuit(FEZ_QUBITS, 1)
    qc.x(0)
    qc.reset(0)
    qc.measure(0, 0)
    shots = 40_000
    counts, _ = simulate_counts(qc, shots, 7, snapshot, engine=engine, noise_scale=3.0)
    ones = counts.get("1", 0) / shots
    px, py, _ = full.idle(0, full.duration("reset", (0,)))
    readout = full.readout_flip(0)
    expected = xor(full.reset_flip(0), px + py, readout)
    without_reset_error = xor(px + py, readout)
    sigma = math.sqrt(expected * (1 - expected) / shots)
    assert abs(ones - expected) < 5 * sigma
    assert expected - without_reset_error > 10 * sigma


def deterministic_isa() -> QuantumCircuit:
    """A Clifford ISA circuit whose noiseless outcome is always 10011."""
    qc = QuantumCircuit(5, 5)
    qc.x(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.x(2)
    qc.cx(2, 3)
    qc.x(4)
    qc.measure(range(5), range(5))
    isa = transpile([qc], fake_backend("fake_fez"))[0]
    assert simulate_counts(isa, 10, 1, None)[0] == {"10011": 10}
    return isa


def test_noise_scale_zero_is_noiseless_on_every_engine():
    isa = deterministic_isa()
    snapshot = local_calibration("fake_fez")
    for engine in ("stim", "aer"):
        counts, _ = simulate_counts(isa, 2000, 1, snapshot, engine=engine, noise_scale=0.0)
        assert counts == {"10011": 2000}
    non_clifford = isa.copy()
    non_clifford.rz(0.3, non_clifford.find_bit(isa.data[0].qubits[0]).index)
    counts, method = simulate_counts(non_clifford, 500, 1, snapshot, noise_scale=0.0)
    assert method == "statevector" and counts == {"10011": 500}


def test_errors_grow_with_the_noise_scale():
    isa = deterministic_isa()
    snapshot = local_calibration("fake_fez")
    shots = 20_000
    wrong = []
    for scale in (0.0, 0.5, 1.0, 2.0, 4.0):
        counts, _ = simulate_counts(isa, shots, 2, snapshot, noise_scale=scale)
        wrong.append(1 - counts.get("10011", 0) / shots)
    assert wrong[0] == 0.0
    assert all(b > a + 0.01 for a, b in zip(wrong, wrong[1:]))


def test_noise_scale_setting_is_validated(monkeypatch):
    from qcourier.config import Settings
    from qcourier.errors import QcourierError

    monkeypatch.setenv("QCOURIER_LOCAL_NOISE_SCALE", "0.3")
    assert Settings().local_noise_scale == pytest.approx(0.3)
    monkeypatch.setenv("QCOURIER_LOCAL_NOISE_SCALE", "-1")
    with pytest.raises(QcourierError, match="^bad setting QCOURIER_LOCAL_NOISE_SCALE: '-1' is not "
                       r"valid \(input should be greater than or equal to 0\)$"):
        Settings()
