"""Submission: experiments -> job units -> transpiled circuits -> jobs -> ledger lines.

``plan_submission`` does everything that needs no service call beyond reading the backend
(build, transpile, hash, provenance); ``submit_plan`` submits each planned job and appends
its ledger line right after the service accepted it. A dry run stops after planning and
writes nothing. Transpiled circuits are reused from ``<ledger>/cache/transpiled/`` when the
same circuits were transpiled for the same backend and calibration before (see
:mod:`qcourier.transpile_cache`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier import ledger as ledger_mod
from qcourier.errors import UsageError
from qcourier.experiments import Experiment, ExperimentParams, JobUnit
from qcourier.experiments.base import Device
from qcourier.ledger import JobStatus, Ledger, LedgerRecord, RecordView, utc_now
from qcourier.budget import BudgetGuard
from qcourier.dispatch import (
    QueuePolicy,
    key_lock,
    open_slots,
    queue_key,
    store_circuits,
    submit_record,
)
from qcourier.provenance import (
    GitState,
    calibration_age_hours,
    circuit_hash,
    git_state,
    save_snapshot,
    snapshot_sha256,
)
from qcourier.transpile_cache import (
    TranspileCache,
    TranspileContext,
    TranspiledUnit,
    cache_inputs,
    cache_key,
)
from qcourier.services.base import (
    AuthenticationError,
    QuantumService,
    ServiceError,
    TransientServiceError,
)

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

#: Fixed so that the same circuits on the same backend transpile to the same ISA circuits.
TRANSPILER_SEED = 11
OPTIMIZATION_LEVEL = 1
#: IBM refuses a job whose input exceeds 50 MB.
MAX_INPUT_BYTES = 50 * 1024 * 1024
#: A calibration older than this gets a warning at submission.
STALE_CALIBRATION_HOURS = 24.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class PlannedJob:
    """One job ready to submit: its circuits and its ledger record (without a job id)."""

    experiment: str
    isa_circuits: list[QuantumCircuit]
    shots: int
    record: LedgerRecord


@dataclass
class Plan:
    """What a submission to one service will do."""

    service: QuantumService
    backend: str
    jobs: list[PlannedJob]
    calibration: dict[str, Any]
    git: GitState
    warnings: list[str] = field(default_factory=list)
    #: Job units whose transpilation came from the transpile cache, and those transpiled.
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass(frozen=True)
class ExecutionLimits:
    """How ``max_execution_time`` is derived from a job's estimated QPU seconds."""

    margin: float = 3.0
    cap: int = 300


@dataclass
class SubmissionOutcome:
    """What a submission did."""

    plan: Plan
    ledger_path: Path | None
    records: list[LedgerRecord]
    #: Why submission stopped early (the jobs before it stay recorded), or None.
    error: str | None = None
    #: Jobs not submitted because an identical one exists, one line each.
    skipped: list[str] = field(default_factory=list)
    #: Why the budget guard refused the whole submission, and whether only for pace.
    refusal: str | None = None
    paced: bool = False
    #: Jobs whose submission failed in a way that may have created them (a 5xx, a timeout):
    #: their intents stay, and the next ``qcollect`` finds out.
    maybe_submitted: int = 0

    @property
    def dry_run(self) -> bool:
        return self.ledger_path is None


