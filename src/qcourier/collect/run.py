"""Collection: settle intents, poll pending jobs, fetch and analyse finished ones, record
what changed, and submit deferred jobs as the queue frees up.

One ``collect_pending`` run goes through its phases in turn, each a function of the run's
context (:class:`_Context`: the ledger, the services, the options and clock; fixed for the
run) and of explicit state, returning what it found; :func:`_collect_all` strings them
together. What to do about a job is decided by the pure functions of
:mod:`qcourier.collect.decide`; the phases ask the services and write what those decide:

1. **fold**: the ledger's working set (:mod:`qcourier.ledger.working`: the records that are
   not final or may still count, and how many there are of each status; never every
   record); a completed record whose result file is missing or no longer matches its sha256
   gets its result downloaded again (:class:`~qcourier.ledger.results.ResultCheck`);
2. **settle intents**: ``submitting`` intents left by a process that died
   (``dispatch.resolve_intent``);
3. **list states**: the states of many jobs from one listing, where a service has one;
4. **poll**: every other pending job, with the service and key that submitted it; a
   finished job gets its result file (written atomically) and a new ledger line; a job with
   fewer shots than asked is ``partial``; a failed job keeps the service's message and a
   failure class;
5. **usage**: the usage of final jobs recorded while the service still reported it
   pending (finished in the budget window, the newest :data:`~decide.USAGE_BATCH` first); a
   figure that has arrived is a new ledger line, and until then the budget guard counts the
   job's estimate. A failed call changes nothing and is tried again on the next run;
6. **retries**: with ``resubmit_failed``, retries of failed jobs whose failure was the
   system's (and of partial ones), linked by ``retry_of``/``retry_count``, as ``deferred``;
7. **drain**: submits ``deferred`` jobs while their key has free pending slots, submissions
   left this minute, and (through ``admit``) budget.

It appends nothing for a job whose state did not change, so running it again changes
nothing. Only one collector runs on a ledger at a time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from qcourier.accounting.budget import usage_pending
from qcourier.collect import decide
from qcourier.collect.analysis import analyse, headline
from qcourier.errors import QcourierError, UsageError
from qcourier.files import (
    create_timestamped,
    path_under,
    remove_stale_temp_files,
)
from qcourier.ledger import store as ledger_mod
from qcourier.ledger.results import ResultCheck
from qcourier.ledger.status import JobStatus, new_record_id, utc_now
from qcourier.ledger.store import Ledger
from qcourier.ledger.summary import Entry, LedgerProblem
from qcourier.ledger.working import WorkingSet, working_set
from qcourier.services import ServicePool
from qcourier.services.base import (
    AuthenticationError,
    CallTime,
    DeadlineExceededError,
    InvalidJobIdError,
    JobMetrics,
    JobNotFoundError,
    JobResult,
    JobState,
    JobStatusReport,
    QuantumService,
    ServiceError,
    call_time_scope,
    check_job_id,
    scoped_call_time,
)
from qcourier.services.workers import (
    DEFAULT_WORKERS,
    RateGate,
    RetryPolicy,
    map_unordered,
    retry_call,
)
from qcourier.store.objects import StoreError
from qcourier.submit.dispatch import (
    QueuePolicy,
    load_circuits,
    queue_key,
    resolve_intent,
    submit_record,
)
from qcourier.submit.section import KeyBusy, Spending, spending_section

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.summary import RecordView
    from qcourier.store.lease import TeamLease

Progress = Callable[[str], None]
#: The run's clock: the time now, in UTC.
Clock = Callable[[], datetime]
#: Completed results re-hashed per run, in turns (see :class:`ResultCheck`).
RESULT_CHECK_BATCH = 100
#: Given a deferred record and the current records, a reason not to submit it now, or None.
Admit = Callable[["LedgerRecord", list["RecordView"]], str | None]


def _quiet(_message: str) -> None:
    pass


def _admit_all(_record: LedgerRecord, _records: list[RecordView]) -> str | None:
    return None


class CollectorBusy(QcourierError):
    """Another collector is working on this ledger (``qcollect`` reports it and exits 0:
    the other one does the work)."""


@dataclass
class JobOutcome:
    """What this run found or did for one record."""

    record: LedgerRecord
    state: JobState | None  # the service's state, where it was asked
    changed: bool
    message: str | None = None
    analysis: dict[str, Any] | None = None
    rejected_credentials: bool = False
    #: The job could not be polled or collected this time (exit code 1).
    failed: bool = False


@dataclass
class UsageOutcome:
    """What this run learnt of the usage of a final job recorded without it."""

    record: LedgerRecord
    #: Whether the figure arrived (and a ledger line records it).
    recorded: bool
    message: str


@dataclass
class CollectReport:
    """Everything one collection run saw and did."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    already_final: int = 0
    skipped: list[str] = field(default_factory=list)
    problems: list[LedgerProblem] = field(default_factory=list)
    collected_path: Path | None = None
    already_final_completed: int = 0
    #: For ``--job-id`` of a job no ledger file knows: what the service says of it.
    unrecorded: JobStatusReport | None = None
    #: Final jobs whose usage was asked for again (their figure was pending).
    usage: list[UsageOutcome] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.already_final + len(self.outcomes)

    @property
    def completed(self) -> int:
        done = sum(1 for o in self.outcomes if o.record.status is JobStatus.COMPLETED)
        return self.already_final_completed + done

    @property
    def pending(self) -> int:
        """Records still needing qcollect: on their way, in an intent, or deferred."""
        return sum(1 for o in self.outcomes if o.record.status.is_open)

    @property
    def deferred(self) -> int:
        return sum(1 for o in self.outcomes if o.record.status is JobStatus.DEFERRED)

    @property
    def errors(self) -> int:
        """Jobs in status ``error`` (the service lost them): polled again on every run."""
        return sum(1 for o in self.outcomes if o.record.status is JobStatus.ERROR)

    @property
    def newly_final(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.changed and o.record.status.is_final]

    @property
    def exit_code(self) -> int:
        """0 when every job could be polled, 1 when any could not."""
        return 1 if any(o.failed for o in self.outcomes) else 0

    def as_json(self) -> dict[str, Any]:
        """What ``qcollect --json`` prints: each job's record fields as its ledger line
        holds them, with what this run saw and did, and the run's totals."""
        unrecorded = self.unrecorded
        return {
            "jobs": [{**o.record.as_json(("job_id", "record_id", "status", "result_path")),
                      "state": None if o.state is None else o.state.value,
                      "failed": o.failed, "changed": o.changed, "message": o.message}
                     for o in self.outcomes],
            "unrecorded": None if unrecorded is None else {
                "job_id": unrecorded.job_id, "state": unrecorded.state.value},
            "completed": self.completed,
            "pending": self.pending,
            "errors": self.errors,
            "deferred": self.deferred,
            "total": self.total,
            "already_final": self.already_final,
            "collected_results": None if self.collected_path is None else str(self.collected_path),
            "skipped": self.skipped,
            "problems": [str(p) for p in self.problems],
            "usage": [{**u.record.as_json(("job_id", "record_id", "usage_seconds")),
                       "recorded": u.recorded, "message": u.message}
                      for u in self.usage],
        }


