"""Submitting a plan: dedupe, the budget guard and caps under the key's lock, the
intent line, the service call, the ledger line; and every key of a submission.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qcourier.accounting.budget import BudgetGuard
from qcourier.errors import QcourierError
from qcourier.experiments import Experiment, ExperimentParams
from qcourier.ledger import store as ledger_mod
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.ledger.working import working_set
from qcourier.provenance import save_snapshot
from qcourier.services.base import (
    QuantumService,
    ServiceError,
    TransientServiceError,
)
from qcourier.store.lease import LeaseBusy, LeaseLost
from qcourier.store.objects import StoreError
from qcourier.submit.dispatch import (
    open_slots,
    queue_key,
    store_circuits,
    submit_record,
)
from qcourier.submit.plan import (
    Plan,
    SubmissionOutcome,
    SubmitOptions,
    plan_submission,
)
from qcourier.submit.section import KeyBusy, LeaseUnavailable, Spending, spending_section

if TYPE_CHECKING:
    from qcourier.ledger.summary import RecordView


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
    options: SubmitOptions = SubmitOptions(),
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

    Everything from the dedupe to the last job's line runs in the key's critical section
    (:func:`~qcourier.submit.section.spending_section`: the key's lock, and with ``team``
    its budget lease in the team store) on a working set made inside it, so processes
    submitting for one key at once see each other's intents: together they spend at most the
    budget and keep the pending and per-minute caps. If the section cannot be entered (held
    too long, the store unreachable), nothing is submitted and ``error`` says why.

    Args:
        existing: the ledger's records that the checks read (a working set: those not final
            or in the budget window, and — unless ``force`` — the completed ones of the
            plan's circuits); it is replaced by the working set made under the lock, and
            this run's records are added to it.
        options: read here: ``policy``, ``force``, ``guard``, ``progress`` and ``team``.
    """
    outcome = SubmissionOutcome(plan, None, [])
    guard = options.guard
    service_used = _service_usage(plan) if guard is not None and not guard.allow_over_budget else None
    target.ledger.ensure_writable()
    with ExitStack() as section:
        try:
            spending = section.enter_context(spending_section(
                target.ledger, plan.service.name, plan.service.api_key_index, team=options.team,
                progress=options.progress))
        except (KeyBusy, StoreError) as exc:
            outcome.error = _not_entered(exc)
            return outcome
        circuits = None if options.force else {job.record.circuit_hash for job in plan.jobs}
        existing[:] = working_set(target.ledger, options.clock(), circuits=circuits).summaries
        _submit_locked(target, existing, options, outcome, service_used, spending)
        plan.warnings.extend(spending.notes)
    return outcome


def _not_entered(exc: QcourierError) -> str:
    """Why a submission did not enter its key's section, in one line."""
    if isinstance(exc, (KeyBusy, LeaseBusy)):
        return f"{exc}; nothing submitted, try again later"
    if isinstance(exc, LeaseUnavailable):
        return (f"{exc}: nothing submitted; to submit against this machine's ledger alone, "
                "rerun with --no-lease")
    return (f"{exc}; nothing submitted (the budget lease needs the store; --no-lease submits "
            "against this machine's ledger alone)")


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


def _submit_locked(target: LedgerTarget, existing: list[RecordView], options: SubmitOptions,
                   outcome: SubmissionOutcome, service_used: float | None,
                   spending: Spending) -> None:
    """:func:`submit_plan`'s work in the key's section, on ``existing`` made inside it: the
    plan is ``outcome.plan``."""
    plan, guard = outcome.plan, options.guard
    earlier = {dedupe_key(r): r for r in existing if r.status in _DUPLICATE_STATUSES}
    jobs = []
    for job in plan.jobs:
        duplicate = None if options.force else earlier.get(dedupe_key(job.record))
        if duplicate is None:
            jobs.append(job)
            continue
        outcome.skipped.append(
            f"{job.experiment}: identical to job {duplicate.job_id or duplicate.record_id} "
            f"({duplicate.status.value}); not submitted (use --force to submit it again)")
    if guard is not None and jobs:
        estimate = sum(job.record.estimated_qpu_seconds or 0.0 for job in jobs)
        outcome.refusal, outcome.paced = guard.refusal(
            existing, plan.service.name, plan.service.api_key_index, estimate, options.clock(),
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
        if open_slots(mine, options.policy, options.clock()) == 0:
            record = job.record.evolve(options.clock(), status=JobStatus.DEFERRED)
            ledger_mod.append(path, record)
        else:
            options.progress(f"submitting job {index}/{len(jobs)} ({job.experiment})")
            try:
                spending.confirm()
                record = submit_record(plan.service, path, job.record, job.isa_circuits,
                                       options.clock)
            except (ServiceError, LeaseLost) as exc:
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


def dry_run_budget_line(plan: Plan, existing: list[RecordView], guard: BudgetGuard,
                        now: datetime) -> str:
    """One line: the plan's estimated QPU seconds against what remains of its key's budget."""
    from qcourier.accounting.budget import budget_state

    estimate = sum(job.record.estimated_qpu_seconds or 0.0 for job in plan.jobs)
    service_used = _service_usage(plan)
    limit = guard.limit_for(plan.service.api_key_index)
    state = budget_state(existing, plan.service.name, plan.service.api_key_index, limit,
                         now, service_used, estimate_unknown=True)
    fits = "fits" if estimate <= state.remaining_seconds + 1e-9 else "does NOT fit"
    return (f"{state.label}: the plan needs about {estimate:.1f} s of QPU time; "
            f"{state.remaining_seconds:.1f} s of {limit:.0f} s remain in the 28-day window "
            f"(used {state.used_seconds:.1f} s, reserved {state.reserved_seconds:.1f} s): {fits}")


def submit_everywhere(
    services: list[QuantumService],
    ledger: Ledger,
    experiments: list[tuple[Experiment, ExperimentParams]],
    options: SubmitOptions = SubmitOptions(),
) -> SubmissionReport:
    """Plan and submit the same experiments to each service, into one ledger file.

    A service that fails (rejected key, exhausted budget, unreachable) is reported and the
    others go on. Bad usage (an unknown backend, say) raises before that service submits.
    """
    report = SubmissionReport()
    target = LedgerTarget(ledger, options.jobs_file)
    # (the dry run's budget lines; a list of views, to which records are appended)
    existing: list[RecordView] = [*working_set(ledger).summaries]
    for service in services:
        try:
            plan = plan_submission(service, experiments, options,
                                   output_dirs=[ledger.directory, *_service_dirs(services)])
            if options.dry_run:
                report.outcomes.append(SubmissionOutcome(plan, None, [j.record for j in plan.jobs]))
                if options.guard is not None:
                    report.budget_lines.append(dry_run_budget_line(plan, existing, options.guard,
                                                                   options.clock()))
                continue
            outcome = submit_plan(target, plan, existing=existing, options=options)
            report.outcomes.append(outcome)
            if outcome.error:
                report.failures.append(outcome.error)
            if outcome.refusal and not outcome.paced:
                report.failures.append(outcome.refusal)
        except ServiceError as exc:  # this key failed; the others go on
            report.failures.append(str(exc))
    target.discard_if_unused()
    report.ledger_path = target.path
    if not options.dry_run and options.transpile_cache is not None and options.cache_limits:
        from qcourier.circuits.cache import prune

        prune(options.transpile_cache, options.cache_limits.max_age_days,
              options.cache_limits.max_bytes)
    return report