def plan_submission(
    service: QuantumService,
    experiments: list[tuple[Experiment, ExperimentParams]],
    *,
    backend: str | None = None,
    repeat: int = 1,
    repo_path: Path | None = None,
    limits: ExecutionLimits = ExecutionLimits(),
    progress: Progress = _quiet,
    transpile_cache: Path | None = None,
    update_cache: bool = True,
    output_dirs: Sequence[Path] = (),
) -> Plan:
    """Build, transpile and hash every job of a submission.

    Args:
        transpile_cache: directory of the transpile cache; None transpiles everything afresh.
        update_cache: False to only read the cache (a dry run writes nothing).
        output_dirs: qcourier's own output directories (ledger, local service), whose
            changes do not make the recorded git tree dirty.

    Raises:
        UsageError: bad repeat count, unknown backend, circuits wider than the backend, or a
            job input over IBM's 50 MB limit.
    """
    from qcourier.budget import estimate_qpu_seconds, max_execution_time

    if repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {repeat}")
    built: list[tuple[Experiment, ExperimentParams, JobUnit]] = []
    for experiment, params in experiments:
        progress(f"building {experiment.name}")
        built.extend((experiment, params, unit) for unit in experiment.build(params))
    width = max(c.num_qubits for _, _, unit in built for c in unit.circuits)
    try:
        backend_name = backend or service.least_busy(width)
        target = service.backend(backend_name)
    except (AuthenticationError, TransientServiceError):
        raise
    except ServiceError as exc:  # no such backend, or none large enough
        if exc.http_status is not None:  # the service failed: not the user's choice
            raise
        raise UsageError(str(exc)) from None
    if width > target.num_qubits:
        raise UsageError(
            f"the circuits need {width} qubits but backend {backend_name} has "
            f"{target.num_qubits}; lower the width or choose a larger backend"
        )
    calibration = service.calibration(backend_name)
    snapshot = snapshot_sha256(calibration)
    age = calibration_age_hours(calibration)
    git = git_state(repo_path, output_dirs)
    plan = Plan(service, backend_name, [], calibration, git, [git.warning] if git.warning else [])
    if age is not None and age > STALE_CALIBRATION_HOURS and not service.simulated:
        plan.warnings.append(f"the calibration of {backend_name} is {age:.0f} hours old")
    cache, context = _open_cache(transpile_cache, update_cache, backend_name, target, snapshot,
                                 plan.warnings)
    device = Device(backend_name, getattr(target, "target", None), target.num_qubits, calibration)
    for experiment, params, unit in built:
        if getattr(target, "target", None) is not None:
            progress(f"placing {experiment.name} on {backend_name}")
            unit = experiment.place(unit, device)
        logical_hash = circuit_hash(unit.circuits)
        what = f"{experiment.name} ({len(unit.circuits)} circuits) for {backend_name}"
        transpiled = _transpile_unit(unit, logical_hash, target, cache, context, what, progress)
        if transpiled.cached:
            plan.cache_hits += 1
        else:
            plan.cache_misses += 1
        isa = transpiled.circuits
        template = _record_for(service, backend_name, experiment, params, unit, transpiled,
                               logical_hash, git, snapshot)
        stored_metadata = isa[0].metadata
        # Travels with the job (QPY keeps circuit metadata; the hashes ignore it), so that
        # `qcourier recover` can rebuild the ledger record of a job whose ledger file is lost.
        isa[0].metadata = {"qcourier": {"experiment": experiment.name,
                                        "params": template.params,
                                        "unit": unit.metadata,
                                        "circuit_hash": template.circuit_hash,
                                        "backend_snapshot_sha256": snapshot}}
        _check_planned_input_size(transpiled, stored_metadata, experiment.name)
        estimate = estimate_qpu_seconds(isa, unit.shots, target)
        template = template.model_copy(update={
            "calibration_age_hours": age,
            "estimated_qpu_seconds": estimate,
            "max_execution_time": max_execution_time(estimate, limits.margin, limits.cap),
        })
        for _ in range(repeat):
            plan.jobs.append(
                PlannedJob(experiment.name, isa, unit.shots,
                           template.model_copy(update={"record_id": ledger_mod.new_record_id()}))
            )
    if cache is not None:
        plan.warnings.extend(cache.warnings)
    return plan


