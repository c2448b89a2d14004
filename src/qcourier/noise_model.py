"""One Pauli noise model of a device, from its calibration snapshot, for decoder and simulator.

The same :class:`DeviceNoise` feeds the local simulator (``services/simulation.py``, which
samples with it) and the QEC decoders (``experiments/heavy_hex_code.py``, whose detector
error model is built with it from the ISA circuit that ran). Both translate an ISA circuit
with :func:`isa_to_stim`, so the circuit sampled and the circuit decoded are the same program
with the same channels. This module imports nothing of qcourier: it is a leaf that
``services`` and ``experiments`` may both use.

Input: a calibration snapshot in the ``BackendProperties.to_dict()`` form that
``QuantumService.calibration`` returns and the ledger stores (``qubits``: T1, T2 in us,
``readout_error``, ``readout_length`` in ns; ``gates``: ``gate_error``, ``gate_length`` in ns).

Channels (all Pauli channels, so a Clifford circuit stays a stabilizer circuit):

Gates
    A gate with reported average gate infidelity ``r`` on ``n`` qubits gets, after it, the
    depolarizing channel with the same average infidelity. For a channel that applies each
    of the ``d^2 - 1`` non-identity Paulis with probability ``p / (d^2 - 1)`` (``d = 2^n``),
    which is exactly stim's ``DEPOLARIZE1(p)`` (X, Y, Z with ``p/3`` each) and
    ``DEPOLARIZE2(p)`` (15 Paulis with ``p/15`` each), the process (entanglement) fidelity is
    ``F_pro = 1 - p`` and the average gate fidelity is ``F_avg = (d F_pro + 1) / (d + 1)``
    (Horodecki; Nielsen 2002). Hence ``r = 1 - F_avg = d p / (d + 1)`` and

        ``p = r (d + 1) / d``:  ``p = 3r/2`` for one qubit, ``p = 5r/4`` for two.

    Feeding ``r`` itself in as ``p`` under-states the error by 1.5x (1q) and 1.25x (2q).
    ``rz`` is virtual (zero length, zero error). A gate without a reported error is taken as
    error-free (and said so by :meth:`DeviceNoise.missing`).
Readout
    A symmetric classical flip of the recorded bit with probability ``readout_error`` (the
    average of ``prob_meas1_prep0`` and ``prob_meas0_prep1``), as stim's ``M(p)``.
Reset
    IBM reports no reset error. A reset on IBM hardware is a measurement followed by a
    conditional X, so it leaves the wrong state when that measurement misreads: an X flip
    after the reset with probability ``readout_error`` (averaged over the input state), plus
    the idle error of the reset's duration (``gate_length`` of ``reset``) on that qubit.
Idle
    A qubit waiting ``t`` between two of its operations (the translator schedules the circuit
    as soon as possible, with barriers as synchronisation points and each instruction's
    reported length) gets the Pauli twirl of amplitude and phase damping:
    ``p_x = p_y = (1 - exp(-t/T1)) / 4``, ``p_z = (1 - exp(-t/T2)) / 2 - (1 - exp(-t/T1)) / 4``
    (``p_z`` clipped at 0 where a snapshot reports ``T2 > 2 T1``). A qubit also decays
    during its own gate; that is inside the gate's reported error, so no idle is added there.

Scale
    ``scale`` multiplies every probability above (gate, readout, reset, idle), each clipped to
    its channel's maximum: ``QCOURIER_LOCAL_NOISE_SCALE`` for the local simulator, and what a
    threshold study varies. The decoder of a real run uses ``scale = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import stim
    from qiskit import QuantumCircuit

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "": 1.0}
#: Gate names a snapshot may report that are not separate ISA operations.
_VIRTUAL = frozenset({"rz"})
_QUARTER = {1: "S", 2: "Z", 3: "S_DAG"}
_STIM_NAMES = {
    "x": "X", "y": "Y", "z": "Z", "h": "H", "s": "S", "sdg": "S_DAG", "sx": "SQRT_X",
    "sxdg": "SQRT_X_DAG", "cx": "CX", "cy": "CY", "cz": "CZ", "swap": "SWAP",
}
_IGNORED = frozenset({"barrier", "delay", "id"})


class NotClifford(ValueError):
    """The circuit has an instruction stim cannot represent exactly."""


def depolarizing_probability(infidelity: float, num_qubits: int) -> float:
    """stim's ``DEPOLARIZE{n}`` probability for an average gate infidelity (module doc)."""
    d = 2**num_qubits
    return infidelity * (d + 1) / d