@dataclass(frozen=True)
class CollectOptions:
    """How to collect (``qcollect``'s options, validated by the command).

    Attributes:
        paths: collect only the jobs of these ledger files (None: every file).
        job_id: only this job's records; a job no ledger file knows is asked about on
            ``default_service``.
        default_service: the service asked about a ``job_id`` that no ledger file knows.
        policy: the pending cap, rate and intent grace period per key.
        resubmit_failed: retry failed jobs whose failure was the system's, and partial ones.
        max_retries: how many retries one original job may have.
        admit: a last check before a deferred job is submitted (the budget guard).
        verify_batch: how many completed results to re-hash this run (``None``: all); every
            result file's existence is checked on every run (:class:`ResultCheck`).
        workers: how many jobs are polled and collected at once.
        progress: called with each step's description.
        clock: the time now (UTC) for every decision and every line this run writes.
        team: the team store's budget leases, which the drain of deferred jobs takes as
            ``qsubmit`` does (None: the key's lock alone).
    """

    paths: list[Path] | None = None
    job_id: str | None = None
    default_service: str = "local"
    policy: QueuePolicy = QueuePolicy()
    resubmit_failed: bool = False
    max_retries: int = 3
    admit: Admit = _admit_all
    verify_batch: int | None = RESULT_CHECK_BATCH
    workers: int = DEFAULT_WORKERS
    progress: Progress = _quiet
    clock: Clock = utc_now
    team: TeamLease | None = None


#: Where atomic writes happen in a ledger directory (a killed writer's temp files are removed).
#: ``jobs/`` is not listed here: the result check lists it when it changed (it may hold
#: 100,000 files), and removes them then (:class:`ResultCheck`).
TEMP_FILE_DIRS = (".", "circuits", "snapshots", "cache", "cache/index", "cache/transpiled")


