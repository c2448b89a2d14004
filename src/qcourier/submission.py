"""Submission: experiments -> job units -> transpiled circuits -> jobs -> ledger lines.

``plan_submission`` does everything that needs no service call beyond reading the backend
(build, transpile, hash, provenance); ``submit_plan`` submits each planned job and appends
its ledger line right after the service accepted it. A dry run stops after planning and
writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier import ledger as ledger_mod
from qcourier.errors import UsageError
from qcourier.experiments import Experiment, ExperimentParams, JobUnit
from qcourier.ledger import JobStatus, Ledger, LedgerRecord, utc_now
from qcourier.budget import BudgetGuard
from qcourier.dispatch import QueuePolicy, open_slots, queue_key, store_circuits, submit_record
from qcourier.provenance import (
    GitState,
    calibration_age_hours,
    circuit_hash,
    git_state,
    save_snapshot,
    snapshot_sha256,
)
from qcourier.services.base import (
    AuthenticationError,
    BudgetExceededError,
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
) -> Plan:
    """Build, transpile and hash every job of a submission.

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
        raise UsageError(str(exc)) from None
    if width > target.num_qubits:
        raise UsageError(
            f"the circuits need {width} qubits but backend {backend_name} has "
            f"{target.num_qubits}; lower the width or choose a larger backend"
        )
    calibration = service.calibration(backend_name)
    snapshot = snapshot_sha256(calibration)
    age = calibration_age_hours(calibration)
    git = git_state(repo_path)
    plan = Plan(service, backend_name, [], calibration, git, [git.warning] if git.warning else [])
    if age is not None and age > STALE_CALIBRATION_HOURS and not service.simulated:
        plan.warnings.append(f"the calibration of {backend_name} is {age:.0f} hours old")
    for experiment, params, unit in built:
        progress(f"transpiling {experiment.name} ({len(unit.circuits)} circuits) for {backend_name}")
        isa = transpile(unit.circuits, target)
        template = _record_for(service, backend_name, experiment, params, unit, isa, git, snapshot)
        # Travels with the job (QPY keeps circuit metadata; the hashes ignore it), so that
        # `qcourier recover` can rebuild the ledger record of a job whose ledger file is lost.
        isa[0].metadata = {"qcourier": {"experiment": experiment.name,
                                        "params": template.params,
                                        "unit": unit.metadata,
                                        "circuit_hash": template.circuit_hash}}
        check_input_size(isa, experiment.name)
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
    return plan


def transpile(circuits: list[QuantumCircuit], backend: Any) -> list[QuantumCircuit]:
    """ISA circuits for ``backend``, deterministically (fixed seed)."""
    from qiskit.transpiler import generate_preset_pass_manager

    manager = generate_preset_pass_manager(
        optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=TRANSPILER_SEED
    )
    return list(manager.run(circuits))


def check_input_size(circuits: list[QuantumCircuit], experiment: str) -> int:
    """The job's input size in bytes (QPY, as base64 in the request body), checked.

    Raises:
        UsageError: it exceeds IBM's 50 MB limit for a job's input.
    """
    from io import BytesIO

    from qiskit import qpy

    buffer = BytesIO()
    qpy.dump(circuits, buffer)
    size = (len(buffer.getvalue()) + 2) // 3 * 4
    if size > MAX_INPUT_BYTES:
        raise UsageError(
            f"the {experiment} job's input is {size / 2**20:.1f} MB, over the service's limit of "
            f"{MAX_INPUT_BYTES / 2**20:.0f} MB; use fewer or smaller circuits per job"
        )
    return size


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
    isa: list[QuantumCircuit],
    git: GitState,
    snapshot: str,
) -> LedgerRecord:
    gates: Counter[str] = Counter()
    for circuit in isa:
        gates.update({name: int(n) for name, n in circuit.count_ops().items()})
    metadata = dict(unit.metadata)
    logical_state = metadata.pop("logical_state", None)
    metadata["physical_qubits"] = physical_qubits(isa)
    metadata["circuit_depths"] = [c.depth() for c in isa]
    return LedgerRecord(
        service=service.name,
        api_key_index=service.api_key_index,
        backend=backend,
        experiment_type=experiment.name,
        logical_state=None if logical_state is None else str(logical_state),
        shots=unit.shots,
        num_circuits=len(isa),
        circuit_hash=circuit_hash(unit.circuits),
        isa_circuit_hash=circuit_hash(isa),
        transpiled_depth=max(metadata["circuit_depths"]),
        transpiled_gates=dict(sorted(gates.items())),
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


def dedupe_key(record: LedgerRecord) -> tuple:
    """What makes two jobs the same: service, key, backend, circuits, shots and options."""
    return (record.service, record.api_key_index, record.backend, record.circuit_hash,
            record.shots, record.max_execution_time)


_DUPLICATE_STATUSES = frozenset({JobStatus.DEFERRED, JobStatus.SUBMITTING, JobStatus.SUBMITTED,
                                 JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED})


def submit_plan(
    target: LedgerTarget,
    plan: Plan,
    *,
    existing: list[LedgerRecord],
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
    before any is submitted: it refuses the whole submission or none of it.

    Args:
        existing: every record of the ledger (the fold); this run's records are added to it.
    """
    outcome = SubmissionOutcome(plan, None, [])
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
            existing, plan.service.name, plan.service.api_key_index, estimate, utc_now())
        if outcome.refusal:
            return outcome
    if not jobs:
        return outcome
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
                if isinstance(exc, TransientServiceError):
                    outcome.error += "; the last one may have reached the service: qcollect will find out"
                break
        existing.append(record)
        outcome.records.append(record)
    return outcome


@dataclass
class SubmissionReport:
    """A submission to one or several services (keys): what each did, and what failed."""

    outcomes: list[SubmissionOutcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ledger_path: Path | None = None

    @property
    def records(self) -> list[LedgerRecord]:
        return [r for o in self.outcomes for r in o.records]

    @property
    def skipped(self) -> list[str]:
        return [s for o in self.outcomes for s in o.skipped]

    @property
    def paced(self) -> list[str]:
        """Submissions held back by ``--pace`` (not failures: exit 0)."""
        return [o.refusal for o in self.outcomes if o.refusal and o.paced]

    @property
    def exit_code(self) -> int:
        """0 when every service took its jobs (or pace held them back), 1 when any failed."""
        return 1 if self.failures else 0


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
) -> SubmissionReport:
    """Plan and submit the same experiments to each service, into one ledger file.

    A service that fails (rejected key, exhausted budget, unreachable) is reported and the
    others go on. Bad usage (an unknown backend, say) raises before that service submits.
    """
    report = SubmissionReport()
    target = LedgerTarget(ledger, jobs_file)
    existing = ledger.fold().records
    for service in services:
        try:
            plan = plan_submission(service, experiments, backend=backend, repeat=repeat,
                                   repo_path=repo_path, limits=limits, progress=progress)
            if dry_run:
                report.outcomes.append(SubmissionOutcome(plan, None, [j.record for j in plan.jobs]))
                continue
            outcome = submit_plan(target, plan, existing=existing, policy=policy, force=force,
                                  guard=guard, progress=progress)
            report.outcomes.append(outcome)
            if outcome.error:
                report.failures.append(outcome.error)
            if outcome.refusal and not outcome.paced:
                report.failures.append(outcome.refusal)
        except (AuthenticationError, BudgetExceededError, TransientServiceError) as exc:
            report.failures.append(str(exc))
    target.discard_if_unused()
    report.ledger_path = target.path
    return report