def _open_cache(
    directory: Path | None,
    writable: bool,
    backend_name: str,
    target: Any,
    snapshot: str,
    warnings: list[str],
) -> tuple[TranspileCache | None, TranspileContext | None]:
    """The transpile cache and this plan's context for it, or (None, None) when disabled."""
    if directory is None:
        return None, None
    try:
        context = TranspileContext.for_backend(backend_name, target, snapshot,
                                               OPTIMIZATION_LEVEL, TRANSPILER_SEED)
    except Exception as exc:  # an odd backend object must not fail the submission
        warnings.append(f"transpile cache not used: cannot fingerprint the target of "
                        f"{backend_name} ({type(exc).__name__})")
        return None, None
    return TranspileCache(directory, writable=writable), context


def _transpile_unit(
    unit: JobUnit,
    logical_hash: str,
    target: Any,
    cache: TranspileCache | None,
    context: TranspileContext | None,
    what: str,
    progress: Progress,
) -> TranspiledUnit:
    """The unit's ISA circuits and derived values: from the cache, or transpiled (and cached).

    Each call returns circuit objects of its own (a hit loads them anew from QPY), so the
    provenance metadata the caller attaches to them is never shared with another plan.
    """
    from io import BytesIO

    from qiskit import qpy

    key = inputs = None
    if cache is not None and context is not None:
        inputs = cache_inputs(context, logical_hash, unit.circuits, unit.initial_layout)
        key = cache_key(inputs)
        hit = cache.load(key, inputs)
        if hit is not None:
            progress(f"reusing cached transpilation of {what}")
            return hit
    progress(f"transpiling {what}")
    isa = transpile(unit.circuits, target, unit.initial_layout, what)
    # Dumped before the caller adds provenance metadata: the entry must hold the transpiler's
    # output alone, since other experiments or params may share these circuits.
    buffer = BytesIO()
    qpy.dump(isa, buffer)
    payload = buffer.getvalue()
    transpiled = describe_transpiled(isa, len(payload))
    if cache is not None:
        cache.store(key, inputs, transpiled, payload)
    return transpiled


def describe_transpiled(isa: list[QuantumCircuit], qpy_size: int) -> TranspiledUnit:
    """What a ledger record needs from ISA circuits: hash, depths, gate counts, qubits.

    Args:
        qpy_size: length in bytes of the circuits' QPY (for the job input size).
    """
    gates: Counter[str] = Counter()
    for circuit in isa:
        gates.update({name: int(n) for name, n in circuit.count_ops().items()})
    return TranspiledUnit(
        circuits=isa,
        isa_circuit_hash=circuit_hash(isa),
        circuit_depths=[c.depth() for c in isa],
        transpiled_gates=dict(sorted(gates.items())),
        physical_qubits=physical_qubits(isa),
        qpy_size=qpy_size,
    )


def transpile(circuits: list[QuantumCircuit], backend: Any,
              initial_layout: list[int] | None = None, what: str = "the circuits") -> list[QuantumCircuit]:
    """ISA circuits for ``backend``, deterministically (fixed seed).

    Args:
        initial_layout: physical qubit of each circuit qubit, fixed: the transpiler may then
            neither route nor move a qubit (see :func:`check_fixed_layout`).

    Raises:
        UsageError: with ``initial_layout``, the circuits do not fit the coupling map there.
    """
    from qiskit.transpiler import TranspilerError, generate_preset_pass_manager

    if initial_layout is None:
        manager = generate_preset_pass_manager(
            optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=TRANSPILER_SEED
        )
        return list(manager.run(circuits))
    manager = generate_preset_pass_manager(
        optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=TRANSPILER_SEED,
        initial_layout=initial_layout, routing_method="none",
    )
    try:
        isa = list(manager.run(circuits))
    except TranspilerError as exc:
        raise UsageError(f"{what}: the transpiler would have to route (add SWAPs) on the chosen "
                         f"qubits, which the experiment forbids ({str(exc)[:120]})") from None
    for logical, circuit in zip(circuits, isa, strict=True):
        check_fixed_layout(logical, circuit, initial_layout, what)
    return isa