def collector_lock(ledger: Ledger) -> FileLock:
    """The lock only one collector at a time may hold on a ledger."""
    return FileLock(str(ledger.directory / ".qcollect.lock"), timeout=0)


def collect_pending(services: ServicePool | QuantumService, ledger: Ledger,
                    options: CollectOptions = CollectOptions()) -> CollectReport:
    """One collection run over the ledger (or ``options.paths``, or only ``options.job_id``):
    see the module.

    Raises:
        CollectorBusy: another collector holds the ledger's lock.
        UsageError: ``job_id`` is in no ledger file given and unknown to the service.
    """
    pool = services if isinstance(services, ServicePool) else ServicePool.of(services)
    ledger.ensure_writable()
    run = _Context(ledger, RunServices(pool), ResultCheck(ledger, options.verify_batch),
                   options, max(1, options.workers))
    try:
        with collector_lock(ledger), call_time_scope():  # QCOURIER_IBM_DEADLINE: per run...
            remove_stale_temp_files([ledger.directory / d for d in TEMP_FILE_DIRS])
            if options.job_id is not None:
                return _collect_job(run, options.job_id)
            return _collect_all(run)
    except Timeout:
        raise CollectorBusy(
            f"another qcollect is already collecting {ledger.directory}; nothing done"
        ) from None


class RunServices:
    """The services of one run: each record's own, the keys found unreachable so far (not
    configured, or their credentials rejected), and one :class:`GatedService` per service."""

    def __init__(self, pool: ServicePool):
        self.pool = pool
        self.unreachable: dict[tuple[str, int | None], str] = {}  # service, key -> why
        self._gated: dict[int, GatedService] = {}
        self._gated_lock = threading.Lock()

    def for_record(self, record: LedgerRecord) -> QuantumService | None:
        """The service and key that submitted ``record``, or None if it cannot be used."""
        where = queue_key(record)
        if where not in self.unreachable:
            try:
                return self.pool.for_record(record)
            except QcourierError as exc:
                self.unreachable[where] = str(exc)
        return None

    def why_unreachable(self, record: RecordView) -> str | None:
        """Why the service of ``record`` cannot be used this run, or None."""
        return self.unreachable.get(queue_key(record))

    def reject(self, record: RecordView, reason: str) -> None:
        """The key of ``record`` was rejected: its other jobs are not asked about this run."""
        self.unreachable[queue_key(record)] = reason

    def gated(self, service: QuantumService) -> GatedService:
        """The run's one :class:`GatedService` for ``service`` (one rate gate per service)."""
        with self._gated_lock:
            gated = self._gated.get(id(service))
            if gated is None:
                gated = self._gated[id(service)] = GatedService(service)
            return gated


@dataclass(frozen=True)
class _Context:
    """What every phase of one run works with; fixed for the run (the state the phases
    change is passed to them and returned)."""

    ledger: Ledger
    services: RunServices
    results: ResultCheck
    options: CollectOptions
    workers: int

    def now(self) -> datetime:
        return self.options.clock()

    def progress(self, message: str) -> None:
        self.options.progress(message)


#: A phase's outcome for one record, and the ledger file the record is in.
Placed = tuple[JobOutcome, Path]
#: A job to poll, and the service to poll it on.
Ready = tuple[Entry, QuantumService]


def _add(report: CollectReport, entries: dict[str, Entry], placed: list[Placed]) -> None:
    """Put outcomes in the report, and their records in the run's current entries."""
    for outcome, path in placed:
        report.outcomes.append(outcome)
        entries[outcome.record.record_id] = Entry.of(outcome.record, path)


def _collect_all(run: _Context) -> CollectReport:
    """The run over the working set: every phase in turn (see the module)."""
    report = CollectReport()
    working = working_set(run.ledger, run.now(), run.options.paths)  # 1. fold
    report.problems = working.problems
    report.already_final = working.final
    report.already_final_completed = working.counts.get(JobStatus.COMPLETED, 0)
    entries = dict(working.entries)
    redone = _download_damaged(run, working)
    report.already_final -= len(redone)
    report.already_final_completed -= len(redone)
    _add(report, entries, redone)
    ours = [e for e in working.entries.values() if _ours_to_collect(run, e)]
    plan = decide.plan_run(ours, {o.record.record_id for o, _ in redone})
    _poll_and_ask(run, report, entries, plan.poll, plan.usage)  # 2-5
    deferred = plan.deferred
    if run.options.resubmit_failed:  # 6.
        retries = _record_retries(run, entries, working.retried)
        entries.update((e.summary.record_id, e) for e in retries)
        deferred = deferred + retries
    _add(report, entries, _drain(run, deferred, entries))  # 7.
    return _close(run, report)


