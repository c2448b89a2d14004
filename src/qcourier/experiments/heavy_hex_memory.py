"""Heavy-hex subsystem code memory experiment: placed without SWAPs, decoded from what ran.

The code is the heavy-hex subsystem code (HHC) of Chamberland et al., PRX 10, 011022 (2020),
as run at distance 3 on IBM hardware by Sundaresan et al., Nat. Commun. 14, 2852 (2023);
its circuits are :mod:`qcourier.experiments.heavy_hex_code` (qiskit-qec's convention). Why
this code and not a routed rotated surface code: docs/SURFACE_CODE.md.

Circuits
    For ``r = 1 .. rounds`` one PUB: the HHC memory circuit with ``r`` rounds (each round the
    X gauges, then the Z gauges with their flag qubits), translated gate by gate into Qiskit
    (``reset``, ``h``, ``x``, ``z``, ``cx``, ``measure``), a barrier closing every round so
    that the transpiler cannot merge gates across rounds. Clbit ``i`` is stim measurement
    ``i``. Logical ``0``/``1`` is the Z-basis memory (protected by the Bacon–Shor-like Z
    stabilizers), ``+``/``-`` the X-basis memory (surface-code-like X stabilizers, flags as
    detectors).

Placement (:meth:`HeavyHexCodeExperiment.place`)
    One patch for the whole job: Qiskit's ``VF2Layout`` finds embeddings of the circuits'
    interaction graph (the same for every round count) in the backend's coupling map as a
    subgraph, no SWAP, and keeps the one with the lowest error according to the backend's
    target (readout and gate errors of the qubits and couplers used), bounded by
    ``VF2_MAX_TRIALS`` embeddings. Every PUB is then transpiled with that
    ``initial_layout`` and ``routing_method="none"``: submission refuses the job if the
    transpiler would route, or the layout it returns is not the one chosen (see
    ``qcourier.submit.plan``). The patch is recorded in the ledger record's metadata
    (``layout``: physical qubit of each circuit qubit; ``patch_error``).

Analysis
    Each PUB's ISA circuit (the one that ran, read back from the ledger's circuit store and
    checked against its hash) is translated into stim by :func:`qcourier.circuits.noise.isa_to_stim`
    with the device noise from the calibration snapshot recorded at submission: gate
    depolarizing from reported infidelities, readout and reset flips, T1/T2 idle errors on
    the circuit's schedule. The detectors and the observable of the abstract HHC circuit are
    attached to that program through the clbits; stim then gives the detector error model
    (decoded by flag-conditioned matching, ``qcourier.experiments.decoding``: in the X basis
    the flag outcomes re-weight the matching graph shot by shot; in the Z basis, which has
    no flags, it is plain PyMatching) and the circuit-level fault distance of that model
    (``search_for_undetectable_logical_errors``), recorded per PUB: it must equal the code
    distance, else the analysis says so (``distance_ok: false``). Counts become detection
    events with stim's measurement-to-detection converter (relative to the noiseless
    reference, so no error means no detection and no observable flip whatever the state).

Logical error per round
    ``1 - 2 P_L(r) = (1 - 2 eps0) (1 - 2 eps)^r``: a straight line ``y = a + b r`` in
    ``y = log(1 - 2 P_L)``, fitted by weighted least squares with a free intercept ``a``
    (state preparation and final readout, ``eps0``) over the round counts with
    ``P_L < 0.5``; weights are inverse delta-method variances with ``P`` regularised to
    ``(k + 1/2)/(n + 1)``. Reported with chi2/dof (``m - 2`` degrees of freedom) and its
    p-value; withheld (``logical_error_per_round: null`` and ``fit.withheld`` saying why)
    with fewer than three usable round counts or when the p-value is below
    ``FIT_MIN_P_VALUE`` (the points do not follow the model: drift, leakage, a bad decoder
    prior). The standard error is never inflated to hide a bad fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from qcourier.experiments.base import (
    Calibration,
    Device,
    Experiment,
    ExperimentParams,
    JobUnit,
    RunContext,
)
from qcourier.experiments.statistics import wilson_interval
from qcourier.experiments.surface_code import LogicalState, basis_of, counts_to_measurements

if TYPE_CHECKING:
    import stim
    from qiskit import QuantumCircuit

VALID_DISTANCES = (3, 5)
#: Embeddings VF2Layout scores before it keeps the best (bounded search).
VF2_MAX_TRIALS = 2500
#: VF2 state-space bound (deterministic, unlike a time limit): keeps the search on a dense
#: (square) lattice, where embeddings abound, to seconds.
VF2_CALL_LIMIT = 3_000_000
#: A fit whose chi2 p-value is below this is withheld.
FIT_MIN_P_VALUE = 0.01
#: Fault-distance search limits (stim): detection-event sets and error degrees explored.
_SEARCH_LIMIT = 6

_STATE_NAMES = {"0": "zero", "1": "one", "+": "plus", "-": "minus"}


class HeavyHexCodeParams(ExperimentParams):
    """Parameters of the heavy-hex code memory experiment."""

    shots: int = Field(default=4096, gt=0, le=1_000_000)
    distance: int = Field(default=3, description="code distance: 3 or 5")
    rounds: int = Field(default=6, ge=1, le=25, description="the job's PUBs are rounds 1..R")
    logical_state: LogicalState = Field(
        default="0", description="prepared logical state: 0/1 (Z basis) or +/- (X basis)")

    @field_validator("distance")
    @classmethod
    def _distance(cls, value: int) -> int:
        if value not in VALID_DISTANCES:
            raise ValueError(f"distance must be 3 or 5 (got {value})")
        return value


# -- circuits --------------------------------------------------------------------------------

def abstract_circuit(distance: int, rounds: int, logical_state: str) -> stim.Circuit:
    """The noiseless, annotated HHC memory circuit of one PUB (detectors, observable 0)."""
    from qcourier.experiments.heavy_hex_code import memory_circuit

    circuit, _ = memory_circuit(distance, rounds, basis_of(logical_state),
                                flip=logical_state in ("1", "-"))
    return circuit.without_noise()


def to_qiskit(circuit: stim.Circuit, name: str | None = None) -> QuantumCircuit:
    """Translate the HHC stim circuit into Qiskit, clbit ``i`` = measurement ``i``, by the
    surface code's translator; ``TICK`` becomes a barrier on every qubit.

    Raises:
        ValueError: an instruction the translator does not support, or a qubit of the
            circuit that no instruction uses (the translation would renumber the rest).
    """
    from qcourier.experiments.surface_code import to_qiskit as translate

    qc = translate(circuit, name=name, barriers=True)
    if qc.num_qubits != circuit.num_qubits:
        raise ValueError(f"the HHC circuit uses {qc.num_qubits} of its {circuit.num_qubits} "
                         f"qubits; its qubits must be numbered without gaps")
    return qc


def circuit_annotations(circuit: stim.Circuit) -> tuple[list[list[int]], list[int]]:
    """Detectors and observable 0 of a flat stim circuit, as absolute measurement indices."""
    detectors: list[list[int]] = []
    observable: list[int] = []
    seen = 0
    for ins in circuit.flattened():
        if ins.name == "M":
            seen += len(ins.targets_copy())
        elif ins.name == "DETECTOR":
            detectors.append([seen + t.value for t in ins.targets_copy()])
        elif ins.name == "OBSERVABLE_INCLUDE":
            observable.extend(seen + t.value for t in ins.targets_copy())
    return detectors, observable


def interaction_edges(circuit: QuantumCircuit) -> set[tuple[int, int]]:
    """The pairs of circuit qubits that share a two-qubit gate."""
    edges = set()
    for inst in circuit.data:
        if len(inst.qubits) == 2 and inst.operation.name != "barrier":
            a, b = (circuit.find_bit(q).index for q in inst.qubits)
            edges.add((min(a, b), max(a, b)))
    return edges


def find_patch(circuit: QuantumCircuit, device: Device, distance: int) -> list[int]:
    """The lowest-error SWAP-free placement of ``circuit`` on the device (module doc).

    Returns:
        ``layout[i]``: the physical qubit of circuit qubit ``i``.

    Raises:
        ValueError: the backend's coupling map holds no copy of the code's qubit graph.
    """
    from qiskit.transpiler import PassManager
    from qiskit.transpiler.passes import VF2Layout

    if circuit.num_qubits > device.num_qubits:
        raise ValueError(
            f"backend {device.name} has {device.num_qubits} qubits; the distance-{distance} "
            f"heavy-hex code needs {circuit.num_qubits}: choose a larger heavy-hex backend "
            f"or distance=3")
    manager = PassManager([VF2Layout(target=device.target, seed=1, max_trials=VF2_MAX_TRIALS,
                                     call_limit=VF2_CALL_LIMIT, strict_direction=False)])
    manager.run(circuit)
    layout = manager.property_set["layout"]
    if layout is None:
        raise ValueError(
            f"backend {device.name} has no room for the distance-{distance} heavy-hex code: "
            f"its coupling map holds no SWAP-free copy of the code's {circuit.num_qubits}-qubit "
            f"graph (reason: {manager.property_set['VF2Layout_stop_reason']}); choose a "
            f"heavy-hex backend (e.g. fake_fez, fake_torino) or distance=3")
    return [int(layout[circuit.qubits[i]]) for i in range(circuit.num_qubits)]


# -- analysis --------------------------------------------------------------------------------

def attach_annotations(program: stim.Circuit, record_clbit: Sequence[int],
                       detectors: Iterable[Sequence[int]], observable: Sequence[int]) -> stim.Circuit:
    """``program`` (an ISA circuit in stim) with the abstract circuit's detectors and
    observable, moved from clbits to the program's measurement records.

    Raises:
        ValueError: the program does not write each clbit exactly once.
    """
    import stim

    where: dict[int, int] = {}
    for record, clbit in enumerate(record_clbit):
        if clbit in where:
            raise ValueError(f"the ISA circuit measures into clbit {clbit} twice")
        where[clbit] = record
    total = len(record_clbit)
    needed = {c for det in detectors for c in det} | set(observable)
    missing = sorted(needed - set(where))
    if missing:
        raise ValueError(f"the ISA circuit never measures clbit {missing[0]}")
    out = program.copy()
    for det in detectors:
        out.append("DETECTOR", [stim.target_rec(where[c] - total) for c in det])
    out.append("OBSERVABLE_INCLUDE", [stim.target_rec(where[c] - total) for c in observable], 0)
    return out


def fault_distance(circuit: stim.Circuit) -> int:
    """The circuit-level distance of a noisy annotated stim circuit: the fewest error
    mechanisms that flip the observable without any detection event (stim's search)."""
    errors = circuit.search_for_undetectable_logical_errors(
        dont_explore_detection_event_sets_with_size_above=_SEARCH_LIMIT,
        dont_explore_edges_with_degree_above=_SEARCH_LIMIT,
        dont_explore_edges_increasing_symptom_degree=False,
        canonicalize_circuit_errors=True,
    )
    return len(errors)


def fit_memory_decay(points: Iterable[tuple[int, int, int]]) -> dict[str, Any]:
    """Fit ``1 - 2P_L(r) = (1 - 2 eps0)(1 - 2 eps)^r`` with a free intercept (module doc).

    Args:
        points: ``(rounds, logical_errors, shots)`` per PUB.

    Returns:
        ``eps``, ``eps_stderr``, ``eps0``, ``chi2``, ``dof``, ``chi2_per_dof``, ``p_value``,
        ``points`` (used), and ``withheld``: ``None`` or why the fit is not to be reported.
    """
    from scipy.stats import chi2 as chi2_dist

    rs: list[float] = []
    ys: list[float] = []
    ws: list[float] = []
    for rounds, errors, shots in points:
        if shots <= 0 or rounds <= 0 or errors / shots >= 0.5:
            continue
        p_reg = (errors + 0.5) / (shots + 1)
        rs.append(float(rounds))
        ys.append(math.log(1 - 2 * errors / shots))
        ws.append(shots * (1 - 2 * p_reg) ** 2 / (4 * p_reg * (1 - p_reg)))
    out: dict[str, Any] = {"points": len(rs), "eps": None, "eps_stderr": None, "eps0": None,
                           "chi2": None, "dof": max(len(rs) - 2, 0), "chi2_per_dof": None,
                           "p_value": None, "withheld": None}
    if len(rs) < 3:
        out["withheld"] = (f"{len(rs)} usable round count(s) (P_L < 0.5); a fit with a free "
                           f"intercept needs at least 3")
        return out
    sw = sum(ws)
    sx = sum(w * r for w, r in zip(ws, rs, strict=True))
    sy = sum(w * y for w, y in zip(ws, ys, strict=True))
    sxx = sum(w * r * r for w, r in zip(ws, rs, strict=True))
    sxy = sum(w * r * y for w, r, y in zip(ws, rs, ys, strict=True))
    det = sw * sxx - sx * sx
    slope = (sw * sxy - sx * sy) / det
    intercept = (sy - slope * sx) / sw
    chi2 = sum(w * (y - intercept - slope * r) ** 2 for w, r, y in zip(ws, rs, ys, strict=True))
    dof = len(rs) - 2
    p_value = float(chi2_dist.sf(chi2, dof))
    out.update({
        "eps": max((1 - math.exp(slope)) / 2, 0.0),
        "eps_stderr": math.exp(slope) / 2 * math.sqrt(sw / det),
        "eps0": (1 - math.exp(intercept)) / 2,
        "chi2": chi2, "chi2_per_dof": chi2 / dof, "p_value": p_value,
    })
    if p_value < FIT_MIN_P_VALUE:
        out["withheld"] = (f"the points do not follow the exponential decay: chi2/dof = "
                           f"{chi2 / dof:.1f} (p = {p_value:.2g} < {FIT_MIN_P_VALUE})")
    return out


def decode_pub(isa: QuantumCircuit, abstract: stim.Circuit, noise: Any,
               counts: dict[str, int], distance: int) -> dict[str, Any]:
    """Decode one PUB's counts with the detector error model of its ISA circuit."""
    import numpy as np

    from qcourier.circuits.noise import isa_to_stim
    from qcourier.experiments.decoding import flag_detector_indices, make_decoder

    detectors, observable = circuit_annotations(abstract)
    if isa.num_clbits != abstract.num_measurements:
        raise ValueError(f"ISA circuit has {isa.num_clbits} clbits, the code circuit "
                         f"{abstract.num_measurements} measurements")
    program, record_clbit = isa_to_stim(isa, noise)
    model = attach_annotations(program, record_clbit, detectors, observable)
    # Raises if a detector or the observable is not deterministic without noise.
    dem = model.detector_error_model(decompose_errors=True, approximate_disjoint_errors=True,
                                     ignore_decomposition_failures=True)
    found = fault_distance(model)
    records, weights = counts_to_measurements(counts, isa.num_clbits)
    shots = int(weights.sum())
    entry: dict[str, Any] = {"shots": shots, "fault_distance": found,
                             "num_detectors": model.num_detectors}
    if shots == 0:
        return entry | {"detection_event_fraction": None, "raw_logical_flip_rate": None,
                        "logical_error_rate": None, "logical_error_ci95": [0.0, 1.0],
                        "logical_errors": 0}
    ordered = records[:, np.asarray(record_clbit, dtype=np.int64)]
    dets, obs = model.compile_m2d_converter().convert(measurements=ordered,
                                                      separate_observables=True)
    # Flags (X basis) condition the matching weights; without flags this is plain matching.
    decoder = make_decoder(dem, flag_detector_indices(abstract))
    predicted = decoder.decode_batch(dets)
    wrong = np.any(predicted.astype(np.bool_) != obs, axis=1)
    errors = int(weights[wrong].sum())
    n_det = dets.shape[1]
    lo, hi = wilson_interval(errors, shots)
    return entry | {
        "detection_event_fraction": float((dets.sum(axis=1) * weights).sum()) / (shots * n_det),
        "raw_logical_flip_rate": int(weights[obs[:, 0]].sum()) / shots,
        "logical_error_rate": errors / shots,
        "logical_error_ci95": [lo, hi],
        "logical_errors": errors,
    }


class HeavyHexCodeExperiment(Experiment):
    """Heavy-hex subsystem code memory: logical error vs rounds, decoded from the ISA circuit."""

    name: ClassVar[str] = "heavy_hex_code"
    description: ClassVar[str] = (
        "Heavy-hex subsystem code memory (d=3 or 5, no SWAP) for rounds 1..R, decoded with "
        "PyMatching from the circuit that ran.")
    Params: ClassVar[type[ExperimentParams]] = HeavyHexCodeParams
    needs_run: ClassVar[bool] = True

    def build(self, params: ExperimentParams) -> list[JobUnit]:
        if not isinstance(params, HeavyHexCodeParams):
            raise TypeError(f"expected HeavyHexCodeParams, got {type(params).__name__}")
        rounds = list(range(1, params.rounds + 1))
        label = _STATE_NAMES[params.logical_state]
        circuits, num_measurements = [], []
        for r in rounds:
            abstract = abstract_circuit(params.distance, r, params.logical_state)
            circuits.append(to_qiskit(abstract, name=f"heavy_hex_code_d{params.distance}_r{r}_{label}"))
            num_measurements.append(abstract.num_measurements)
        metadata = {
            "logical_state": params.logical_state,
            "distance": params.distance,
            "rounds": rounds,
            "basis": basis_of(params.logical_state),
            "code": "heavy-hex subsystem code (Chamberland et al. 2020)",
            "num_measurements": num_measurements,
        }
        return [JobUnit(circuits=circuits, shots=params.shots, metadata=metadata)]

    def place(self, unit: JobUnit, device: Device) -> JobUnit:
        from qcourier.errors import UsageError

        distance = int(unit.metadata["distance"])
        widest = unit.circuits[-1]
        graphs = {frozenset(interaction_edges(c)) for c in unit.circuits}
        if len(graphs) != 1:  # pragma: no cover - guards build()
            raise ValueError("the PUBs of one job must share one qubit graph")
        try:
            layout = find_patch(widest, device, distance)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        metadata = dict(unit.metadata, layout=layout,
                        patch_error=patch_error(device.target, layout, interaction_edges(widest)))
        return replace(unit, metadata=metadata, initial_layout=layout)

    def analyse(self, metadata: dict[str, Any], counts: list[dict[str, int]],
                calibration: Calibration | None, run: RunContext | None = None) -> dict[str, Any]:
        from qcourier.circuits.noise import DeviceNoise

        try:
            logical_state = str(metadata["logical_state"])
            distance = int(metadata["distance"])
            rounds_list = [int(r) for r in metadata["rounds"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"heavy_hex_code metadata lacks or mangles {exc}") from None
        if run is None or run.isa_circuits is None:
            raise ValueError("the ISA circuits of this job are needed to decode it (the "
                             "ledger's circuits/ store); they are missing")
        if run.snapshot is None:
            raise ValueError("the calibration snapshot of this job is needed to decode it; "
                             "it is missing from the ledger's snapshots/")
        if not (len(counts) == len(rounds_list) == len(run.isa_circuits)):
            raise ValueError(f"got counts for {len(counts)} circuits and {len(run.isa_circuits)} "
                             f"ISA circuits; metadata lists rounds {rounds_list}")
        layout = metadata.get("layout")
        noise = DeviceNoise.from_snapshot(run.snapshot, layout)
        per_round = []
        for rounds, isa, pub_counts in zip(rounds_list, run.isa_circuits, counts, strict=True):
            abstract = abstract_circuit(distance, rounds, logical_state)
            per_round.append({"rounds": rounds} | decode_pub(isa, abstract, noise, pub_counts, distance))
        fit = fit_memory_decay((p["rounds"], p["logical_errors"], p["shots"]) for p in per_round)
        distances = sorted({p["fault_distance"] for p in per_round})
        reported = fit["eps"] if fit["withheld"] is None else None
        return {
            "experiment": self.name,
            "logical_state": logical_state,
            "basis": basis_of(logical_state),
            "distance": distance,
            "fault_distance": min(distances),
            "distance_ok": distances == [distance],
            "layout": layout,
            "per_round": per_round,
            "logical_error_per_round": reported,
            "logical_error_per_round_stderr": fit["eps_stderr"] if reported is not None else None,
            "fit": fit,
            "decoder_noise": noise.describe(layout or []),
        }

    def headline(self, analysis: dict[str, Any]) -> str | None:
        where = f"d={analysis.get('distance')}, state {analysis.get('logical_state')}"
        if not analysis.get("distance_ok", True):
            where += f", circuit distance only {analysis.get('fault_distance')}"
        eps = analysis.get("logical_error_per_round")
        if eps is None:
            reason = (analysis.get("fit") or {}).get("withheld") or "no fit"
            return f"logical error per round withheld: {reason} ({where})"
        stderr = analysis.get("logical_error_per_round_stderr")
        spread = "" if stderr is None else f" ± {1.96 * stderr:.4f} (95%)"
        return f"logical error per round {eps:.4f}{spread} ({where})"


def patch_error(target: Any, layout: Sequence[int], edges: Iterable[tuple[int, int]]) -> float | None:
    """Sum of the readout errors of the patch's qubits and the two-qubit gate errors of its
    couplers, from the backend target (the figure the placement minimises, roughly); None
    when the target reports none."""
    total, known = 0.0, False
    for q in layout:
        props = _props(target, "measure", (q,))
        if props is not None:
            total, known = total + props, True
    two_qubit = [n for n in ("cz", "ecr", "cx") if n in getattr(target, "operation_names", ())]
    for a, b in edges:
        pa, pb = layout[a], layout[b]
        for name in two_qubit:
            err = _props(target, name, (pa, pb))
            if err is None:
                err = _props(target, name, (pb, pa))
            if err is not None:
                total, known = total + err, True
                break
    return total if known else None


def _props(target: Any, name: str, qargs: tuple[int, ...]) -> float | None:
    try:
        props = target[name][qargs]
    except (KeyError, TypeError):
        return None
    error = getattr(props, "error", None)
    return None if error is None or not math.isfinite(error) else float(error)