def _two_qubit_gates(circuit: QuantumCircuit) -> int:
    return sum(1 for inst in circuit.data
               if len(inst.qubits) == 2 and inst.operation.name != "barrier")


def check_fixed_layout(logical: QuantumCircuit, isa: QuantumCircuit, layout: list[int],
                       what: str) -> None:
    """Refuse an ISA circuit that does not keep ``layout`` or adds two-qubit gates (SWAPs).

    Raises:
        UsageError: the layout moved, the output permutation is not the identity, or the ISA
            circuit has a different number of two-qubit gates than the logical one.
    """
    found = isa.layout.initial_index_layout(filter_ancillas=True) if isa.layout else None
    final = isa.layout.final_index_layout(filter_ancillas=True) if isa.layout else None
    if found != list(layout) or final != list(layout):
        raise UsageError(f"{what}: the transpiler moved qubits away from the chosen patch "
                         f"(layout {found}, final {final}); refusing to submit")
    before, after = _two_qubit_gates(logical), _two_qubit_gates(isa)
    if before != after:
        raise UsageError(f"{what}: the transpiled circuit has {after} two-qubit gates for the "
                         f"circuit's {before} (SWAPs added or gates merged); refusing to submit")


def check_input_size(circuits: list[QuantumCircuit], experiment: str) -> int:
    """The job's input size in bytes (QPY, as base64 in the request body), checked.

    Raises:
        UsageError: it exceeds IBM's 50 MB limit for a job's input.
    """
    from io import BytesIO

    from qiskit import qpy

    buffer = BytesIO()
    qpy.dump(circuits, buffer)
    size = _base64_length(len(buffer.getvalue()))
    if size > MAX_INPUT_BYTES:
        raise UsageError(
            f"the {experiment} job's input is {size / 2**20:.1f} MB, over the service's limit of "
            f"{MAX_INPUT_BYTES / 2**20:.0f} MB; use fewer or smaller circuits per job"
        )
    return size


def _base64_length(n: int) -> int:
    return (n + 2) // 3 * 4


#: Below the limit by more than this, the size derived from the cached QPY length is trusted.
_INPUT_SIZE_MARGIN = 2**20


def _check_planned_input_size(transpiled: TranspiledUnit, replaced_metadata: dict[str, Any],
                              experiment: str) -> int:
    """:func:`check_input_size` of a planned job, without a QPY dump when far from the limit.

    The job's QPY differs from the one measured in ``transpiled.qpy_size`` only by the first
    circuit's metadata, which QPY stores as compact JSON; near the limit the job is dumped
    again and measured exactly.

    Args:
        replaced_metadata: the first circuit's metadata when ``qpy_size`` was measured.

    Returns:
        The input size in bytes.

    Raises:
        UsageError: the input exceeds the service's limit.
    """
    import json

    def compact(metadata: dict[str, Any]) -> int:
        return len(json.dumps(metadata, separators=(",", ":")).encode())

    circuits = transpiled.circuits
    estimate = _base64_length(transpiled.qpy_size - compact(replaced_metadata)
                              + compact(circuits[0].metadata))
    if estimate > MAX_INPUT_BYTES - _INPUT_SIZE_MARGIN:
        return check_input_size(circuits, experiment)
    return estimate


def physical_qubits(circuits: list[QuantumCircuit]) -> list[int]:
    """The backend qubits the circuits act on."""
    return sorted(
        {
            c.find_bit(q).index
            for c in circuits
            for inst in c.data
            if inst.operation.name not in ("barrier", "delay")
            for q in inst.qubits
        }
    )


