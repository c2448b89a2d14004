"""One Pauli noise model of a device, from its calibration snapshot, for decoder and simulator.

The same :class:`DeviceNoise` feeds the local simulator (``services/simulation.py``, which
samples with it) and the QEC decoders (``experiments/heavy_hex_memory.py``, whose detector
error model is built with it from the ISA circuit that ran).
:func:`schedule` walks an ISA circuit once and yields its operations with the channels below;
every translation is an emitter of that walk: :func:`isa_to_stim` (Clifford circuits; the
decoder's program and what the simulator samples with stim) and :func:`isa_to_aer` (any
gates; the channels as inline Aer ``PauliError`` instructions, readout flips returned for an
Aer ``ReadoutError``). So the circuit sampled and the circuit decoded are the same program
with the same channels, whichever engine samples it. This module imports nothing of
qcourier: it is a leaf that ``services`` and ``experiments`` may both use.

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
    An ``id`` gate is idle time of its reported length (no gate error of its own). A delay
    is idle time; one in ``dt`` units needs :attr:`DeviceNoise.dt` (the backend's, which a
    snapshot does not carry), else it adds none. Before its first operation a qubit has no
    clock (it is in ``|0>``), so nothing there counts.

Scale
    ``scale`` multiplies every probability above (gate, readout, reset, idle), each clipped to
    its channel's maximum: ``QCOURIER_LOCAL_NOISE_SCALE`` for the local simulator, and what a
    threshold study varies. The decoder of a real run uses ``scale = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


class UnsupportedInstruction(ValueError):
    """The circuit has an instruction the translators cannot schedule (classical control)."""


class NotClifford(UnsupportedInstruction):
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
        dt: seconds per ``dt``, for delays given in that unit (a snapshot does not carry it:
            the backend's ``dt``); ``None``: such delays add no idle error.
    """

    gate_error: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    gate_length: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    readout_error: dict[int, float] = field(default_factory=dict)
    readout_length: dict[int, float] = field(default_factory=dict)
    t1: dict[int, float] = field(default_factory=dict)
    t2: dict[int, float] = field(default_factory=dict)
    scale: float = 1.0
    dt: float | None = None

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], qubits: Iterable[int] | None = None,
                      scale: float = 1.0, dt: float | None = None) -> DeviceNoise:
        """The noise of ``qubits`` (all when ``None``) from a calibration snapshot.

        A snapshot of the local simulated service run with ``QCOURIER_LOCAL_NOISE_SCALE``
        declares that multiplier as ``qcourier_noise_scale``; it multiplies ``scale``, so
        the recorded snapshot describes the device that was simulated.
        """
        wanted = None if qubits is None else set(qubits)
        declared = snapshot.get("qcourier_noise_scale", 1.0)
        if not isinstance(declared, (int, float)) or not 0 <= declared <= 10:
            raise ValueError(f"qcourier_noise_scale {declared!r} in the snapshot is not in [0, 10]")
        noise = cls(scale=float(scale) * float(declared), dt=dt)
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
                           self.readout_length, self.t1, self.t2, float(scale), self.dt)

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
    import numpy as np
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
    unitary = Operator(qc).data
    try:
        tableau = stim.Tableau.from_unitary_matrix(unitary, endian="little")
    except ValueError:
        tableau = None
    # stim does not always refuse a non-Clifford matrix (rx(0.3) comes back as the identity):
    # the tableau must give the same unitary back, up to a global phase.
    if tableau is None or abs(abs(np.vdot(tableau.to_unitary_matrix(endian="little"), unitary))
                              - 2**num_qubits) > 1e-6:
        raise NotClifford(f"instruction {name}{list(params)} is not a Clifford gate")
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


# -- the schedule: one walk of an ISA circuit, shared by every emitter -----------------------

#: Events of :func:`schedule`, the first element of each tuple it yields.
GATE = "gate"              #: ``(GATE, instruction, qubits)``: apply the instruction's operation
MEASURE = "measure"        #: ``(MEASURE, qubit, clbit, flip)``: measure, record flipped with ``flip``
RESET = "reset"            #: ``(RESET, qubit, flip)``: reset, then an X with probability ``flip``
DEPOLARIZE = "depolarize"  #: ``(DEPOLARIZE, qubits, p)``: stim's ``DEPOLARIZE{n}(p)``
PAULI = "pauli"            #: ``(PAULI, qubit, (p_x, p_y, p_z))``: stim's ``PAULI_CHANNEL_1``

_CONTROL_FLOW = frozenset({"if_else", "switch_case", "for_loop", "while_loop", "box"})


