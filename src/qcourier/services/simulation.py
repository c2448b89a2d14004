"""Simulating ISA circuits for the local service: counts from a circuit, a calibration and a seed.

Each circuit is first compacted to the physical qubits it uses (barriers and delays kept on
those qubits), so a 17-qubit job on a 156-qubit backend simulates 17 qubits. Then:

- **Clifford circuits** (the surface code, the canaries): sampled with stim's stabilizer
  frame simulator (``engine="stim"``, the default), which handles Pauli noise for a batch of
  shots at once, or with Aer's stabilizer method (``engine="aer"``), which samples noise
  shot by shot and is two to three orders of magnitude slower on the surface code. Both use
  the same noise, and a test checks that their distributions agree.
- **Other circuits**: Aer, on the statevector method up to ``STATEVECTOR_MAX_QUBITS`` qubits
  and on matrix product states beyond (the 27-qubit heartbeat is a chain: low entanglement).

Noise: the shared device model, :class:`qcourier.circuits.noise.DeviceNoise`, built from the
backend's calibration snapshot (``BackendProperties.to_dict()`` form, what
``LocalService.calibration`` returns) for the used qubits only, with every probability
multiplied by ``noise_scale`` (``QCOURIER_LOCAL_NOISE_SCALE``, default 1). The circuit is
walked once on the as-soon-as-possible schedule (:func:`qcourier.circuits.noise.schedule`), which
places the channels: depolarizing after each gate with a reported error (``p = r (d+1)/d``),
a classical readout flip, an X flip after each reset plus the reset's idle, and T1/T2
(Pauli-twirled amplitude and phase damping) idle error wherever a qubit waits. The stim engine
samples :func:`~qcourier.circuits.noise.isa_to_stim` of it, the very program a decoder models;
Aer runs :func:`~qcourier.circuits.noise.isa_to_aer` (the same channels as inline ``PauliError``
instructions, readout flips as ``ReadoutError``). RZ is virtual and error-free; a gate without a
reported error is noiseless. All channels are Pauli channels, so Clifford circuits stay Clifford.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qcourier.circuits.noise import DeviceNoise, NotClifford, isa_to_aer, isa_to_stim

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

#: Above this width a non-Clifford circuit runs on matrix product states.
STATEVECTOR_MAX_QUBITS = 20

_CLIFFORD_GATES = frozenset(
    {"x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz", "ecr", "swap", "id",
     "reset", "measure", "barrier", "delay"}
)
_SCHEDULING = ("barrier", "delay")  # kept by compaction (they place idle noise), not "using" a qubit


def device_noise(calibration: Mapping[str, Any] | DeviceNoise | None, physical: list[int],
                 scale: float = 1.0, dt: float | None = None) -> DeviceNoise | None:
    """The noise of the device qubits ``physical``, or ``None`` for noiseless.

    Args:
        calibration: a calibration snapshot (``BackendProperties.to_dict()`` form), or an
            already loaded :class:`DeviceNoise` (its ``scale`` is replaced by ``scale``).
        scale: multiplier on every error probability (``QCOURIER_LOCAL_NOISE_SCALE``).
        dt: seconds per ``dt`` for delays in that unit (the backend's ``dt``).
    """
    if calibration is None:
        return None
    if isinstance(calibration, DeviceNoise):
        from dataclasses import replace

        return replace(calibration, scale=float(scale), dt=dt if dt is not None else calibration.dt)
    # A qiskit Target is a Mapping too, without these keys: it would give no noise, silently.
    if not isinstance(calibration, Mapping) or "qubits" not in calibration or "gates" not in calibration:
        raise TypeError("calibration must be a calibration snapshot (BackendProperties.to_dict() "
                        f"form, with 'qubits' and 'gates') or a DeviceNoise, not {type(calibration).__name__}")
    return DeviceNoise.from_snapshot(calibration, physical, scale, dt)


def compact(circuit: QuantumCircuit) -> tuple[QuantumCircuit, list[int]]:
    """The circuit restricted to the qubits it uses, and those qubits' original indices.

    A qubit is used when an instruction other than a barrier or delay acts on it; barriers and
    delays are kept on the used qubits (they shape the schedule, hence the idle noise).
    """
    from qiskit import QuantumCircuit as QC
    from qiskit.circuit import Barrier, CircuitInstruction

    find = circuit.find_bit
    used = sorted(
        {
            find(q).index
            for inst in circuit.data
            if inst.operation.name not in _SCHEDULING
            for q in inst.qubits
        }
    )
    where = {q: i for i, q in enumerate(used)}
    out = QC(len(used), circuit.num_clbits, name=circuit.name)
    qbits, cbits = out.qubits, out.clbits
    for inst in circuit.data:
        op = inst.operation
        qubits = [where[i] for i in (find(q).index for q in inst.qubits) if i in where]
        if op.name in _SCHEDULING:
            if not qubits:
                continue
            if op.name == "barrier" and len(qubits) != op.num_qubits:
                op = Barrier(len(qubits))
        # The circuit is already valid: _append skips append's broadcasting and checks.
        out._append(CircuitInstruction(op, tuple(qbits[q] for q in qubits),
                                       tuple(cbits[find(c).index] for c in inst.clbits)))
    return out, used


def as_clifford(circuit: QuantumCircuit) -> QuantumCircuit | None:
    """The circuit with quarter-turn RZs as S/Z/Sdg, or ``None`` if it is not Clifford."""
    from qiskit import QuantumCircuit as QC

    out = QC(*circuit.qregs, *circuit.cregs, name=circuit.name)
    quarter = {1: "s", 2: "z", 3: "sdg"}
    for inst in circuit.data:
        op = inst.operation
        if op.name == "rz":
            try:
                k = float(op.params[0]) / (math.pi / 2)
            except TypeError:  # an unbound parameter
                return None
            if abs(k - round(k)) > 1e-9:
                return None
            turns = round(k) % 4
            if turns:
                getattr(out, quarter[turns])(inst.qubits[0])
        elif op.name in _CLIFFORD_GATES and not getattr(op, "condition", None):
            out.append(op, inst.qubits, inst.clbits, copy=False)
        else:
            return None
    return out


def simulate_counts(
    circuit: QuantumCircuit,
    shots: int,
    seed: int,
    calibration: Mapping[str, Any] | DeviceNoise | None,
    engine: str = "stim",
    noise_scale: float = 1.0,
    dt: float | None = None,
) -> tuple[dict[str, int], str]:
    """Counts of an ISA circuit, and the method used (see the module docstring).

    Args:
        circuit: the ISA circuit (any width; idle qubits are dropped first).
        shots: shots to take.
        seed: simulator seed.
        calibration: the backend's calibration snapshot (or a :class:`DeviceNoise`) whose
            values make the noise; ``None`` for noiseless.
        engine: ``"stim"`` or ``"aer"`` for Clifford circuits.
        noise_scale: multiplier on every error probability (0: noiseless).
        dt: the backend's ``dt`` in seconds, for delays given in ``dt``.

    Raises:
        UnsupportedInstruction: the circuit has classically controlled instructions.
    """
    small, physical = compact(circuit)
    noise = device_noise(calibration, physical, noise_scale, dt)
    if engine == "stim":
        try:
            program, record_clbit = isa_to_stim(small, noise, physical)
        except NotClifford:
            pass
        else:
            return _stim_counts(program, record_clbit, small.num_clbits, shots, seed), "stim_stabilizer"
    clifford = as_clifford(small)
    if clifford is not None:
        method, to_run = "stabilizer", clifford
    elif small.num_qubits <= STATEVECTOR_MAX_QUBITS:
        method, to_run = "statevector", small
    else:
        method, to_run = "matrix_product_state", small
    noisy, readout = isa_to_aer(to_run, noise, physical)
    return _aer_counts(noisy, readout, shots, seed, method), method


def _aer_counts(circuit: QuantumCircuit, readout: Mapping[int, float], shots: int, seed: int,
                method: str) -> dict[str, int]:
    """Counts of a circuit whose quantum noise is inline, with readout flips per qubit."""
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel, ReadoutError

    options: dict[str, Any] = {"method": method, "seed_simulator": seed}
    if readout:
        model = NoiseModel()
        for qubit, p in readout.items():
            model.add_readout_error(ReadoutError([[1 - p, p], [p, 1 - p]]), [qubit])
        options["noise_model"] = model
    raw = AerSimulator(**options).run(circuit, shots=shots).result().get_counts(0)
    width = circuit.num_clbits
    return {key.replace(" ", "").zfill(width): int(n) for key, n in raw.items()}


def _stim_counts(program: Any, record_clbit: list[int], num_clbits: int, shots: int,
                 seed: int) -> dict[str, int]:
    """Counts of a stim program whose measurement ``k`` writes clbit ``record_clbit[k]``."""
    import numpy as np

    clbits = np.zeros((shots, num_clbits), dtype=np.uint8)
    if record_clbit:
        samples = program.compile_sampler(seed=seed).sample(shots)
        for record, clbit in enumerate(record_clbit):  # later measurements overwrite earlier
            clbits[:, clbit] = samples[:, record]
    rows, counts = np.unique(clbits[:, ::-1], axis=0, return_counts=True)
    chars = (rows + ord("0")).astype(np.uint8)
    return {row.tobytes().decode(): int(n) for row, n in zip(chars, counts, strict=True)}