def _collect_job(run: _Context, job_id: str) -> CollectReport:
    """``--job-id``: that job's records only, recorded (found in a full fold) or not."""
    report = CollectReport()
    fold = run.ledger.fold(run.options.paths)
    report.problems = fold.problems
    entries = dict(fold.entries)
    selected = [e for e in entries.values() if e.summary.job_id == job_id]
    if not selected:
        service = run.services.pool.get(run.options.default_service)
        report.unrecorded = poll_unrecorded(service, job_id)
        return report
    to_poll, no_usage = [], []
    for entry in selected:
        status = entry.summary.status
        if status is JobStatus.DEFERRED:
            continue
        if not status.is_final:
            to_poll.append(entry)
        elif (problem := run.results.problem(entry.summary)) is not None:
            _add(report, entries, [_download_again(run, entry, problem)])
        else:
            report.already_final += 1
            report.already_final_completed += status is JobStatus.COMPLETED
            if usage_pending(entry.summary):
                no_usage.append(entry)
    _poll_and_ask(run, report, entries, to_poll, no_usage)
    return _close(run, report)


def _poll_and_ask(run: _Context, report: CollectReport, entries: dict[str, Entry],
                  to_poll: list[Entry], no_usage: list[Entry]) -> None:
    """Phases 2-5: settle intents, list states, poll, and ask for pending usage."""
    ready, settled, skipped = _settle_intents(run, to_poll)
    report.skipped += skipped
    _add(report, entries, settled)
    known = _list_states(run, ready)
    _add(report, entries, _poll(run, ready, known))
    for outcome, path in _ask_usage(run, no_usage):
        report.usage.append(outcome)
        if outcome.recorded:
            entries[outcome.record.record_id] = Entry.of(outcome.record, path)


def _close(run: _Context, report: CollectReport) -> CollectReport:
    if report.newly_final:
        report.collected_path = _write_collected(run.ledger, report.newly_final, run.now())
    run.results.save()
    return report


# -- 1. fold: results to download again ------------------------------------------------------


def _download_damaged(run: _Context, working: WorkingSet) -> list[Placed]:
    """Download again the results of the completed records whose file is missing or damaged
    (this run's re-hashed batch, and every missing file)."""
    return [_download_again(run, entry, problem) for entry, problem in run.results.scan(working)
            if _ours_to_collect(run, entry)]  # (another machine's result: its pull brings it)


def _ours_to_collect(run: _Context, entry: Entry) -> bool:
    """Whether this run takes up ``entry``: always if this machine wrote it; if another
    machine of the team did (pulled from the store), only a job submitted there (pending, or
    final with its usage unknown) whose service and key are configured here. Submitting
    (deferred jobs, retries) and settling intents stay with the machine that wrote the
    record, so that one record never becomes two jobs."""
    if not ledger_mod.is_pulled(entry.path):
        return True
    summary = entry.summary
    if summary.status in (JobStatus.DEFERRED, JobStatus.SUBMITTING) or not summary.job_id:
        return False
    try:
        run.services.pool.for_record(summary)
    except QcourierError:
        return False  # not configured here: left to a machine that has the key
    return True


def _download_again(run: _Context, entry: Entry, problem: str) -> Placed:
    """Download a completed record's result again: its file is missing or damaged."""
    record = entry.record
    service = run.services.for_record(record)
    if service is None:
        return _not_reachable(run, entry)
    run.progress(f"downloading the result of {record.job_id} again ({problem})")
    try:
        outcome = _finish(run, service, entry, JobStatusReport(_job_id(record), JobState.DONE))
        outcome.message = f"result downloaded again: {problem}"
    except ServiceError as exc:
        outcome = JobOutcome(record, None, False, f"not collected: {exc}", failed=True)
    return outcome, entry.path


def _not_reachable(run: _Context, entry: Entry) -> Placed:
    reason = run.services.why_unreachable(entry.summary)
    return JobOutcome(entry.record, None, False, reason, failed=True), entry.path


def _job_id(record: LedgerRecord) -> str:
    if record.job_id is None:
        raise QcourierError(f"record {record.record_id} has no job id to poll")
    return record.job_id


