"""Rotated surface-code memory experiment (stim circuits, PyMatching decoding).

Circuits
    For ``r = 1 .. rounds`` one PUB: stim's noiseless
    ``surface_code:rotated_memory_z`` (logical states ``0``/``1``) or
    ``surface_code:rotated_memory_x`` (``+``/``-``) at the chosen distance, flattened and
    translated gate by gate into Qiskit (only ``reset``, ``h``, ``cx``, ``x``, ``z``,
    ``measure``). For ``1`` (``-``) an ``X`` (``Z``) on every data qubit is inserted right
    after the initial resets: for odd ``d`` that operator is a logical ``X`` (``Z``). The
    insertion is made in the *stim* circuit, so stim's reference sample includes it and
    detection events / observable flips are relative to the noiseless outcome: no error
    means observable flip 0 whatever the state. Qubits are compacted to ``0..k-1`` in
    increasing stim index; the single classical register ``rec`` has one clbit per stim
    measurement, in stim's measurement-record order (clbit ``i`` = ``rec[i]``).

Analysis
    Each PUB's stim circuit is rebuilt *with* circuit-level noise whose strengths come from
    the backend calibration; its detector error model (``decompose_errors=True``) feeds a
    PyMatching decoder, and its measurement-to-detection converter turns the counts into
    detection events and observable flips. Every distinct bitstring is decoded once and
    weighted by its count.

    Noise mapping (``Calibration`` field -> stim noise; defaults where a value is ``None``
    or not finite):

    ============================  ==========================================  =========
    stim noise                    from                                        default
    ============================  ==========================================  =========
    DEPOLARIZE2 after each CX     ``two_qubit_gate_error``                    1e-3
    DEPOLARIZE1 after each H      ``single_qubit_gate_error`` (*)             1e-3
    (and after the inserted
    logical X/Z layer)
    DEPOLARIZE1 on data qubits    ``single_qubit_gate_error``                 1e-3
    before each round
    X/Z flip before measurement   ``readout_error``                           1e-2
    X/Z flip after reset          ``reset_error``, else ``readout_error``     1e-2
    ============================  ==========================================  =========

    (*) stim's generator has one ``after_clifford_depolarization`` for all Cliffords; it is
    set to the two-qubit error and the ``DEPOLARIZE1`` it puts after each ``H`` is then
    rewritten to the single-qubit error. Every probability is clamped to
    ``[1e-6, 0.4]``: a zero would remove error mechanisms from the matching graph (and
    leave detection events the decoder cannot explain), values at or above 0.5 give
    non-positive matching weights. The values used are reported under ``decoder_noise``.
    Data-qubit idling during ancilla measurement is only crudely represented by the
    per-round ``DEPOLARIZE1``; the decoder prior is a model, not a fit.

Logical error per round
    ``P_L(r) = (1 - (1 - 2 eps)^r) / 2``, i.e. ``log(1 - 2 P_L(r)) = r log(1 - 2 eps)``,
    fitted by weighted least squares through the origin over the PUBs with
    ``P_L < 0.5``. Weights are inverse delta-method variances
    ``n (1 - 2P)^2 / (4 P (1 - P))`` with ``P`` regularised to ``(k + 1/2) / (n + 1)`` so
    that zero-error PUBs keep a finite weight. The standard error is the delta-method one,
    inflated by ``sqrt(chi2 / (m - 1))`` when that exceeds 1 (``m`` usable points), so a
    poor fit widens it rather than hiding. The model ignores state-preparation and
    final-readout overheads (it is forced through the origin), which biases ``eps`` when
    those dominate at small ``r``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from qcourier.experiments.base import Calibration, Experiment, ExperimentParams, JobUnit
from qcourier.experiments.statistics import normalise_key, wilson_interval

if TYPE_CHECKING:
    import numpy as np
    import stim
    from qiskit import QuantumCircuit
    from qiskit.circuit import Instruction

LogicalState = Literal["0", "1", "+", "-"]

VALID_DISTANCES = (3, 5)

#: Defaults for calibration values the backend did not report.
DEFAULT_NOISE: dict[str, float] = {
    "single_qubit_gate_error": 1e-3,
    "two_qubit_gate_error": 1e-3,
    "readout_error": 1e-2,
    "reset_error": 1e-2,
}
#: Every decoder noise probability is clamped into this range.
NOISE_CLAMP = (1e-6, 0.4)

_STATE_NAMES = {"0": "zero", "1": "one", "+": "plus", "-": "minus"}
_ANNOTATIONS = frozenset({"TICK", "DETECTOR", "OBSERVABLE_INCLUDE", "QUBIT_COORDS", "SHIFT_COORDS"})
_MEASUREMENTS = frozenset({"M", "MX", "MR", "MRX"})

#: A hook turning one stim noise channel (name, arguments) into a Qiskit instruction that
#: acts on one qubit (single-qubit channels) or one pair (two-qubit channels).
NoiseChannel = Callable[[str, Sequence[float]], "Instruction"]


class SurfaceCodeParams(ExperimentParams):
    """Parameters of the surface-code memory experiment."""

    shots: int = Field(default=4096, gt=0, le=1_000_000)
    distance: int = Field(default=3, description="code distance: 3 or 5")
    rounds: int = Field(default=6, ge=1, le=25, description="the job's PUBs are rounds 1..R")
    logical_state: LogicalState = Field(default="+", description="prepared logical state")

    @field_validator("distance")
    @classmethod
    def _odd_distance(cls, value: int) -> int:
        if value not in VALID_DISTANCES:
            raise ValueError(f"distance must be odd, 3 or 5 (got {value})")
        return value


def basis_of(logical_state: str) -> str:
    """``"z"`` for logical states 0/1, ``"x"`` for +/-."""
    if logical_state in ("0", "1"):
        return "z"
    if logical_state in ("+", "-"):
        return "x"
    raise ValueError(f"logical_state must be one of '0', '1', '+', '-' (got {logical_state!r})")


def decoder_noise(calibration: Calibration | None) -> dict[str, float]:
    """The noise probabilities used for decoding, from a calibration (see module doc)."""

    def pick(value: float | None, default: float) -> float:
        if value is None or not math.isfinite(value):
            value = default
        return min(max(float(value), NOISE_CLAMP[0]), NOISE_CLAMP[1])

    cal = calibration or Calibration()
    readout = pick(cal.readout_error, DEFAULT_NOISE["readout_error"])
    return {
        "single_qubit_gate_error": pick(
            cal.single_qubit_gate_error, DEFAULT_NOISE["single_qubit_gate_error"]
        ),
        "two_qubit_gate_error": pick(cal.two_qubit_gate_error, DEFAULT_NOISE["two_qubit_gate_error"]),
        "readout_error": readout,
        "reset_error": pick(cal.reset_error, readout),
    }


def stim_circuit(
    distance: int,
    rounds: int,
    logical_state: str,
    noise: dict[str, float] | None = None,
) -> stim.Circuit:
    """The flattened stim memory circuit for one PUB, with the logical operator inserted.

    Args:
        distance: code distance (odd).
        rounds: syndrome-extraction rounds.
        logical_state: ``"0"``, ``"1"``, ``"+"`` or ``"-"``.
        noise: ``None`` for the noiseless circuit, else a dict as from :func:`decoder_noise`.
    """
    import stim

    basis = basis_of(logical_state)
    task = f"surface_code:rotated_memory_{basis}"
    if noise is None:
        generated = stim.Circuit.generated(task, distance=distance, rounds=rounds)
    else:
        generated = stim.Circuit.generated(
            task,
            distance=distance,
            rounds=rounds,
            after_clifford_depolarization=noise["two_qubit_gate_error"],
            before_round_data_depolarization=noise["single_qubit_gate_error"],
            before_measure_flip_probability=noise["readout_error"],
            after_reset_flip_probability=noise["reset_error"],
        )
    flat = generated.flattened()
    instructions = list(flat)

    final = [ins for ins in instructions if ins.name in _MEASUREMENTS][-1]
    data = [t.value for t in final.targets_copy()]
    logical_gate = {"1": "X", "-": "Z"}.get(logical_state)

    out = stim.Circuit()
    inserted = logical_gate is None
    previous: stim.CircuitInstruction | None = None
    for ins in instructions:
        if not inserted and ins.name == "TICK":
            # End of the initial reset layer (and its reset noise): apply the logical operator.
            out.append(logical_gate, data)
            if noise is not None:
                out.append("DEPOLARIZE1", data, noise["single_qubit_gate_error"])
            inserted = True
        if (
            noise is not None
            and ins.name == "DEPOLARIZE1"
            and previous is not None
            and previous.name == "H"
            and previous.targets_copy() == ins.targets_copy()
        ):
            ins = stim.CircuitInstruction(
                "DEPOLARIZE1", ins.targets_copy(), [noise["single_qubit_gate_error"]]
            )
        out.append(ins)
        previous = ins
    if not inserted:
        raise ValueError("stim circuit has no TICK after its initial resets; cannot insert logical operator")
    return out


def to_qiskit(
    circuit: stim.Circuit,
    name: str | None = None,
    noise_channel: NoiseChannel | None = None,
    barriers: bool = False,
) -> QuantumCircuit:
    """Translate a (flat) stim circuit into a Qiskit circuit, instruction by instruction.

    Qubits are compacted to ``0..k-1`` in increasing stim index; the classical register
    ``rec`` has one clbit per measurement in stim's record order. Annotations (``DETECTOR``,
    ``OBSERVABLE_INCLUDE``, coordinates) are dropped; so is ``TICK``, unless ``barriers``.

    Args:
        circuit: the stim circuit (``REPEAT`` blocks are flattened here).
        name: the Qiskit circuit's name.
        noise_channel: how to translate stim noise channels (used by tests to simulate a
            noisy stim circuit with Aer); without it a noise channel is an error.
        barriers: ``TICK`` becomes a barrier on every qubit (the heavy-hex code keeps its
            rounds apart through the transpiler so).

    Raises:
        ValueError: an instruction this translator does not support.
    """
    import stim
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister

    flat = circuit.flattened()
    used: set[int] = set()
    for ins in flat:
        if ins.name not in _ANNOTATIONS:
            used.update(t.value for t in ins.targets_copy() if t.is_qubit_target)
    index = {q: i for i, q in enumerate(sorted(used))}
    qc = QuantumCircuit(
        QuantumRegister(len(index), "q"),
        ClassicalRegister(flat.num_measurements, "rec"),
        name=name,
    )

    clbit = 0
    for ins in flat:
        gate = ins.name
        if gate == "TICK" and barriers:
            qc.barrier()
            continue
        if gate in _ANNOTATIONS:
            continue
        targets = ins.targets_copy()
        if any(not t.is_qubit_target or t.is_inverted_result_target for t in targets):
            raise ValueError(f"unsupported targets in stim instruction {ins}")
        qubits = [index[t.value] for t in targets]
        data = stim.gate_data(gate)
        if data.is_noisy_gate and not data.produces_measurements:
            if noise_channel is None:
                raise ValueError(f"stim noise channel {gate} cannot be translated without a noise_channel")
            channel = noise_channel(gate, ins.gate_args_copy())
            wires = ([[a, b] for a, b in zip(qubits[::2], qubits[1::2], strict=True)]
                     if data.is_two_qubit_gate else [[q] for q in qubits])
            for w in wires:
                qc.append(channel, w)
            continue
        if any(ins.gate_args_copy()):
            raise ValueError(f"unsupported noisy stim instruction {ins}")
        clbit = _append_gate(qc, gate, qubits, clbit)
    if clbit != flat.num_measurements:  # pragma: no cover - guards the translation table
        raise ValueError(f"translated {clbit} measurements, stim has {flat.num_measurements}")
    return qc


def _append_gate(qc: QuantumCircuit, gate: str, qubits: list[int], clbit: int) -> int:
    """Append one noiseless stim instruction to ``qc``; return the next clbit of ``rec``."""
    if gate == "R":
        for q in qubits:
            qc.reset(q)
    elif gate == "RX":
        for q in qubits:
            qc.reset(q)
            qc.h(q)
    elif gate == "H":
        for q in qubits:
            qc.h(q)
    elif gate in ("X", "Y", "Z"):
        for q in qubits:
            getattr(qc, gate.lower())(q)
    elif gate == "I":
        pass
    elif gate == "CX":
        for a, b in zip(qubits[::2], qubits[1::2], strict=True):
            qc.cx(a, b)
    elif gate in _MEASUREMENTS:
        for q in qubits:
            if gate in ("MX", "MRX"):
                qc.h(q)
            qc.measure(q, clbit)
            clbit += 1
            if gate in ("MR", "MRX"):
                qc.reset(q)
            if gate == "MRX":
                qc.h(q)
    else:
        raise ValueError(f"stim instruction {gate} is not supported by the surface-code translator")
    return clbit


def observable_measurements(circuit: stim.Circuit, observable: int = 0) -> list[int]:
    """Absolute measurement-record indices an observable of a (flat) stim circuit includes."""
    seen = 0
    records: list[int] = []
    for ins in circuit.flattened():
        if ins.name in _MEASUREMENTS or ins.name in ("MY", "MRY", "MPP"):
            seen += len(ins.targets_copy())
        elif ins.name == "OBSERVABLE_INCLUDE" and int(ins.gate_args_copy()[0]) == observable:
            records.extend(seen + t.value for t in ins.targets_copy() if t.is_measurement_record_target)
    return sorted(records)


def fit_logical_error_per_round(
    points: Iterable[tuple[int, int, int]],
) -> tuple[float | None, float | None]:
    """Fit ``eps`` of ``P_L(r) = (1 - (1 - 2 eps)^r) / 2`` (see module doc).

    Args:
        points: ``(rounds, logical_errors, shots)`` per PUB.

    Returns:
        ``(eps, stderr)``; ``(None, None)`` when no point is usable (``shots > 0`` and
        ``P_L < 0.5``). ``stderr`` is ``None`` when it cannot be computed.
    """
    rs: list[float] = []
    ys: list[float] = []
    ws: list[float] = []
    for rounds, errors, shots in points:
        if shots <= 0 or rounds <= 0:
            continue
        p = errors / shots
        if p >= 0.5:
            continue
        p_var = (errors + 0.5) / (shots + 1)
        var = 4 * p_var * (1 - p_var) / (shots * (1 - 2 * p_var) ** 2) if p_var < 0.5 else math.inf
        if not math.isfinite(var) or var <= 0:
            continue
        rs.append(float(rounds))
        ys.append(math.log(1 - 2 * p))
        ws.append(1 / var)
    if not rs:
        return None, None
    sxx = sum(w * r * r for w, r in zip(ws, rs, strict=True))
    sxy = sum(w * r * y for w, r, y in zip(ws, rs, ys, strict=True))
    slope = sxy / sxx
    se_slope = math.sqrt(1 / sxx)
    m = len(rs)
    if m >= 2:
        chi2 = sum(w * (y - slope * r) ** 2 for w, r, y in zip(ws, rs, ys, strict=True))
        se_slope *= max(1.0, math.sqrt(chi2 / (m - 1)))
    eps = (1 - math.exp(slope)) / 2
    stderr = math.exp(slope) / 2 * se_slope
    return max(eps, 0.0), stderr


def counts_to_measurements(
    counts: dict[str, int], num_measurements: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct measurement records and their counts from one counts dict.

    Returns:
        ``(records, weights)``: ``records[j, i]`` is measurement ``i`` (clbit ``i``, the
        ``i``-th character from the right of the key) of the ``j``-th distinct bitstring.

    Raises:
        ValueError: a key of the wrong length or with characters other than 0/1, or a
            negative count.
    """
    import numpy as np

    merged: dict[str, int] = {}
    for key, n in counts.items():
        k = normalise_key(key)
        if len(k) != num_measurements:
            raise ValueError(
                f"bitstring {key!r} has {len(k)} bits, expected {num_measurements} (one per measurement)"
            )
        if n < 0:
            raise ValueError(f"negative count {n} for bitstring {key!r}")
        merged[k] = merged.get(k, 0) + int(n)
    keys = [k for k, n in merged.items() if n > 0]
    weights = np.array([merged[k] for k in keys], dtype=np.int64)
    if not keys:
        return np.zeros((0, num_measurements), dtype=np.bool_), weights
    raw = np.frombuffer("".join(keys).encode("ascii", errors="replace"), dtype=np.uint8)
    bits = raw.reshape(len(keys), num_measurements) - ord("0")
    if (bits > 1).any():
        raise ValueError("counts keys must be bitstrings of 0 and 1")
    return bits[:, ::-1].astype(np.bool_), weights