def idle_pauli_probabilities(duration: float, t1: float | None, t2: float | None) -> tuple[float, float, float]:
    """``(p_x, p_y, p_z)`` of the Pauli-twirled amplitude and phase damping over ``duration``."""
    if duration <= 0:
        return (0.0, 0.0, 0.0)
    relax = 1 - math.exp(-duration / t1) if t1 and t1 > 0 else 0.0
    dephase = 1 - math.exp(-duration / t2) if t2 and t2 > 0 else relax
    p_xy = relax / 4
    return (p_xy, p_xy, max(dephase / 2 - relax / 4, 0.0))


def _value(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("value")
    if value is None:
        return None
    try:
        number = float(value) * _UNITS.get(str(entry.get("unit") or ""), 1.0)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class DeviceNoise:
    """Per-qubit and per-gate calibration values (SI units) and the scale applied to them.

    Attributes:
        gate_error: ``(gate, qubits) -> average gate infidelity``.
        gate_length: ``(gate, qubits) -> seconds`` (``reset`` included).
        readout_error: ``qubit -> probability the recorded bit flips``.
        readout_length: ``qubit -> seconds``.
        t1, t2: ``qubit -> seconds``.
        scale: multiplier on every error probability.
    """

    gate_error: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    gate_length: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    readout_error: dict[int, float] = field(default_factory=dict)
    readout_length: dict[int, float] = field(default_factory=dict)
    t1: dict[int, float] = field(default_factory=dict)
    t2: dict[int, float] = field(default_factory=dict)
    scale: float = 1.0

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], qubits: Iterable[int] | None = None,
                      scale: float = 1.0) -> DeviceNoise:
        """The noise of ``qubits`` (all when ``None``) from a calibration snapshot."""
        wanted = None if qubits is None else set(qubits)
        noise = cls(scale=float(scale))
        for index, entries in enumerate(snapshot.get("qubits", []) or []):
            if wanted is not None and index not in wanted:
                continue
            for entry in entries or []:
                value = _value(entry)
                if value is None:
                    continue
                name = entry.get("name")
                if name == "T1":
                    noise.t1[index] = value
                elif name == "T2":
                    noise.t2[index] = value
                elif name == "readout_error":
                    noise.readout_error[index] = min(max(value, 0.0), 0.5)
                elif name == "readout_length":
                    noise.readout_length[index] = value
        for gate in snapshot.get("gates", []) or []:
            qargs = tuple(int(q) for q in gate.get("qubits", []))
            if wanted is not None and not set(qargs) <= wanted:
                continue
            name = str(gate.get("gate", ""))
            for entry in gate.get("parameters", []) or []:
                value = _value(entry)
                if value is None:
                    continue
                if entry.get("name") == "gate_error" and name not in _VIRTUAL and value < 1.0:
                    noise.gate_error[(name, qargs)] = max(value, 0.0)
                elif entry.get("name") == "gate_length" and name not in _VIRTUAL:
                    noise.gate_length[(name, qargs)] = value
        return noise

    def scaled(self, scale: float) -> DeviceNoise:
        """The same calibration with another scale."""
        return DeviceNoise(self.gate_error, self.gate_length, self.readout_error,
                           self.readout_length, self.t1, self.t2, float(scale))

    # -- channel probabilities (scaled, clipped) -----------------------------------------------

    def gate_depolarizing(self, name: str, qubits: tuple[int, ...]) -> float:
        """stim ``DEPOLARIZE{n}`` probability after gate ``name`` on ``qubits``."""
        r = self.gate_error.get((name, qubits))
        if r is None and len(qubits) == 2:  # couplers are reported in one direction at times
            r = self.gate_error.get((name, qubits[::-1]))
        if not r:
            return 0.0
        n = len(qubits)
        return min(depolarizing_probability(r, n) * self.scale, 1 - 1 / 4**n)

    def readout_flip(self, qubit: int) -> float:
        return min(self.readout_error.get(qubit, 0.0) * self.scale, 0.5)

    def reset_flip(self, qubit: int) -> float:
        return min(self.readout_error.get(qubit, 0.0) * self.scale, 0.5)

    def idle(self, qubit: int, duration: float) -> tuple[float, float, float]:
        px, py, pz = idle_pauli_probabilities(duration, self.t1.get(qubit), self.t2.get(qubit))
        s = self.scale
        px, py, pz = px * s, py * s, pz * s
        total = px + py + pz
        if total > 0.75:  # beyond full depolarization: clip, keeping the ratios
            px, py, pz = (0.75 * v / total for v in (px, py, pz))
        return (px, py, pz)

    def duration(self, name: str, qubits: tuple[int, ...]) -> float:
        """Seconds an instruction takes (0 where unreported; ``rz`` is virtual)."""
        if name == "measure":
            return self.readout_length.get(qubits[0], 0.0)
        length = self.gate_length.get((name, qubits))
        if length is None and len(qubits) == 2:
            length = self.gate_length.get((name, qubits[::-1]))
        return length or 0.0

    def missing(self, circuit: QuantumCircuit) -> list[str]:
        """Operations of ``circuit`` (physical indices) the snapshot gives no error for."""
        absent: set[str] = set()
        for inst in circuit.data:
            name = inst.operation.name
            if name in _IGNORED or name in _VIRTUAL or name == "reset":
                continue
            qubits = tuple(circuit.find_bit(q).index for q in inst.qubits)
            if name == "measure":
                if qubits[0] not in self.readout_error:
                    absent.add(f"measure{list(qubits)}")
            elif (name, qubits) not in self.gate_error and (name, qubits[::-1]) not in self.gate_error:
                absent.add(f"{name}{list(qubits)}")
        return sorted(absent)

    def describe(self, qubits: Sequence[int]) -> dict[str, Any]:
        """Medians over ``qubits`` (and their gates) of what the model uses, for a report."""
        from statistics import median

        wanted = set(qubits)

        def med(values: list[float]) -> float | None:
            return float(median(values)) if values else None

        one = [r for (n, q), r in self.gate_error.items() if len(q) == 1 and n == "sx" and q[0] in wanted]
        two = [r for (n, q), r in self.gate_error.items() if len(q) == 2 and set(q) <= wanted]
        return {
            "scale": self.scale,
            "median_1q_gate_infidelity": med(one),
            "median_2q_gate_infidelity": med(two),
            "median_readout_error": med([self.readout_error[q] for q in wanted if q in self.readout_error]),
            "median_t1_us": med([self.t1[q] * 1e6 for q in wanted if q in self.t1]),
            "median_t2_us": med([self.t2[q] * 1e6 for q in wanted if q in self.t2]),
        }