# -- 2. settle intents -----------------------------------------------------------------------


def _settle_intents(run: _Context, entries: list[Entry]
                    ) -> tuple[list[Ready], list[Placed], list[str]]:
    """Each entry's service, with an intent settled first.

    Returns:
        the jobs to poll and their services; the outcomes of the entries that need no poll
        (an intent not settled or just failed, a service that cannot be used); and why
        records were skipped (no job id).
    """
    ready: list[Ready] = []
    placed: list[Placed] = []
    skipped: list[str] = []
    for entry in entries:
        record = entry.record
        if record.status is not JobStatus.SUBMITTING and record.job_id is None:
            skipped.append(f"record {record.record_id} has no job id")
            continue
        service = run.services.for_record(record)
        if service is None:
            placed.append(_not_reachable(run, entry))
            continue
        if record.status is JobStatus.SUBMITTING:
            settled = _settle_intent(run, service, entry)
            if isinstance(settled, tuple):
                placed.append(settled)
                continue
            entry = settled
        ready.append((entry, service))
    return ready, placed, skipped


def _settle_intent(run: _Context, service: QuantumService, entry: Entry) -> Entry | Placed:
    """The entry of an intent's job, or the outcome of an intent that has none (yet)."""
    record = entry.record
    try:
        settled = resolve_intent(service, entry.path, record, run.options.policy, run.now())
    except ServiceError as exc:
        return JobOutcome(record, None, False, f"intent not settled: {exc}", failed=True), entry.path
    if settled is None:
        return JobOutcome(record, None, False, "intent waiting for its job"), entry.path
    if settled.status is JobStatus.SUBMIT_FAILED:
        return JobOutcome(settled, None, True, settled.error), entry.path
    return Entry.of(settled, entry.path)


# -- 3. list states --------------------------------------------------------------------------


def _list_states(run: _Context, ready: list[Ready]) -> dict[str, JobStatusReport]:
    """What each service can tell of its jobs in a listing (nothing, if it cannot)."""
    groups: dict[int, tuple[QuantumService, list[LedgerRecord]]] = {}
    for entry, service in ready:
        groups.setdefault(id(service), (service, []))[1].append(entry.record)
    known: dict[str, JobStatusReport] = {}
    for service, records in groups.values():
        if len(records) < 2:
            continue  # one job: its own status call is as cheap as a listing
        ids = [r.job_id for r in records if r.job_id]
        run.progress(f"listing the states of {len(ids)} jobs on {service.name}")
        try:
            known.update(run.services.gated(service).job_states(
                ids, decide.listing_start(records)))
        except ServiceError:
            pass  # each job is asked about on its own instead
    return known


# -- 4. poll ---------------------------------------------------------------------------------


def _poll(run: _Context, ready: list[Ready], known: dict[str, JobStatusReport]) -> list[Placed]:
    """Poll every job whose state the listing did not settle, and collect finished ones.

    A job still queued or running in the listing needs nothing more. The others (finished,
    or not in the listing) are polled, and finished ones collected, on a bounded pool of
    workers. Every call to a service waits behind that service's rate gate, which a 429
    closes for all workers at once. Ledger lines are appended one whole line at a time under
    the ledger's lock, from whichever worker finished the job.

    Returns:
        the outcomes in ledger order, however the jobs finished.
    """
    todo: list[tuple[int, Entry, QuantumService, JobStatusReport | None]] = []
    finished: dict[int, JobOutcome] = {}
    for position, (entry, service) in enumerate(ready):
        state = known.get(entry.record.job_id or "")
        if state is not None and not state.state.is_final:
            finished[position] = _poll_one(run, service, entry, state)
        else:
            todo.append((position, entry, service, state))
    if todo:
        run.progress(f"polling {len(todo)} job(s); finished ones are downloaded, "
                     "checked and analysed")
    for count, (item, outcome) in enumerate(
            map_unordered(lambda job: _poll_job(run, job), todo, run.workers), start=1):
        if isinstance(outcome, BaseException):
            raise outcome  # not a service failure (those are outcomes): a bug, or Ctrl-C
        run.progress(f"{count}/{len(todo)} job(s) polled (last: {item[1].record.job_id})")
        if outcome.rejected_credentials:
            run.services.reject(outcome.record, outcome.message or "rejected")
        finished[item[0]] = outcome
    return [(finished[position], ready[position][0].path) for position in sorted(finished)]