def _decode(circuit: stim.Circuit, counts: dict[str, int]) -> dict[str, Any]:
    """One PUB: detection fraction, raw and decoded logical error (PyMatching) of its counts."""
    import numpy as np
    import pymatching

    records, weights = counts_to_measurements(counts, circuit.num_measurements)
    shots = int(weights.sum())
    if shots == 0:
        return {"shots": 0, "detection_event_fraction": None, "raw_logical_flip_rate": None,
                "logical_error_rate": None, "logical_error_ci95": [0.0, 1.0], "logical_errors": 0}
    dets, obs = circuit.compile_m2d_converter().convert(measurements=records,
                                                        separate_observables=True)
    matching = pymatching.Matching.from_detector_error_model(
        circuit.detector_error_model(decompose_errors=True))
    wrong = np.any(matching.decode_batch(dets).astype(np.bool_) != obs, axis=1)
    errors = int(weights[wrong].sum())
    n_det = dets.shape[1]
    lo, hi = wilson_interval(errors, shots)
    return {
        "shots": shots,
        "detection_event_fraction": (float((dets.sum(axis=1) * weights).sum()) / (shots * n_det)
                                     if n_det else 0.0),
        "raw_logical_flip_rate": (int(weights[obs[:, 0]].sum()) if obs.shape[1] else 0) / shots,
        "logical_error_rate": errors / shots,
        "logical_error_ci95": [lo, hi],
        "logical_errors": errors,
    }