def schedule(circuit: QuantumCircuit, noise: DeviceNoise | None = None,
             physical: Sequence[int] | None = None) -> Iterator[tuple[Any, ...]]:
    """The ISA circuit's operations with the device's channels, in program order (module doc).

    Every emitter (:func:`isa_to_stim`, :func:`isa_to_aer`) translates these events, so all
    of them model the same channels at the same places. Qubits are circuit indices (``physical``
    as in :func:`isa_to_stim`); clbits are circuit indices. The circuit is scheduled as soon as
    possible: each qubit's clock starts at its first operation; a barrier synchronises the
    clocks of its qubits that have started; a delay advances its started qubits' clocks; an
    ``id`` takes its reported length and adds only idle error; ``rz`` is virtual.

    Raises:
        UnsupportedInstruction: a classically controlled instruction (no schedule for it).
    """
    where = list(physical) if physical is not None else None
    find = circuit.find_bit
    clock: dict[int, float] = {}  # circuit qubit -> when it is next free (from its first use)

    def dev(q: int) -> int:
        return where[q] if where is not None else q

    def idle_until(qubits: Iterable[int], start: float) -> Iterator[tuple[Any, ...]]:
        for q in qubits:
            if noise is not None and q in clock and start > clock[q]:
                probs = noise.idle(dev(q), start - clock[q])
                if probs[0] + probs[1] + probs[2] > 0:
                    yield (PAULI, q, probs)
            clock[q] = start

    for inst in circuit.data:
        op = inst.operation
        name = op.name
        qubits = [find(q).index for q in inst.qubits]
        if getattr(op, "condition", None) is not None or name in _CONTROL_FLOW:
            raise UnsupportedInstruction(f"classically controlled {name} is not supported")
        if name == "barrier":
            known = [q for q in qubits if q in clock]
            if known:
                yield from idle_until(known, max(clock[q] for q in known))
            continue
        if name == "delay":
            per_unit = _delay_unit_seconds(op, noise)
            duration = float(op.duration or 0) * per_unit if per_unit is not None else 0.0
            for q in qubits:
                if q in clock:
                    yield from idle_until([q], clock[q] + duration)
            continue
        dev_qubits = tuple(dev(q) for q in qubits)
        duration = noise.duration(name, dev_qubits) if noise is not None else 0.0
        start = max((clock[q] for q in qubits if q in clock), default=0.0)
        if name != "reset":  # a reset forgets the state: idling before it does not matter
            yield from idle_until(qubits, start)
        for q in qubits:
            clock[q] = start + duration
        if name == "measure":
            flip = noise.readout_flip(dev_qubits[0]) if noise is not None else 0.0
            yield (MEASURE, qubits[0], find(inst.clbits[0]).index, flip)
            continue
        if name == "reset":
            yield (RESET, qubits[0], noise.reset_flip(dev_qubits[0]) if noise is not None else 0.0)
            if noise is not None:
                probs = noise.idle(dev_qubits[0], duration)
                if probs[0] + probs[1] + probs[2] > 0:
                    yield (PAULI, qubits[0], probs)
            continue
        if name == "id":
            continue
        yield (GATE, inst, qubits)
        if noise is not None:
            p = noise.gate_depolarizing(name, dev_qubits)
            if p > 0:
                yield (DEPOLARIZE, qubits, p)


def isa_to_stim(circuit: QuantumCircuit, noise: DeviceNoise | None = None,
                physical: Sequence[int] | None = None) -> tuple[stim.Circuit, list[int]]:
    """A stim program equivalent to an ISA circuit, with the device's noise (module doc).

    Args:
        circuit: a Clifford circuit (quarter-turn ``rz``, ``sx``, ``x``, ``cz``, ``ecr``,
            ``cx``, ``measure``, ``reset``, ``barrier``, ``delay``; no classical control).
        noise: the device noise; ``None`` for the noiseless program.
        physical: ``physical[i]`` is the device qubit of circuit qubit ``i`` (the noise is
            looked up there); the identity when ``None``. stim qubit ``i`` is circuit qubit ``i``,
            so compact a wide circuit to its used qubits first (stim's cost grows with the
            highest qubit index, used or not).

    Returns:
        ``(program, record_clbit)``: ``record_clbit[k]`` is the clbit measurement ``k`` of the
        program writes.

    Raises:
        NotClifford: an instruction stim cannot represent.
        UnsupportedInstruction: a classically controlled instruction.
    """
    import stim

    # Built as text and parsed once: ``stim.Circuit.append`` costs tens of microseconds a call.
    lines: list[str] = []
    add = lines.append
    record_clbit: list[int] = []
    for event in schedule(circuit, noise, physical):
        kind = event[0]
        if kind == GATE:
            _, inst, qubits = event
            op = inst.operation
            name = op.name
            if name == "rz":
                turns = _quarter_turns(op.params[0])
                if turns:
                    add(f"{_QUARTER[turns]} {qubits[0]}")
            elif name in _STIM_NAMES:
                add(f"{_STIM_NAMES[name]} {' '.join(map(str, qubits))}")
            else:
                try:
                    params = tuple(float(p) for p in op.params)
                except TypeError:  # an unbound parameter
                    raise NotClifford(f"{name} with an unbound parameter") from None
                for gate, local in _clifford_program(name, params, len(qubits)):
                    add(f"{gate} {' '.join(str(qubits[i]) for i in local)}")
        elif kind == MEASURE:
            _, qubit, clbit, flip = event
            add(f"M({float(flip)!r}) {qubit}" if flip > 0 else f"M {qubit}")
            record_clbit.append(clbit)
        elif kind == RESET:
            _, qubit, flip = event
            add(f"R {qubit}")
            if flip > 0:
                add(f"X_ERROR({float(flip)!r}) {qubit}")
        elif kind == DEPOLARIZE:
            _, qubits, p = event
            add(f"DEPOLARIZE{len(qubits)}({float(p)!r}) {' '.join(map(str, qubits))}")
        else:  # PAULI
            _, qubit, (px, py, pz) = event
            add(f"PAULI_CHANNEL_1({float(px)!r},{float(py)!r},{float(pz)!r}) {qubit}")
    program = stim.Circuit("\n".join(lines))
    return program, record_clbit


