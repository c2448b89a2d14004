"""Collection: settle intents, poll pending jobs, fetch and analyse finished ones, record
what changed, and submit deferred jobs as the queue frees up.

One ``collect_pending`` run:

1. takes the ledger's working set (:mod:`qcourier.ledger.working`: the records that are not
   final or may still count, and how many there are of each status; never every record);
   a completed record whose result file is missing or no longer matches its sha256 gets
   its result downloaded again (:class:`~qcourier.ledger.results.ResultCheck`);
2. settles ``submitting`` intents left by a process that died (``dispatch.resolve_intent``);
3. polls every pending job with the service and key that submitted it; a finished job gets
   its result file (written atomically) and a new ledger line; a job with fewer shots than
   asked is ``partial``; a failed job keeps the service's message and a failure class;
4. with ``resubmit_failed``, records retries of failed jobs whose failure was the system's
   (and of partial ones), linked by ``retry_of``/``retry_count``, as ``deferred``;
5. asks again for the usage of final jobs recorded while the service still reported it
   pending (finished in the budget window, the newest :data:`USAGE_BATCH` first); a figure
   that has arrived is a new ledger line, and until then the budget guard counts the job's
   estimate. A failed call changes nothing and is tried again on the next run;
6. submits ``deferred`` jobs while their key has free pending slots, submissions left this
   minute, and (through ``admit``) budget.

It appends nothing for a job whose state did not change, so running it again changes
nothing. Only one collector runs on a ledger at a time.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from qcourier.accounting.budget import finished_in_window, usage_pending
from qcourier.errors import QcourierError, UsageError
from qcourier.files import (
    atomic_write_bytes,
    create_timestamped,
    path_under,
    remove_stale_temp_files,
)
from qcourier.ledger import store as ledger_mod
from qcourier.ledger.results import ResultCheck
from qcourier.ledger.status import JobStatus, new_record_id, utc_now
from qcourier.ledger.store import Ledger
from qcourier.ledger.summary import Entry, LedgerProblem
from qcourier.ledger.working import may_be_retried, working_set
from qcourier.provenance import load_snapshot
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
    CPU_LOCK,
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
    open_slots,
    queue_key,
    resolve_intent,
    submit_record,
)
from qcourier.submit.section import KeyBusy, Spending, spending_section

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.summary import RecordView
    from qcourier.store.lease import TeamLease

STATUS_FOR_STATE = {
    JobState.INITIALIZING: JobStatus.QUEUED,
    JobState.QUEUED: JobStatus.QUEUED,
    JobState.RUNNING: JobStatus.RUNNING,
    JobState.DONE: JobStatus.COMPLETED,
    JobState.CANCELLED: JobStatus.CANCELLED,
    JobState.ERROR: JobStatus.FAILED,
}

Progress = Callable[[str], None]
#: How long before the oldest recorded submission a listing of job states starts.
LISTING_MARGIN = timedelta(hours=1)
#: Completed results re-hashed per run, in turns (see :class:`ResultCheck`).
RESULT_CHECK_BATCH = 100
#: Final jobs whose usage is still unknown asked about per run (newest finished first).
USAGE_BATCH = 20
#: Given a deferred record and the current records, a reason not to submit it now, or None.
Admit = Callable[["LedgerRecord", list["RecordView"]], str | None]


class CollectorBusy(QcourierError):
    """Another collector is working on this ledger."""

    exit_code = 0


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


#: Where atomic writes happen in a ledger directory (a killed writer's temp files are removed).
#: ``jobs/`` is not listed here: the result check lists it when it changed (it may hold
#: 100,000 files), and removes them then (:class:`ResultCheck`).
TEMP_FILE_DIRS = (".", "circuits", "snapshots", "cache", "cache/index", "cache/transpiled")


def collector_lock(ledger: Ledger) -> FileLock:
    """The lock only one collector at a time may hold on a ledger."""
    return FileLock(str(ledger.directory / ".qcollect.lock"), timeout=0)


def collect_pending(
    services: ServicePool | QuantumService,
    ledger: Ledger,
    *,
    paths: list[Path] | None = None,
    job_id: str | None = None,
    default_service: str = "local",
    policy: QueuePolicy = QueuePolicy(),
    resubmit_failed: bool = False,
    max_retries: int = 3,
    admit: Admit | None = None,
    verify_batch: int | None = RESULT_CHECK_BATCH,
    workers: int = DEFAULT_WORKERS,
    progress: Progress = lambda _: None,
    team: TeamLease | None = None,
) -> CollectReport:
    """One collection run over the ledger (or ``paths``, or only ``job_id``): see the module.

    Args:
        default_service: the service asked about a ``job_id`` that no ledger file knows.
        policy: the pending cap, rate and intent grace period per key.
        resubmit_failed: retry failed jobs whose failure was the system's, and partial ones.
        max_retries: how many retries one original job may have.
        admit: a last check before a deferred job is submitted (the budget guard).
        verify_batch: how many completed results to re-hash this run (``None``: all); every
            result file's existence is checked on every run (:class:`ResultCheck`).
        workers: how many jobs are polled and collected at once.
        team: the team store's budget leases, which the drain of deferred jobs takes as
            ``qsubmit`` does (None: the key's lock alone).

    Raises:
        CollectorBusy: another collector holds the ledger's lock.
        UsageError: ``job_id`` is in no ledger file given and unknown to the service.
    """
    pool = services if isinstance(services, ServicePool) else ServicePool.of(services)
    ledger.ensure_writable()
    run = _Run(pool, ledger, policy, admit or (lambda _r, _all: None), progress,
               ResultCheck(ledger, verify_batch), max(1, workers), team)
    try:
        with collector_lock(ledger), call_time_scope():  # QCOURIER_IBM_DEADLINE: per run...
            remove_stale_temp_files([ledger.directory / d for d in TEMP_FILE_DIRS])
            return run.collect(paths, job_id, default_service, resubmit_failed, max_retries)
    except Timeout:
        raise CollectorBusy(
            f"another qcollect is already collecting {ledger.directory}; nothing done"
        ) from None


class _Run:
    """The state of one collection run: the records as they are now, and the services."""

    def __init__(self, pool: ServicePool, ledger: Ledger, policy: QueuePolicy, admit: Admit,
                 progress: Progress, results: ResultCheck, workers: int,
                 team: TeamLease | None = None):
        self.pool = pool
        self.ledger = ledger
        self.policy = policy
        self.admit = admit
        self.progress = progress
        self.report = CollectReport()
        self.results = results
        self.workers = workers
        self._gated: dict[int, GatedService] = {}
        self._gated_lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.retried: set[str] = set()  # record ids some record retries
        self.unreachable: dict[tuple[str, int | None], str] = {}  # service, key -> why
        self.team = team

    def collect(self, paths: list[Path] | None, job_id: str | None, default_service: str,
                resubmit_failed: bool, max_retries: int) -> CollectReport:
        if job_id is not None:
            return self._collect_job(paths, job_id, default_service)
        # Only what is not final, or may still count (the working set): never every record.
        working = working_set(self.ledger, utc_now(), paths)
        self.report.problems = working.problems
        self.entries = dict(working.entries)
        self.retried = set(working.retried)
        self.report.already_final = working.final
        self.report.already_final_completed = working.counts.get(JobStatus.COMPLETED, 0)
        redone = set()
        for entry, problem in self.results.scan(working):
            if ledger_mod.is_pulled(entry.path) and not self._collects_theirs(entry):
                continue  # another machine's result, not in the store yet: its pull brings it
            self.report.already_final -= 1
            self.report.already_final_completed -= 1
            redone.add(entry.summary.record_id)
            self._download_again(entry, problem)
        deferred, open_, no_usage = [], [], []
        for entry in working.entries.values():
            status = entry.summary.status
            if ledger_mod.is_pulled(entry.path) and not self._collects_theirs(entry):
                continue
            if status is JobStatus.DEFERRED:
                deferred.append(entry)
            elif status.is_final:
                if entry.summary.record_id not in redone and usage_pending(entry.summary):
                    no_usage.append(entry)
            else:
                open_.append(entry)
        self._poll(open_)
        self._ask_usage(no_usage)
        if resubmit_failed:
            deferred += self._plan_retries(max_retries)
        self._drain(deferred)
        return self._close()

    def _collects_theirs(self, entry: Entry) -> bool:
        """Whether this run takes up a record another machine of the team wrote (pulled from
        the store): a job submitted there, pending, or final with its usage unknown, when
        its service and key are configured here. Submitting (deferred jobs, retries) and
        settling intents stay with the machine that wrote the record, so that one record
        never becomes two jobs."""
        status = entry.summary.status
        if status in (JobStatus.DEFERRED, JobStatus.SUBMITTING) or not entry.summary.job_id:
            return False
        try:
            self.pool.for_record(entry.summary)
        except QcourierError:
            return False  # not configured here: left to a machine that has the key
        return True

    def _collect_job(self, paths: list[Path] | None, job_id: str,
                     default_service: str) -> CollectReport:
        """``--job-id``: that job's records only, recorded (found in a full fold) or not."""
        fold = self.ledger.fold(paths)
        self.report.problems = fold.problems
        self.entries = dict(fold.entries)
        selected = [e for e in self.entries.values() if e.summary.job_id == job_id]
        if not selected:
            self.report.unrecorded = poll_unrecorded(self.pool.get(default_service), job_id)
            return self.report
        open_, no_usage = [], []
        for entry in selected:
            status = entry.summary.status
            if status is JobStatus.DEFERRED:
                continue
            if status.is_final:
                if self._check_final(entry) and usage_pending(entry.summary):
                    no_usage.append(entry)
            else:
                open_.append(entry)
        self._poll(open_)
        self._ask_usage(no_usage)
        return self._close()

    def _close(self) -> CollectReport:
        if self.report.newly_final:
            self.report.collected_path = _write_collected(self.ledger, self.report.newly_final)
        self.results.save()
        return self.report

    def _outcome(self, outcome: JobOutcome, path: Path) -> None:
        self.report.outcomes.append(outcome)
        self.entries[outcome.record.record_id] = Entry.of(outcome.record, path)

    def _service(self, record: LedgerRecord) -> QuantumService | None:
        where = queue_key(record)
        if where not in self.unreachable:
            try:
                return self.pool.for_record(record)
            except QcourierError as exc:
                self.unreachable[where] = str(exc)
        return None

    def _not_reachable(self, entry: Entry) -> None:
        reason = self.unreachable[queue_key(entry.record)]
        self._outcome(JobOutcome(entry.record, None, False, reason, failed=True), entry.path)

    def _check_final(self, entry: Entry) -> bool:
        """Count a final record; download a completed one's result again if its file is bad.

        Returns whether the record was only counted (nothing was downloaded).
        """
        problem = self.results.problem(entry.summary)
        if problem is None:
            self.report.already_final += 1
            self.report.already_final_completed += entry.summary.status is JobStatus.COMPLETED
            return True
        self._download_again(entry, problem)
        return False

    def _download_again(self, entry: Entry, problem: str) -> None:
        """Download a completed record's result again: its file is missing or damaged."""
        record = entry.record
        service = self._service(record)
        if service is None:
            self._not_reachable(entry)
            return
        self.progress(f"downloading the result of {record.job_id} again ({problem})")
        try:
            outcome = _finish(service, self.ledger, entry,
                              JobStatusReport(str(record.job_id), JobState.DONE), self.results)
            outcome.message = f"result downloaded again: {problem}"
        except ServiceError as exc:
            outcome = JobOutcome(record, None, False, f"not collected: {exc}", failed=True)
        self._outcome(outcome, entry.path)

    def _ask_usage(self, entries: list[Entry]) -> None:
        """Ask again for the usage of final jobs recorded without it (see the module, step 5).

        Only jobs that finished in the budget window count against a budget, so only those
        are asked about, the most recently finished first (their figure is the likeliest to
        have arrived), at most :data:`USAGE_BATCH` per run, on the run's workers and rate
        gates. Nothing here fails the run: a job whose service cannot answer now keeps its
        estimate in the guard and is asked again next time.
        """
        now = utc_now()
        due = sorted((e for e in entries
                      if e.summary.job_id and finished_in_window(e.summary, now)),
                     key=lambda e: e.summary.completion_time or e.summary.updated_at,
                     reverse=True)[:USAGE_BATCH]
        jobs = []
        for entry in due:
            where = queue_key(entry.summary)
            service = self._service(entry.record)
            if service is None:
                self.report.usage.append(UsageOutcome(
                    entry.record, False, f"usage not asked: {self.unreachable[where]}"))
            else:
                jobs.append((entry, service))
        if jobs:
            self.progress(f"asking for the usage of {len(jobs)} finished job(s) whose figure "
                          "was pending")
        for (entry, _), outcome in map_unordered(self._usage_of, jobs, self.workers):
            if isinstance(outcome, BaseException):
                raise outcome  # not a service failure (those are outcomes): a bug, or Ctrl-C
            self.report.usage.append(outcome)
            if outcome.recorded:
                self.entries[outcome.record.record_id] = Entry.of(outcome.record, entry.path)

    def _usage_of(self, item: tuple[Entry, QuantumService]) -> UsageOutcome:
        """One job's usage, on a worker: a ledger line if the figure has arrived."""
        entry, service = item
        record = entry.record
        if record.job_id is None:
            raise QcourierError(f"record {record.record_id} has no job id to poll")
        try:
            with call_time_scope():
                job_id = check_job_id(record.job_id, f"ledger file {entry.path.name}")
                metrics = self._gated_service(service).job_metrics(job_id)
        except ServiceError as exc:
            return UsageOutcome(record, False, f"usage not fetched ({exc}); the budget counts "
                                "its estimate until a later run gets the figure")
        if metrics.usage_seconds is None:
            return UsageOutcome(record, False, "usage still pending at the service; the budget "
                                "counts its estimate meanwhile")
        updated = record.evolve(
            usage_seconds=metrics.usage_seconds,
            queue_seconds=(record.queue_seconds if record.queue_seconds is not None
                           else metrics.queue_seconds))
        ledger_mod.append(entry.path, updated)
        estimate = ("" if record.estimated_qpu_seconds is None
                    else f" (estimated {record.estimated_qpu_seconds:.1f} s)")
        return UsageOutcome(updated, True, f"usage recorded: {metrics.usage_seconds:.1f} s of "
                            f"QPU time{estimate}")

    def _poll(self, entries: list[Entry]) -> None:
        """Settle intents, then poll every job.

        States come in bulk where the service can list them (one call for many jobs); a job
        still queued or running needs nothing more. The others (finished, or not in the
        listing) are polled, and finished ones collected, on a bounded pool of workers.
        Every call to a service waits behind that service's rate gate, which a 429 closes
        for all workers at once. Ledger lines are appended one whole line at a time under
        the ledger's lock, from whichever worker finished the job.
        """
        jobs = [job for job in map(self._ready, entries) if job is not None]
        known = self._bulk_states(jobs)
        todo: list[tuple[int, Entry, QuantumService, JobStatusReport | None]] = []
        finished: dict[int, JobOutcome] = {}
        for position, (entry, service) in enumerate(jobs):
            state = known.get(entry.record.job_id or "")
            if state is not None and not state.state.is_final:
                finished[position] = _poll_one(service, self.ledger, entry, state)
            else:
                todo.append((position, entry, service, state))
        if todo:
            self.progress(f"polling {len(todo)} job(s); finished ones are downloaded, "
                          "checked and analysed")
        for count, (item, outcome) in enumerate(
                map_unordered(self._poll_job, todo, self.workers), start=1):
            if isinstance(outcome, BaseException):
                raise outcome  # not a service failure (those are outcomes): a bug, or Ctrl-C
            self.progress(f"{count}/{len(todo)} job(s) polled (last: {item[1].record.job_id})")
            if outcome.rejected_credentials:
                self.unreachable[queue_key(outcome.record)] = outcome.message or "rejected"
            finished[item[0]] = outcome
        for position in sorted(finished):  # report in ledger order, however they finished
            self._outcome(finished[position], jobs[position][0].path)

    def _ready(self, entry: Entry) -> tuple[Entry, QuantumService] | None:
        """The entry of a job to poll and its service, with an intent settled first; or
        None when there is nothing to poll (the outcome is recorded)."""
        record = entry.record
        if record.status is not JobStatus.SUBMITTING and record.job_id is None:
            self.report.skipped.append(f"record {record.record_id} has no job id")
            return None
        service = self._service(record)
        if service is None:
            self._not_reachable(entry)
            return None
        if record.status is JobStatus.SUBMITTING:
            try:
                settled = resolve_intent(service, entry.path, record, self.policy, utc_now())
            except ServiceError as exc:
                self._outcome(JobOutcome(record, None, False, f"intent not settled: {exc}",
                                         failed=True), entry.path)
                return None
            if settled is None:
                self._outcome(JobOutcome(record, None, False, "intent waiting for its job"),
                              entry.path)
                return None
            entry = Entry.of(settled, entry.path)
            if settled.status is JobStatus.SUBMIT_FAILED:
                self._outcome(JobOutcome(settled, None, True, settled.error), entry.path)
                return None
        return entry, service

    def _bulk_states(self, jobs: list[tuple[Entry, QuantumService]]) -> dict[str, JobStatusReport]:
        """What each service can tell of its jobs in a listing (nothing, if it cannot)."""
        groups: dict[int, tuple[QuantumService, list[LedgerRecord]]] = {}
        for entry, service in jobs:
            groups.setdefault(id(service), (service, []))[1].append(entry.record)
        known: dict[str, JobStatusReport] = {}
        for service, records in groups.values():
            if len(records) < 2:
                continue  # one job: its own status call is as cheap as a listing
            times = [r.submission_time for r in records if r.submission_time is not None]
            # Clocks differ: ask from an hour before the oldest submission we recorded.
            after = min(times) - LISTING_MARGIN if len(times) == len(records) else None
            ids = [r.job_id for r in records if r.job_id]
            self.progress(f"listing the states of {len(ids)} jobs on {service.name}")
            try:
                known.update(self._gated_service(service).job_states(ids, after))
            except ServiceError:
                pass  # each job is asked about on its own instead
        return known

    def _poll_job(self, item: tuple[int, Entry, QuantumService, JobStatusReport | None]
                  ) -> JobOutcome:
        """One job, on a worker: its state if not known, then its result if finished."""
        _, entry, service, state = item
        reason = self.unreachable.get(queue_key(entry.record))
        if reason is not None:  # its key was rejected while this job waited for a worker
            return JobOutcome(entry.record, None, False, reason, failed=True)
        with call_time_scope():  # ...and per job
            return _poll_one(self._gated_service(service), self.ledger, entry, state,
                             self.results)

    def _gated_service(self, service: QuantumService) -> GatedService:
        """The run's one :class:`GatedService` for ``service`` (one rate gate per service)."""
        with self._gated_lock:
            gated = self._gated.get(id(service))
            if gated is None:
                gated = self._gated[id(service)] = GatedService(service)
            return gated

    def _plan_retries(self, max_retries: int) -> list[Entry]:
        """Deferred retry records for failed (system) and partial jobs not yet retried."""
        retried = self.retried | {e.summary.retry_of for e in self.entries.values()
                                  if e.summary.retry_of}
        retries = []
        for entry in list(self.entries.values()):
            summary = entry.summary
            if (not may_be_retried(summary) or summary.record_id in retried
                    or ledger_mod.is_pulled(entry.path)  # the writer's machine retries it
                    or summary.retry_count >= max_retries):
                continue
            from qcourier.ledger.record import LedgerRecord

            record = entry.record
            retry = LedgerRecord.model_validate({
                **record.model_dump(),
                "record_id": new_record_id(), "status": JobStatus.DEFERRED,
                "job_id": None, "request_id": None, "tags": [], "submission_time": None,
                "completion_time": None, "error": None, "failure_class": None,
                "result_path": None, "result_sha256": None, "usage_seconds": None,
                "queue_seconds": None, "retry_of": record.record_id,
                "retry_count": record.retry_count + 1, "updated_at": utc_now(),
            })
            ledger_mod.append(entry.path, retry)
            self.entries[retry.record_id] = Entry.of(retry, entry.path)
            retries.append(Entry.of(retry, entry.path))
        return retries

    def _drain(self, deferred: list[Entry]) -> None:
        """Submit deferred jobs, oldest first, while their key has room.

        Each one is decided and submitted in its key's section (its lock, and with a team
        store its budget lease) on a fresh working set, as ``qsubmit`` does, so a ``qsubmit``
        running meanwhile, here or on another machine, cannot overspend against this run.
        """
        for entry in deferred:
            record = self.entries[entry.record.record_id].record
            service = self._service(record)
            if service is None:
                self._not_reachable(entry)
                continue
            try:
                with spending_section(self.ledger, record.service, record.api_key_index,
                                      team=self.team, wait=False) as spending:
                    self._drain_one(entry, service, spending)
            except KeyBusy:
                self._outcome(JobOutcome(record, None, False, "deferred: another process is "
                                         "submitting for this key"), entry.path)
            except StoreError as exc:  # the lease is another's, or the store is away
                self._outcome(JobOutcome(record, None, False, f"deferred: {exc}"), entry.path)

    def _drain_one(self, entry: Entry, service: QuantumService, spending: Spending) -> None:
        self.entries.update(working_set(self.ledger, utc_now()).entries)
        record = self.entries[entry.record.record_id].record
        if record.status is not JobStatus.DEFERRED:
            return
        summaries: list[RecordView] = [e.summary for e in self.entries.values()]
        mine = [s for s in summaries if queue_key(s) == queue_key(record)]
        reason = None if open_slots(mine, self.policy, utc_now()) else "waiting for a free slot"
        reason = reason or self.admit(record, summaries)
        if reason:
            self._outcome(JobOutcome(record, None, False, f"deferred: {reason}"), entry.path)
            return
        self.progress(f"submitting deferred {record.experiment_type} job")
        spending.confirm()  # LeaseLost: the job stays deferred
        try:
            submitted = submit_record(service, entry.path, record,
                                      load_circuits(self.ledger, record))
        except ServiceError as exc:
            latest = self.ledger.fold([entry.path]).entries[record.record_id].record
            self._outcome(JobOutcome(latest, None, True, f"submission failed: {exc}",
                                     failed=True), entry.path)
            return
        self._outcome(JobOutcome(submitted, JobState.QUEUED, True, "submitted (was deferred)"),
                      entry.path)


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


def _poll_one(service: QuantumService | GatedService, ledger: Ledger, entry: Entry,
              status: JobStatusReport | None = None,
              results: ResultCheck | None = None) -> JobOutcome:
    """Poll one job (unless its ``status`` is known) and record what changed (a result file
    through ``results``, if given)."""
    record = entry.record
    if record.job_id is None:
        raise QcourierError(f"record {record.record_id} has no job id to poll")
    try:
        check_job_id(record.job_id, f"ledger file {entry.path.name}")
    except InvalidJobIdError as exc:  # never put in a URL or a file name
        return _record_not_found(entry, str(exc))
    try:
        status = status or service.job_status(record.job_id)
    except JobNotFoundError as exc:
        return _record_not_found(entry, f"not found: {exc}")
    except ServiceError as exc:  # unreachable or rejected: poll again next time
        return JobOutcome(record, None, False, f"not polled: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError), failed=True)
    try:
        return _apply_status(service, ledger, entry, status, results)
    except ServiceError as exc:  # the result or metrics could not be fetched this time
        return JobOutcome(record, None, False, f"not collected: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError), failed=True)


def _apply_status(
    service: QuantumService | GatedService, ledger: Ledger, entry: Entry, status: JobStatusReport,
    results: ResultCheck | None = None,
) -> JobOutcome:
    record = entry.record
    if record.job_id is None:
        raise QcourierError(f"record {record.record_id} has no job id to poll")
    new_status = STATUS_FOR_STATE[status.state]
    if new_status is JobStatus.COMPLETED:
        return _finish(service, ledger, entry, status, results)
    if new_status is JobStatus.FAILED or new_status is JobStatus.CANCELLED:
        metrics = service.job_metrics(record.job_id)
        updated = record.evolve(
            status=new_status,
            error=_error_text(status),
            failure_class=classify_failure(status) if new_status is JobStatus.FAILED else None,
            completion_time=metrics.finished or utc_now(),
            usage_seconds=metrics.usage_seconds,
            queue_seconds=metrics.queue_seconds,
        )
        ledger_mod.append(entry.path, updated)
        return JobOutcome(updated, status.state, True, updated.error)
    if new_status is record.status:
        return JobOutcome(record, status.state, False)
    updated = record.evolve(status=new_status, error=None)
    ledger_mod.append(entry.path, updated)
    return JobOutcome(updated, status.state, True)


def _error_text(status: JobStatusReport) -> str:
    message = status.error_message or f"job ended {status.state.value}"
    return f"{message} (reason code {status.reason_code})" if status.reason_code else message


def _record_not_found(entry: Entry, reason: str) -> JobOutcome:
    record = entry.record
    changed = record.status is not JobStatus.ERROR or record.error != reason
    if changed:
        record = record.evolve(status=JobStatus.ERROR, error=reason)
        ledger_mod.append(entry.path, record)
    return JobOutcome(record, None, changed, reason, failed=True)


#: Codes IBM's error registry (quantum.cloud.ibm.com/docs/errors) answers with "Retry the
#: action": API internal error, converter, validation-process, backend-level and queue
#: publishing errors. Codes not known to be the system's count as the user's.
SYSTEM_REASON_CODES = frozenset({1000, 1006, 1008, 1010, 1011})
_SYSTEM_WORDS = ("internal error", "system error", "backend is offline", "unavailable",
                 "maintenance", "try again")


def classify_failure(status: JobStatusReport) -> str:
    """``"system"`` for a failure on the service's side (not charged: worth retrying), else
    ``"user"`` (the circuit or options: retrying would spend budget for the same failure).

    System: a reason code in :data:`SYSTEM_REASON_CODES`, or a message saying it is an
    internal or system error, or that the backend is offline, unavailable or in maintenance.
    Everything else, including "ran too long" (1305, over max_execution_time), is a user
    failure: when in doubt, do not spend budget again.
    """
    if status.reason_code in SYSTEM_REASON_CODES:
        return "system"
    message = (status.error_message or "").lower()
    return "system" if any(word in message for word in _SYSTEM_WORDS) else "user"


def _finish(
    service: QuantumService | GatedService, ledger: Ledger, entry: Entry, status: JobStatusReport,
    results: ResultCheck | None = None,
) -> JobOutcome:
    record = entry.record
    if record.job_id is None:
        raise QcourierError(f"record {record.record_id} has no job id to poll")
    result = service.job_result(record.job_id)
    metrics = service.job_metrics(record.job_id)
    analysis, analysis_error = analyse(ledger, record, result.counts)
    payload = {
        "job_id": record.job_id,
        "record_id": record.record_id,
        "experiment_type": record.experiment_type,
        "service": record.service,
        "backend": record.backend,
        "shots": record.shots,
        "circuit_hash": record.circuit_hash,
        "isa_circuit_hash": record.isa_circuit_hash,
        "metadata": record.metadata,
        "service_metadata": result.metadata,
        "counts": result.counts,
        "analysis": analysis,
        "analysis_error": analysis_error,
        "collected_at": utc_now().isoformat(),
    }
    target = path_under(ledger.results_dir, check_job_id(record.job_id, "the ledger"), ".json")
    relative = Path("jobs") / target.name
    body = json.dumps(payload, indent=1).encode()
    sha = atomic_write_bytes(target, body) if results is None else results.write(target, body)
    short = [(i, n) for i, n in enumerate(result.shots) if n < record.shots]
    partial = (f"partial result: circuit {short[0][0]} has {short[0][1]} of {record.shots} shots"
               if short else None)
    updated = record.evolve(
        status=JobStatus.PARTIAL if partial else JobStatus.COMPLETED,
        error=partial,
        failure_class="system" if partial else None,
        completion_time=metrics.finished or utc_now(),
        result_path=relative.as_posix(),
        result_sha256=sha,
        usage_seconds=metrics.usage_seconds,
        queue_seconds=metrics.queue_seconds,
    )
    ledger_mod.append(entry.path, updated)
    message = partial or (f"analysis failed: {analysis_error}" if analysis_error
                          else headline(record.experiment_type, analysis))
    return JobOutcome(updated, status.state, True, message, analysis)


@functools.lru_cache(maxsize=4)
def _snapshot(directory: Path, sha: str) -> dict[str, Any] | None:
    # Snapshots are content-addressed (their name is their sha256): safe to keep, and a
    # device's whole calibration is costly to read again for every job.
    return load_snapshot(directory, sha)


@functools.lru_cache(maxsize=256)
def _calibration(directory: Path, sha: str, qubits: tuple[int, ...]) -> Any:
    """The calibration of ``qubits`` in snapshot ``sha`` (None if the snapshot is gone)."""
    from qcourier.experiments.base import calibration_for_qubits

    snapshot = _snapshot(directory, sha)
    return None if snapshot is None else calibration_for_qubits(snapshot, qubits)


def _run_context(ledger: Ledger, record: LedgerRecord) -> Any:
    """The ISA circuits (hash-checked) and the calibration snapshot a record ran with;
    either is None when the ledger no longer holds it (the analysis says what is missing)."""
    from qcourier.experiments.base import RunContext

    try:
        circuits = load_circuits(ledger, record)
    except QcourierError:
        circuits = None
    snapshot = (_snapshot(ledger.snapshots_dir, record.backend_snapshot_sha256)
                if record.backend_snapshot_sha256 else None)
    return RunContext(circuits, snapshot)


def analyse(
    ledger: Ledger, record: LedgerRecord, counts: list[dict[str, int]]
) -> tuple[dict[str, Any] | None, str | None]:
    """Run the record's experiment analysis; return (analysis, None) or (None, error)."""
    from qcourier.experiments import get_experiment

    try:
        experiment = get_experiment(record.experiment_type)
        calibration = None
        if record.backend_snapshot_sha256:
            calibration = _calibration(ledger.snapshots_dir, record.backend_snapshot_sha256,
                                       tuple(record.metadata.get("physical_qubits", [])))
        metadata = dict(record.metadata, logical_state=record.logical_state)
        extra = {"run": _run_context(ledger, record)} if experiment.needs_run else {}
        with CPU_LOCK:  # collectors analyse on several threads; see CPU_LOCK
            return experiment.analyse(metadata, counts, calibration, **extra), None
    except Exception as exc:  # an analysis bug must not lose the counts
        return None, f"{type(exc).__name__}: {exc}"


def headline(experiment_type: str, analysis: dict[str, Any] | None) -> str | None:
    """The experiment's one-line summary of an analysis (None if it has none, or fails:
    a summary is a courtesy, and must never cost a collected result)."""
    if analysis is None:
        return None
    from qcourier.experiments import get_experiment

    try:
        return get_experiment(experiment_type).headline(analysis)
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def _write_collected(ledger: Ledger, outcomes: list[JobOutcome]) -> Path:
    stamp = utc_now().strftime("%Y%m%d_%H%M%S")
    items = [
        {
            "job_id": o.record.job_id,
            "record_id": o.record.record_id,
            "experiment_type": o.record.experiment_type,
            "logical_state": o.record.logical_state,
            "backend": o.record.backend,
            "service": o.record.service,
            "status": o.record.status.value,
            "error": o.record.error,
            "result_path": o.record.result_path,
            "result_sha256": o.record.result_sha256,
            "usage_seconds": o.record.usage_seconds,
            "queue_seconds": o.record.queue_seconds,
            "analysis": o.analysis,
        }
        for o in outcomes
    ]
    body = json.dumps({"collected_at": utc_now().isoformat(), "jobs": items}, indent=1).encode()
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