class SurfaceCodeExperiment(Experiment):
    """Rotated surface-code memory: logical error vs rounds, decoded with PyMatching."""

    name: ClassVar[str] = "surface_code"
    description: ClassVar[str] = (
        "Rotated surface code routed by the transpiler (legacy: on heavy-hex its circuit "
        "distance is 2; use heavy_hex_code), rounds 1..R, decoded with PyMatching."
    )
    Params: ClassVar[type[ExperimentParams]] = SurfaceCodeParams

    def build(self, params: ExperimentParams) -> list[JobUnit]:
        if not isinstance(params, SurfaceCodeParams):
            raise TypeError(f"expected SurfaceCodeParams, got {type(params).__name__}")
        circuits = []
        num_detectors = []
        num_measurements = []
        label = _STATE_NAMES[params.logical_state]
        rounds = list(range(1, params.rounds + 1))
        for r in rounds:
            circuit = stim_circuit(params.distance, r, params.logical_state)
            circuits.append(to_qiskit(circuit, name=f"surface_code_d{params.distance}_r{r}_{label}"))
            num_detectors.append(circuit.num_detectors)
            num_measurements.append(circuit.num_measurements)
        metadata = {
            "logical_state": params.logical_state,
            "distance": params.distance,
            "rounds": rounds,
            "basis": basis_of(params.logical_state),
            "num_detectors": num_detectors,
            "num_measurements": num_measurements,
        }
        return [JobUnit(circuits=circuits, shots=params.shots, metadata=metadata)]

    def analyse(
        self,
        metadata: dict[str, Any],
        counts: list[dict[str, int]],
        calibration: Calibration | None,
    ) -> dict[str, Any]:

        try:
            logical_state = str(metadata["logical_state"])
            distance = int(metadata["distance"])
            rounds_list = [int(r) for r in metadata["rounds"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"surface_code metadata lacks or mangles {exc}") from None
        basis_of(logical_state)
        if len(counts) != len(rounds_list):
            raise ValueError(
                f"got counts for {len(counts)} circuits, metadata lists {len(rounds_list)} "
                f"(rounds {rounds_list})"
            )
        recorded_m = metadata.get("num_measurements")

        noise = decoder_noise(calibration)
        per_round: list[dict[str, Any]] = []
        for i, (rounds, pub_counts) in enumerate(zip(rounds_list, counts, strict=True)):
            circuit = stim_circuit(distance, rounds, logical_state, noise)
            if recorded_m is not None and int(recorded_m[i]) != circuit.num_measurements:
                raise ValueError(
                    f"circuit {i}: metadata records {recorded_m[i]} measurements, "
                    f"the rebuilt circuit has {circuit.num_measurements}"
                )
            per_round.append({"rounds": rounds} | _decode(circuit, pub_counts))

        eps, stderr = fit_logical_error_per_round(
            (p["rounds"], p["logical_errors"], p["shots"]) for p in per_round
        )
        return {
            "experiment": self.name,
            "logical_state": logical_state,
            "distance": distance,
            "per_round": per_round,
            "logical_error_per_round": eps,
            "logical_error_per_round_stderr": stderr,
            "decoder_noise": noise,
        }

    def headline(self, analysis: dict[str, Any]) -> str | None:
        eps, stderr = analysis.get("logical_error_per_round"), analysis.get(
            "logical_error_per_round_stderr")
        where = f"d={analysis.get('distance')}, state {analysis.get('logical_state')}"
        if eps is None:
            return f"logical error per round not fitted ({where})"
        spread = "" if stderr is None else f" ± {1.96 * stderr:.4f} (95%)"
        return f"logical error per round {eps:.4f}{spread} ({where})"