def isa_to_aer(circuit: QuantumCircuit, noise: DeviceNoise | None = None,
               physical: Sequence[int] | None = None) -> tuple[QuantumCircuit, dict[int, float]]:
    """The ISA circuit with the device's channels inline, for Qiskit Aer (any gates).

    The same channels as :func:`isa_to_stim`, at the same places: each depolarizing, idle and
    reset channel is an Aer ``PauliError`` instruction in the circuit. A readout flip is
    classical (it changes the record, not the qubit), which an instruction cannot express;
    it is returned instead, for an Aer ``ReadoutError`` on the qubit's measurements.
    Non-Clifford gates are kept as they are.

    Args:
        circuit, noise, physical: as for :func:`isa_to_stim`.

    Returns:
        ``(circuit, readout_flip)``: the circuit to run (same qubits and clbits, by index;
        plain registers), and ``qubit -> probability its recorded bit flips`` (nonzero only).

    Raises:
        UnsupportedInstruction: a classically controlled instruction.
    """
    from qiskit.circuit import CircuitInstruction, Measure, Reset
    from qiskit.circuit import QuantumCircuit as QC

    out = QC(circuit.num_qubits, circuit.num_clbits, name=circuit.name)
    qbits, cbits = out.qubits, out.clbits
    find = circuit.find_bit
    readout: dict[int, float] = {}
    measure, reset = Measure(), Reset()

    def add(op: Any, qubits: Sequence[int], clbits: Sequence[int] = ()) -> None:
        out._append(CircuitInstruction(op, tuple(qbits[q] for q in qubits),
                                       tuple(cbits[c] for c in clbits)))

    for event in schedule(circuit, noise, physical):
        kind = event[0]
        if kind == GATE:
            _, inst, qubits = event
            add(inst.operation, qubits, [find(c).index for c in inst.clbits])
        elif kind == MEASURE:
            _, qubit, clbit, flip = event
            add(measure, [qubit], [clbit])
            if flip > 0:
                readout[qubit] = flip
        elif kind == RESET:
            _, qubit, flip = event
            add(reset, [qubit])
            if flip > 0:
                add(_aer_pauli_error(1, (flip, 0.0, 0.0)), [qubit])
        elif kind == DEPOLARIZE:
            _, qubits, p = event
            n = len(qubits)
            add(_aer_pauli_error(n, (p / (4**n - 1),) * (4**n - 1)), qubits)
        else:  # PAULI
            _, qubit, probs = event
            add(_aer_pauli_error(1, probs), [qubit])
    return out, readout


@lru_cache(maxsize=4)
def _pauli_labels(num_qubits: int) -> Any:
    """Every ``num_qubits``-qubit Pauli, identity first, as a qiskit ``PauliList``."""
    from itertools import product

    from qiskit.quantum_info import PauliList

    return PauliList(["".join(p) for p in product("IXYZ", repeat=num_qubits)])


@lru_cache(maxsize=4096)
def _aer_pauli_error(num_qubits: int, probabilities: tuple[float, ...]) -> Any:
    """Aer's Pauli channel (an instruction) applying the non-identity Paulis with ``probabilities``
    (in ``_pauli_labels`` order, identity omitted)."""
    from qiskit_aer.noise import PauliError

    rest = [float(p) for p in probabilities]
    return PauliError(_pauli_labels(num_qubits), [max(1.0 - sum(rest), 0.0), *rest]).to_instruction()


def _delay_unit_seconds(op: Any, noise: DeviceNoise | None = None) -> float | None:
    """Seconds per unit of a delay's duration; for ``dt``, the noise's ``dt`` (``None``: no idle)."""
    unit = getattr(op, "unit", "dt")
    if unit == "dt":
        return noise.dt if noise is not None else None
    return _UNITS.get(unit, 1.0)