def _record_for(
    service: QuantumService,
    backend: str,
    experiment: Experiment,
    params: ExperimentParams,
    unit: JobUnit,
    transpiled: TranspiledUnit,
    logical_hash: str,
    git: GitState,
    snapshot: str,
) -> LedgerRecord:
    metadata = dict(unit.metadata)
    logical_state = metadata.pop("logical_state", None)
    # Copies: the record must not share lists with the transpiled unit.
    metadata["physical_qubits"] = list(transpiled.physical_qubits)
    metadata["circuit_depths"] = list(transpiled.circuit_depths)
    return LedgerRecord(
        service=service.name,
        api_key_index=service.api_key_index,
        backend=backend,
        experiment_type=experiment.name,
        logical_state=None if logical_state is None else str(logical_state),
        shots=unit.shots,
        num_circuits=len(transpiled.circuits),
        circuit_hash=logical_hash,
        isa_circuit_hash=transpiled.isa_circuit_hash,
        transpiled_depth=max(metadata["circuit_depths"]),
        transpiled_gates=dict(transpiled.transpiled_gates),
        git_commit=git.commit,
        git_dirty=git.dirty,
        params=params.model_dump(mode="json"),
        metadata=metadata,
        backend_snapshot_sha256=snapshot,
    )


class LedgerTarget:
    """The ledger file a submission appends to: given, or created when first needed.

    A file this run created and never wrote to (the service refused every job) is removed
    by :meth:`discard_if_unused`, so a refused submission leaves nothing behind.
    """

    def __init__(self, ledger: Ledger, jobs_file: Path | None = None):
        self.ledger = ledger
        self._path = jobs_file
        self._created = False

    @property
    def path(self) -> Path | None:
        """The file, if there is one yet."""
        return self._path

    def open(self) -> Path:
        """The file, created now if it was not given and does not exist yet."""
        if self._path is None:
            self._path = self.ledger.new_file()
            self._created = True
        return self._path

    def discard_if_unused(self) -> None:
        """Remove the file if this run created it and nothing was written to it."""
        if self._created and self._path is not None and self._path.stat().st_size == 0:
            self._path.unlink()
            self._path = None
            self._created = False


def dedupe_key(record: RecordView) -> tuple:
    """What makes two jobs the same: service, key, backend, circuits, shots and options."""
    return (record.service, record.api_key_index, record.backend, record.circuit_hash,
            record.shots, record.max_execution_time)


_DUPLICATE_STATUSES = frozenset({JobStatus.DEFERRED, JobStatus.SUBMITTING, JobStatus.SUBMITTED,
                                 JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED})


def submit_plan(
    target: LedgerTarget,
    plan: Plan,
    *,
    existing: list[RecordView],
    policy: QueuePolicy = QueuePolicy(),
    force: bool = False,
    guard: BudgetGuard | None = None,
    progress: Progress = _quiet,
) -> SubmissionOutcome:
    """Submit the planned jobs under the intent protocol, deferring what the queue cannot take.

    A job identical to one already pending or completed is skipped (``force`` submits it
    anyway); copies made by ``--repeat`` in the same run are intended and kept. If the service
    refuses or fails a submission, the jobs before it stay recorded, the rest are not
    submitted, and ``error`` says why.

    The budget guard sees the estimate of all the jobs to be recorded (deferred ones too)
    before any is submitted: it refuses the whole submission or none of it. It counts the
    larger of the ledger's usage and the service's own figure (asked once, before the lock;
    if that call fails the guard counts the ledger's alone, and a warning says so).

    Everything from the dedupe to the last job's line runs under the key's lock
    (:func:`~qcourier.dispatch.key_lock`) on a fold made inside it, so processes submitting
    for one key at once see each other's intents: together they spend at most the budget
    and keep the pending and per-minute caps.

    Args:
        existing: every record of the ledger (the fold); it is replaced by the fold made
            under the lock, and this run's records are added to it.
    """
    from filelock import Timeout

    outcome = SubmissionOutcome(plan, None, [])
    service_used = _service_usage(plan) if guard is not None and not guard.allow_over_budget else None
    target.ledger.ensure_writable()
    lock = key_lock(target.ledger, plan.service.name, plan.service.api_key_index)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:  # say why this run seems to hang, then wait
            progress(f"{budget_label(plan.service)}: waiting up to {lock.timeout:.0f} s for "
                     "another qsubmit or qcollect submitting for this key")
            lock.acquire()
        try:
            existing[:] = target.ledger.fold().summaries
            _submit_locked(target, plan, existing, policy, force, guard, progress, outcome,
                           service_used)
        finally:
            lock.release()
    except Timeout:
        outcome.error = (f"{budget_label(plan.service)}: another qsubmit or qcollect has been "
                         f"submitting for this key for {lock.timeout:.0f} s; nothing submitted, "
                         "try again later")
    return outcome


