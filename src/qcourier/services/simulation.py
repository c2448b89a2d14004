"""Simulating ISA circuits for the local service: counts from a circuit, a target and a seed.

Each circuit is first compacted to the physical qubits it uses, so a 17-qubit job on a
156-qubit backend simulates 17 qubits. Then:

- **Clifford circuits** (the surface code, the canaries): sampled with stim's stabilizer
  frame simulator (``engine="stim"``, the default), which handles Pauli noise for a batch of
  shots at once, or with Aer's stabilizer method (``engine="aer"``), which samples noise
  shot by shot and is two to three orders of magnitude slower on the surface code. Both use
  the same noise, and a test checks that their distributions agree.
- **Other circuits**: Aer, on the statevector method up to ``STATEVECTOR_MAX_QUBITS`` qubits
  and on matrix product states beyond (the 27-qubit heartbeat is a chain: low entanglement).

Noise (:class:`NoiseSpec`), from the target's calibration for the used qubits only: after
each gate, a depolarizing channel whose average gate infidelity equals the gate's reported
``error`` (Aer parameter ``lam = r d / (d - 1)``; stim's equivalent probability of a
non-identity Pauli is ``lam (d^2 - 1) / d^2``), and a symmetric readout error equal to the
measurement's reported ``error`` (a classical flip of the recorded bit). RZ is virtual and
error-free; resets are taken as perfect, and there is no idle (T1/T2) noise yet (the
shared model with both is ``qcourier.noise_model``, not yet used here). Every rate is
multiplied by ``QCOURIER_LOCAL_NOISE_SCALE`` (default 1). All channels are Pauli channels,
so Clifford circuits stay Clifford.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

#: Above this width a non-Clifford circuit runs on matrix product states.
STATEVECTOR_MAX_QUBITS = 20

_CLIFFORD_GATES = frozenset(
    {"x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz", "swap", "id", "reset", "measure"}
)
_STIM_NAMES = {
    "x": "X", "y": "Y", "z": "Z", "h": "H", "s": "S", "sdg": "S_DAG", "sx": "SQRT_X",
    "sxdg": "SQRT_X_DAG", "cx": "CX", "cy": "CY", "cz": "CZ", "swap": "SWAP", "id": "I",
}
_IGNORED = ("barrier", "delay")


@dataclass(frozen=True)
class NoiseSpec:
    """Error rates per gate application site, in compacted qubit indices.

    Attributes:
        gate_errors: ``(gate name, qubits) -> average gate infidelity``.
        readout_errors: ``qubit -> probability that the recorded bit flips``.
    """

    gate_errors: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    readout_errors: dict[int, float] = field(default_factory=dict)

    @staticmethod
    def depolarizing_lambda(error: float, num_qubits: int) -> float:
        """Aer's depolarizing parameter for an average gate infidelity ``error``."""
        dim = 2**num_qubits
        return min(error * dim / (dim - 1), 1.0)


def noise_spec(target: Any, physical: list[int], operations: set[str], scale: float = 1.0) -> NoiseSpec:
    """The noise of the compacted circuit's qubits, from the target's reported errors.

    Args:
        scale: multiplier on every error rate (``QCOURIER_LOCAL_NOISE_SCALE``); a rate
            is clipped at 0.5.
    """
    where = {q: i for i, q in enumerate(physical)}
    spec = NoiseSpec()
    for name in operations - {"rz", "reset", *_IGNORED}:
        if name not in target.operation_names:
            continue
        for qargs, props in (target[name] or {}).items():
            if qargs is None or props is None or props.error is None:
                continue
            if not all(q in where for q in qargs):
                continue
            local = tuple(where[q] for q in qargs)
            error = min(max(float(props.error), 0.0) * scale, 0.5)
            if name == "measure":
                spec.readout_errors[local[0]] = error
            elif error > 0:
                spec.gate_errors[(name, local)] = error
    return spec


def compact(circuit: QuantumCircuit) -> tuple[QuantumCircuit, list[int]]:
    """The circuit restricted to the qubits it uses, and those qubits' original indices."""
    from qiskit import QuantumCircuit as QC

    used = sorted(
        {
            circuit.find_bit(q).index
            for inst in circuit.data
            if inst.operation.name not in _IGNORED
            for q in inst.qubits
        }
    )
    where = {q: i for i, q in enumerate(used)}
    out = QC(len(used), circuit.num_clbits, name=circuit.name)
    for inst in circuit.data:
        if inst.operation.name in _IGNORED:
            continue
        out.append(
            inst.operation,
            [where[circuit.find_bit(q).index] for q in inst.qubits],
            [circuit.find_bit(c).index for c in inst.clbits],
        )
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
            out.append(op, inst.qubits, inst.clbits)
        else:
            return None
    return out