def _poll_job(run: _Context, item: tuple[int, Entry, QuantumService, JobStatusReport | None]
              ) -> JobOutcome:
    """One job, on a worker: its state if not known, then its result if finished."""
    _, entry, service, state = item
    reason = run.services.why_unreachable(entry.summary)
    if reason is not None:  # its key was rejected while this job waited for a worker
        return JobOutcome(entry.record, None, False, reason, failed=True)
    with call_time_scope():  # ...and per job
        return _poll_one(run, run.services.gated(service), entry, state)


def _poll_one(run: _Context, service: QuantumService | GatedService, entry: Entry,
              status: JobStatusReport | None = None) -> JobOutcome:
    """Poll one job (unless its ``status`` is known) and record what changed."""
    record = entry.record
    job_id = _job_id(record)
    try:
        check_job_id(job_id, f"ledger file {entry.path.name}")
    except InvalidJobIdError as exc:  # never put in a URL or a file name
        return _record_not_found(run, entry, str(exc))
    try:
        status = status or service.job_status(job_id)
    except JobNotFoundError as exc:
        return _record_not_found(run, entry, f"not found: {exc}")
    except ServiceError as exc:  # unreachable or rejected: poll again next time
        return JobOutcome(record, None, False, f"not polled: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError), failed=True)
    try:
        if decide.STATUS_FOR_STATE[status.state] is JobStatus.COMPLETED:
            return _finish(run, service, entry, status)
        metrics = service.job_metrics(job_id) if decide.needs_metrics(status) else None
    except ServiceError as exc:  # the result or metrics could not be fetched this time
        return JobOutcome(record, None, False, f"not collected: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError), failed=True)
    updated = decide.observed(record, status, metrics, run.now())
    if updated is None:
        return JobOutcome(record, status.state, False)
    ledger_mod.append(entry.path, updated)
    return JobOutcome(updated, status.state, True, updated.error)


def _record_not_found(run: _Context, entry: Entry, reason: str) -> JobOutcome:
    updated = decide.not_found(entry.record, reason, run.now())
    if updated is not None:
        ledger_mod.append(entry.path, updated)
    return JobOutcome(updated or entry.record, None, updated is not None, reason, failed=True)


def _finish(run: _Context, service: QuantumService | GatedService, entry: Entry,
            status: JobStatusReport) -> JobOutcome:
    """Download, write and analyse a finished job's result; record it."""
    record = entry.record
    job_id = _job_id(record)
    result = service.job_result(job_id)
    metrics = service.job_metrics(job_id)
    analysis, analysis_error = analyse(run.ledger, record, result.counts)
    payload = result_payload(record, result, analysis, analysis_error, run.now())
    target = path_under(run.ledger.results_dir, check_job_id(job_id, "the ledger"), ".json")
    sha = run.results.write(target, json.dumps(payload, indent=1).encode())
    updated = decide.completed(record, result.shots, metrics, now=run.now(),
                               result_path=(Path("jobs") / target.name).as_posix(),
                               result_sha256=sha)
    ledger_mod.append(entry.path, updated)
    message = updated.error or (f"analysis failed: {analysis_error}" if analysis_error
                                else headline(record.experiment_type, analysis))
    return JobOutcome(updated, status.state, True, message, analysis)


#: The record's fields a result file repeats (docs/JSON.md).
RESULT_FILE_FIELDS = ("job_id", "record_id", "experiment_type", "service", "backend", "shots",
                      "circuit_hash", "isa_circuit_hash", "metadata")
#: The record's fields a ``collected_results_*.json`` lists of each job it collected.
COLLECTED_FIELDS = ("job_id", "record_id", "experiment_type", "logical_state", "backend",
                    "service", "status", "error", "result_path", "result_sha256",
                    "usage_seconds", "queue_seconds")


def result_payload(record: LedgerRecord, result: JobResult, analysis: dict[str, Any] | None,
                   analysis_error: str | None, now: datetime) -> dict[str, Any]:
    """What a result file ``jobs/<job_id>.json`` holds (docs/JSON.md)."""
    return {
        **record.as_json(RESULT_FILE_FIELDS),
        "service_metadata": result.metadata,
        "counts": result.counts,
        "analysis": analysis,
        "analysis_error": analysis_error,
        "collected_at": now.isoformat(),
    }


# -- 5. usage --------------------------------------------------------------------------------


def _ask_usage(run: _Context, entries: list[Entry]) -> list[tuple[UsageOutcome, Path]]:
    """Ask again for the usage of final jobs recorded without it (see the module, phase 5),
    those :func:`decide.usage_due` picks, on the run's workers and rate gates. Nothing here
    fails the run: a job whose service cannot answer now keeps its estimate in the guard and
    is asked again next time."""
    found: list[tuple[UsageOutcome, Path]] = []
    jobs = []
    for entry in decide.usage_due(entries, run.now()):
        service = run.services.for_record(entry.record)
        if service is None:
            why = run.services.why_unreachable(entry.summary)
            found.append((UsageOutcome(entry.record, False, f"usage not asked: {why}"),
                          entry.path))
        else:
            jobs.append((entry, service))
    if jobs:
        run.progress(f"asking for the usage of {len(jobs)} finished job(s) whose figure "
                     "was pending")
    for (entry, _), outcome in map_unordered(lambda job: _usage_of(run, job), jobs, run.workers):
        if isinstance(outcome, BaseException):
            raise outcome  # not a service failure (those are outcomes): a bug, or Ctrl-C
        found.append((outcome, entry.path))
    return found


def _usage_of(run: _Context, item: tuple[Entry, QuantumService]) -> UsageOutcome:
    """One job's usage, on a worker: a ledger line if the figure has arrived."""
    entry, service = item
    record = entry.record
    job_id = _job_id(record)
    try:
        with call_time_scope():
            check_job_id(job_id, f"ledger file {entry.path.name}")
            metrics = run.services.gated(service).job_metrics(job_id)
    except ServiceError as exc:
        return UsageOutcome(record, False, f"usage not fetched ({exc}); the budget counts "
                            "its estimate until a later run gets the figure")
    updated = decide.with_usage(record, metrics, run.now())
    if updated is None:
        return UsageOutcome(record, False, "usage still pending at the service; the budget "
                            "counts its estimate meanwhile")
    ledger_mod.append(entry.path, updated)
    estimate = ("" if record.estimated_qpu_seconds is None
                else f" (estimated {record.estimated_qpu_seconds:.1f} s)")
    return UsageOutcome(updated, True, f"usage recorded: {metrics.usage_seconds:.1f} s of "
                        f"QPU time{estimate}")


# -- 6. retries ------------------------------------------------------------------------------


def _record_retries(run: _Context, entries: dict[str, Entry], retried: set[str]) -> list[Entry]:
    """Record a deferred retry of each record :func:`decide.retries_due` picks; return their
    entries."""
    retries = []
    mine = [e for e in entries.values() if not ledger_mod.is_pulled(e.path)]  # theirs: theirs
    for entry in decide.retries_due(mine, retried, run.options.max_retries):
        retry = decide.retry_of(entry.record, new_record_id(), run.now())
        ledger_mod.append(entry.path, retry)
        retries.append(Entry.of(retry, entry.path))
    return retries


# -- 7. drain the deferred queue -------------------------------------------------------------


def _drain(run: _Context, deferred: list[Entry], entries: dict[str, Entry]) -> list[Placed]:
    """Submit deferred jobs, oldest first, while their key has room.

    Each one is decided and submitted in its key's section (its lock, and with a team
    store its budget lease) on a fresh working set, as ``qsubmit`` does, so a ``qsubmit``
    running meanwhile, here or on another machine, cannot overspend against this run.
    """
    current = dict(entries)
    placed: list[Placed] = []
    for entry in deferred:
        record = current[entry.summary.record_id].record
        service = run.services.for_record(record)
        outcome: Placed | None
        if service is None:
            outcome = _not_reachable(run, entry)
        else:
            try:
                with spending_section(run.ledger, record.service, record.api_key_index,
                                      team=run.options.team, wait=False) as spending:
                    current.update(working_set(run.ledger, run.now()).entries)
                    outcome = _drain_one(run, service, current[record.record_id], current,
                                         spending)
            except KeyBusy:
                outcome = (JobOutcome(record, None, False, "deferred: another process is "
                                      "submitting for this key"), entry.path)
            except StoreError as exc:  # the lease is another's, or the store is away
                outcome = JobOutcome(record, None, False, f"deferred: {exc}"), entry.path
        if outcome is not None:
            placed.append(outcome)
            current[outcome[0].record.record_id] = Entry.of(outcome[0].record, outcome[1])
    return placed


def _drain_one(run: _Context, service: QuantumService, entry: Entry,
               entries: dict[str, Entry], spending: Spending) -> Placed | None:
    """Submit one deferred job if its key has room and ``admit`` lets it (under its lock)."""
    record = entry.record
    if record.status is not JobStatus.DEFERRED:
        return None
    summaries: list[RecordView] = [e.summary for e in entries.values()]
    reason = (decide.deferral_reason(record, summaries, run.options.policy, run.now())
              or run.options.admit(record, summaries))
    if reason:
        return JobOutcome(record, None, False, f"deferred: {reason}"), entry.path
    run.progress(f"submitting deferred {record.experiment_type} job")
    spending.confirm()  # LeaseLost: the job stays deferred
    try:
        submitted = submit_record(service, entry.path, record, load_circuits(run.ledger, record),
                                  run.options.clock)
    except ServiceError as exc:
        latest = run.ledger.fold([entry.path]).entries[record.record_id].record
        return (JobOutcome(latest, None, True, f"submission failed: {exc}", failed=True),
                entry.path)
    return JobOutcome(submitted, JobState.QUEUED, True, "submitted (was deferred)"), entry.path


#: The retries of a service that does not retry its own calls (the local service, whose
#: ``QCOURIER_LOCAL_RATE_LIMIT`` answers 429 with a ``retry_after``): 429s only (any other
#: failure is polled again next time), for as long as :data:`RATE_LIMIT_DEADLINE_SECONDS`
#: per job allows: threads sharing a limit can lose the race for a freed slot many times.
RATE_LIMIT_POLICY = RetryPolicy(attempts=None, backoff_seconds=0.5, max_wait_seconds=60.0,
                                jitter_seconds=0.02, statuses=frozenset({429}))
RATE_LIMIT_DEADLINE_SECONDS = 120.0


class GatedService:
    """The service calls a collection makes, each through exactly one retry loop.

    A service that retries its own calls (``retries_calls``: the IBM adapter, which knows the
    HTTP status and ``Retry-After``, with its own rate gate) is called as it is. Any other is
    retried here by :func:`~qcourier.services.workers.retry_call` with :data:`RATE_LIMIT_POLICY`,
    behind one :class:`RateGate` for the service, so every worker waits out a 429's
    ``Retry-After`` together. Inside a :func:`call_time_scope` (one job), the job's calls
    share :data:`RATE_LIMIT_DEADLINE_SECONDS`.
    """

    def __init__(self, service: QuantumService):
        self.service = service
        self.name = service.name
        self._gate = None if service.retries_calls else RateGate()

    def job_status(self, job_id: str) -> JobStatusReport:
        return self._call(f"status of job {job_id}", self.service.job_status, job_id)

    def job_states(self, job_ids: list[str], created_after: Any = None
                   ) -> dict[str, JobStatusReport]:
        return self._call(f"states of {len(job_ids)} jobs", self.service.job_states, job_ids,
                          created_after)

    def job_result(self, job_id: str) -> JobResult:
        return self._call(f"result of job {job_id}", self.service.job_result, job_id)

    def job_metrics(self, job_id: str) -> JobMetrics:
        return self._call(f"metrics of job {job_id}", self.service.job_metrics, job_id)

    def _call(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        if self._gate is None:  # the service's own loop retries it
            return method(*args)
        seconds = RATE_LIMIT_DEADLINE_SECONDS
        budget = scoped_call_time(self, seconds, CallTime(seconds))
        return retry_call(
            lambda _: method(*args), what=f"{self.name} service: {what}",
            policy=RATE_LIMIT_POLICY, gate=self._gate, budget=budget,
            deadline_error=lambda last: last or DeadlineExceededError(
                f"{self.name} service: gave up on {what} after {seconds:g} s of rate limiting"))


def _write_collected(ledger: Ledger, outcomes: list[JobOutcome], now: datetime) -> Path:
    stamp = now.strftime("%Y%m%d_%H%M%S")
    items = [{**o.record.as_json(COLLECTED_FIELDS), "analysis": o.analysis} for o in outcomes]
    body = json.dumps({"collected_at": now.isoformat(), "jobs": items}, indent=1).encode()
    try:
        return create_timestamped(ledger.directory, "collected_results", ".json", stamp, body)
    except OSError as exc:
        raise QcourierError(f"cannot write the collected results in {ledger.directory}: "
                            f"{exc.strerror or exc}") from None


def poll_unrecorded(service: QuantumService, job_id: str) -> JobStatusReport:
    """The status of a job the ledger does not know (``qcollect --job-id``).

    Raises:
        UsageError: the service does not know it either.
    """
    try:
        return service.job_status(job_id)
    except JobNotFoundError as exc:
        raise UsageError(str(exc)) from None