@lru_cache(maxsize=64)
def _clifford_program(name: str, params: tuple[float, ...], num_qubits: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A gate stim has no name for (e.g. ``ecr``), as stim gates on local qubits 0..n-1."""
    import stim
    from qiskit.circuit import QuantumCircuit as QC
    from qiskit.circuit.library import get_standard_gate_name_mapping
    from qiskit.quantum_info import Operator

    gate = get_standard_gate_name_mapping().get(name)
    if gate is None or gate.num_qubits != num_qubits:
        raise NotClifford(f"no stim translation for instruction {name}")
    if params:
        gate = type(gate)(*params)
    qc = QC(num_qubits)
    qc.append(gate, range(num_qubits))
    try:
        tableau = stim.Tableau.from_unitary_matrix(Operator(qc).data, endian="little")
    except ValueError:
        raise NotClifford(f"instruction {name}{list(params)} is not a Clifford gate") from None
    program = []
    for ins in tableau.to_circuit("elimination"):
        targets = tuple(t.value for t in ins.targets_copy())
        program.append((ins.name, targets))
    return tuple(program)


def _quarter_turns(angle: Any) -> int:
    try:
        k = float(angle) / (math.pi / 2)
    except TypeError:  # an unbound parameter
        raise NotClifford("rz with an unbound parameter") from None
    if abs(k - round(k)) > 1e-9:
        raise NotClifford(f"rz({angle}) is not a quarter turn")
    return round(k) % 4


def isa_to_stim(circuit: QuantumCircuit, noise: DeviceNoise | None = None,
                physical: Sequence[int] | None = None) -> tuple[stim.Circuit, list[int]]:
    """A stim program equivalent to an ISA circuit, with the device's noise (module doc).

    Args:
        circuit: a Clifford circuit (quarter-turn ``rz``, ``sx``, ``x``, ``cz``, ``ecr``,
            ``cx``, ``measure``, ``reset``, ``barrier``, ``delay``; no classical control).
        noise: the device noise; ``None`` for the noiseless program.
        physical: ``physical[i]`` is the device qubit of circuit qubit ``i`` (the noise is
            looked up there); the identity when ``None``. stim qubit ``i`` is circuit qubit ``i``.

    Returns:
        ``(program, record_clbit)``: ``record_clbit[k]`` is the clbit measurement ``k`` of the
        program writes.

    Raises:
        NotClifford: an instruction stim cannot represent.
    """
    import stim

    where = list(physical) if physical is not None else None
    program = stim.Circuit()
    record_clbit: list[int] = []
    clock: dict[int, float] = {}  # circuit qubit -> when it is next free (from its first use)

    def dev(q: int) -> int:
        return where[q] if where is not None else q

    def idle_until(qubits: Iterable[int], start: float) -> None:
        if noise is None:
            for q in qubits:
                clock[q] = start
            return
        for q in qubits:
            if q in clock and start > clock[q]:
                px, py, pz = noise.idle(dev(q), start - clock[q])
                if px + py + pz > 0:
                    program.append("PAULI_CHANNEL_1", [q], [px, py, pz])
            clock[q] = start

    for inst in circuit.data:
        op = inst.operation
        name = op.name
        qubits = [circuit.find_bit(q).index for q in inst.qubits]
        if getattr(op, "condition", None) is not None or name in ("if_else", "switch_case", "for_loop", "while_loop"):
            raise NotClifford(f"classically controlled {name} is not supported")
        if name == "barrier":
            known = [q for q in qubits if q in clock]
            if known:
                idle_until(known, max(clock[q] for q in known))
            continue
        if name == "delay":
            per_unit = _delay_unit_seconds(op)
            duration = float(op.duration or 0) * per_unit if per_unit is not None else 0.0
            for q in qubits:
                if q in clock:
                    idle_until([q], clock[q] + duration)
            continue
        dev_qubits = tuple(dev(q) for q in qubits)
        duration = noise.duration(name, dev_qubits) if noise is not None else 0.0
        start = max((clock[q] for q in qubits if q in clock), default=0.0)
        if name != "reset":  # a reset forgets the state: idling before it does not matter
            idle_until(qubits, start)
        for q in qubits:
            clock[q] = start + duration
        if name == "measure":
            flip = noise.readout_flip(dev_qubits[0]) if noise is not None else 0.0
            program.append("M", qubits, flip) if flip > 0 else program.append("M", qubits)
            record_clbit.append(circuit.find_bit(inst.clbits[0]).index)
            continue
        if name == "reset":
            program.append("R", qubits)
            if noise is not None:
                flip = noise.reset_flip(dev_qubits[0])
                if flip > 0:
                    program.append("X_ERROR", qubits, flip)
                px, py, pz = noise.idle(dev_qubits[0], duration)
                if px + py + pz > 0:
                    program.append("PAULI_CHANNEL_1", qubits, [px, py, pz])
            continue
        if name == "id":
            continue
        if name == "rz":
            turns = _quarter_turns(op.params[0])
            if turns:
                program.append(_QUARTER[turns], qubits)
            continue
        if name in _STIM_NAMES:
            program.append(_STIM_NAMES[name], qubits)
        else:
            params = tuple(float(p) for p in op.params)
            for gate, local in _clifford_program(name, params, len(qubits)):
                program.append(gate, [qubits[i] for i in local])
        if noise is not None:
            p = noise.gate_depolarizing(name, dev_qubits)
            if p > 0:
                program.append("DEPOLARIZE1" if len(qubits) == 1 else "DEPOLARIZE2", qubits, p)
    return program, record_clbit


def _delay_unit_seconds(op: Any) -> float | None:
    """Seconds per unit of a delay's duration; ``None`` for ``dt`` (unknown here: no idle)."""
    unit = getattr(op, "unit", "dt")
    return None if unit == "dt" else _UNITS.get(unit, 1.0)