def budget_label(service: QuantumService) -> str:
    """``local`` or ``ibm key N``: how budget messages name a service's key."""
    if service.name == "local" or service.api_key_index is None:
        return service.name
    return f"{service.name} key {service.api_key_index}"


def _service_usage(plan: Plan) -> float | None:
    """The service's own usage figure for the plan's key, or ``None`` (with a warning in the
    plan) when it cannot be read."""
    try:
        return plan.service.usage().usage_seconds
    except ServiceError as exc:
        plan.warnings.append(f"could not read the usage of {budget_label(plan.service)} from "
                             f"the service ({exc}); the budget guard counts the ledger's "
                             "figure only")
        return None


def _submit_locked(target: LedgerTarget, plan: Plan, existing: list[RecordView],
                   policy: QueuePolicy, force: bool, guard: BudgetGuard | None,
                   progress: Progress, outcome: SubmissionOutcome,
                   service_used: float | None) -> None:
    """:func:`submit_plan`'s work under the key's lock, on ``existing`` folded inside it."""
    earlier = {dedupe_key(r): r for r in existing if r.status in _DUPLICATE_STATUSES}
    jobs = []
    for job in plan.jobs:
        duplicate = None if force else earlier.get(dedupe_key(job.record))
        if duplicate is None:
            jobs.append(job)
            continue
        outcome.skipped.append(
            f"{job.experiment}: identical to job {duplicate.job_id or duplicate.record_id} "
            f"({duplicate.status.value}); not submitted (use --force to submit it again)")
    if guard is not None and jobs:
        estimate = sum(job.record.estimated_qpu_seconds or 0.0 for job in jobs)
        outcome.refusal, outcome.paced = guard.refusal(
            existing, plan.service.name, plan.service.api_key_index, estimate, utc_now(),
            service_used)
        if outcome.refusal:
            return
    if not jobs:
        return
    save_snapshot(target.ledger.snapshots_dir, plan.calibration)
    path = outcome.ledger_path = target.open()
    for index, job in enumerate(jobs, start=1):
        store_circuits(target.ledger, job.record.isa_circuit_hash, job.isa_circuits)
        mine = [r for r in existing if queue_key(r) == queue_key(job.record)]
        if open_slots(mine, policy, utc_now()) == 0:
            record = job.record.evolve(status=JobStatus.DEFERRED)
            ledger_mod.append(path, record)
        else:
            progress(f"submitting job {index}/{len(jobs)} ({job.experiment})")
            try:
                record = submit_record(plan.service, path, job.record, job.isa_circuits)
            except ServiceError as exc:
                left = len(jobs) - index + 1
                outcome.error = f"{exc} ({left} job(s) not submitted)"
                if isinstance(exc, TransientServiceError) and not exc.nothing_done:
                    outcome.maybe_submitted = 1
                    outcome.error += ("; the last one may have been submitted — the next "
                                      "`qcollect` will find out")
                break
        existing.append(record)
        outcome.records.append(record)