def simulate_counts(
    circuit: QuantumCircuit,
    shots: int,
    seed: int,
    target: Any | None,
    engine: str = "stim",
    noise_scale: float = 1.0,
) -> tuple[dict[str, int], str]:
    """Counts of an ISA circuit, and the method used (see the module docstring).

    Args:
        circuit: the ISA circuit (any width; idle qubits are dropped first).
        shots: shots to take.
        seed: simulator seed.
        target: the backend target whose errors make the noise; ``None`` for noiseless.
        engine: ``"stim"`` or ``"aer"`` for Clifford circuits.
        noise_scale: multiplier on every error rate (see :func:`noise_spec`).
    """
    small, physical = compact(circuit)
    ops = {inst.operation.name for inst in small.data}
    noise = noise_spec(target, physical, ops, noise_scale) if target is not None else NoiseSpec()
    clifford = as_clifford(small)
    if clifford is not None and engine == "stim":
        return _stim_counts(clifford, shots, seed, noise), "stim_stabilizer"
    if clifford is not None:
        method, to_run = "stabilizer", clifford
    elif small.num_qubits <= STATEVECTOR_MAX_QUBITS:
        method, to_run = "statevector", small
    else:
        method, to_run = "matrix_product_state", small
    return _aer_counts(to_run, shots, seed, noise, method), method


def _aer_counts(circuit: QuantumCircuit, shots: int, seed: int, noise: NoiseSpec, method: str) -> dict[str, int]:
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

    options: dict[str, Any] = {"method": method, "seed_simulator": seed}
    if noise.gate_errors or noise.readout_errors:
        model = NoiseModel()
        for (name, qubits), error in noise.gate_errors.items():
            lam = NoiseSpec.depolarizing_lambda(error, len(qubits))
            model.add_quantum_error(depolarizing_error(lam, len(qubits)), name, list(qubits))
        for qubit, p in noise.readout_errors.items():
            model.add_readout_error(ReadoutError([[1 - p, p], [p, 1 - p]]), [qubit])
        options["noise_model"] = model
    raw = AerSimulator(**options).run(circuit, shots=shots).result().get_counts(0)
    width = circuit.num_clbits
    return {key.replace(" ", "").zfill(width): int(n) for key, n in raw.items()}


def _stim_counts(circuit: QuantumCircuit, shots: int, seed: int, noise: NoiseSpec) -> dict[str, int]:
    import numpy as np
    import stim

    program = stim.Circuit()
    record_clbit: list[int] = []  # measurement record index -> clbit it writes
    for inst in circuit.data:
        name = inst.operation.name
        qubits = [circuit.find_bit(q).index for q in inst.qubits]
        if name == "measure":
            qubit = qubits[0]
            program.append("M", [qubit], noise.readout_errors.get(qubit, 0.0))
            record_clbit.append(circuit.find_bit(inst.clbits[0]).index)
        elif name == "reset":
            program.append("R", qubits)
        else:
            program.append(_STIM_NAMES[name], qubits)
            error = noise.gate_errors.get((name, tuple(qubits)))
            if error:
                lam = NoiseSpec.depolarizing_lambda(error, len(qubits))
                channel = "DEPOLARIZE1" if len(qubits) == 1 else "DEPOLARIZE2"
                program.append(channel, qubits, lam * (4 ** len(qubits) - 1) / 4 ** len(qubits))
    width = circuit.num_clbits
    clbits = np.zeros((shots, width), dtype=np.uint8)
    if record_clbit:
        samples = program.compile_sampler(seed=seed).sample(shots)
        for record, clbit in enumerate(record_clbit):  # later measurements overwrite earlier
            clbits[:, clbit] = samples[:, record]
    rows, counts = np.unique(clbits[:, ::-1], axis=0, return_counts=True)
    chars = (rows + ord("0")).astype(np.uint8)
    return {row.tobytes().decode(): int(n) for row, n in zip(chars, counts, strict=True)}