@dataclass
class SubmissionReport:
    """A submission to one or several services (keys): what each did, and what failed."""

    outcomes: list[SubmissionOutcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ledger_path: Path | None = None
    #: A dry run's estimate of the plan's QPU seconds against each key's remaining budget.
    budget_lines: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[LedgerRecord]:
        return [r for o in self.outcomes for r in o.records]

    @property
    def skipped(self) -> list[str]:
        return [s for o in self.outcomes for s in o.skipped]

    @property
    def maybe_submitted(self) -> int:
        """Jobs that may have been submitted although the service's answer was lost."""
        return sum(o.maybe_submitted for o in self.outcomes)

    @property
    def paced(self) -> list[str]:
        """Submissions held back by ``--pace`` (not failures: exit 0)."""
        return [o.refusal for o in self.outcomes if o.refusal and o.paced]

    @property
    def exit_code(self) -> int:
        """0 when every service took its jobs (or pace held them back), 1 when any failed."""
        return 1 if self.failures else 0


def _service_dirs(services: list[QuantumService]) -> list[Path]:
    """Where services keep files of their own (the local service's job store)."""
    return [root for root in (getattr(s, "root", None) for s in services) if root is not None]


def dry_run_budget_line(plan: Plan, existing: list[RecordView], guard: BudgetGuard) -> str:
    """One line: the plan's estimated QPU seconds against what remains of its key's budget."""
    from qcourier.budget import budget_state

    estimate = sum(job.record.estimated_qpu_seconds or 0.0 for job in plan.jobs)
    service_used = _service_usage(plan)
    limit = guard.limit_for(plan.service.api_key_index)
    state = budget_state(existing, plan.service.name, plan.service.api_key_index, limit,
                         utc_now(), service_used, estimate_unknown=True)
    fits = "fits" if estimate <= state.remaining_seconds + 1e-9 else "does NOT fit"
    return (f"{state.label}: the plan needs about {estimate:.1f} s of QPU time; "
            f"{state.remaining_seconds:.1f} s of {limit:.0f} s remain in the 28-day window "
            f"(used {state.used_seconds:.1f} s, reserved {state.reserved_seconds:.1f} s): {fits}")


def submit_everywhere(
    services: list[QuantumService],
    ledger: Ledger,
    experiments: list[tuple[Experiment, ExperimentParams]],
    *,
    backend: str | None = None,
    repeat: int = 1,
    repo_path: Path | None = None,
    jobs_file: Path | None = None,
    dry_run: bool = False,
    limits: ExecutionLimits = ExecutionLimits(),
    policy: QueuePolicy = QueuePolicy(),
    force: bool = False,
    guard: BudgetGuard | None = None,
    progress: Progress = _quiet,
    transpile_cache: Path | None = None,
) -> SubmissionReport:
    """Plan and submit the same experiments to each service, into one ledger file.

    A service that fails (rejected key, exhausted budget, unreachable) is reported and the
    others go on. Bad usage (an unknown backend, say) raises before that service submits.

    Args:
        transpile_cache: directory of the transpile cache, or None to transpile afresh. A dry
            run reads it but does not write it.
    """
    report = SubmissionReport()
    target = LedgerTarget(ledger, jobs_file)
    existing: list[RecordView] = ledger.fold().summaries
    for service in services:
        try:
            plan = plan_submission(service, experiments, backend=backend, repeat=repeat,
                                   repo_path=repo_path, limits=limits, progress=progress,
                                   transpile_cache=transpile_cache, update_cache=not dry_run,
                                   output_dirs=[ledger.directory, *_service_dirs(services)])
            if dry_run:
                report.outcomes.append(SubmissionOutcome(plan, None, [j.record for j in plan.jobs]))
                if guard is not None:
                    report.budget_lines.append(dry_run_budget_line(plan, existing, guard))
                continue
            outcome = submit_plan(target, plan, existing=existing, policy=policy, force=force,
                                  guard=guard, progress=progress)
            report.outcomes.append(outcome)
            if outcome.error:
                report.failures.append(outcome.error)
            if outcome.refusal and not outcome.paced:
                report.failures.append(outcome.refusal)
        except ServiceError as exc:  # this key failed; the others go on
            report.failures.append(str(exc))
    target.discard_if_unused()
    report.ledger_path = target.path
    return report
