"""What a collect run decides about a job, without doing it: pure functions, no I/O.

The run (:mod:`qcourier.collect.run`) asks the services, writes files and appends ledger
lines; every choice it makes on the way is one of these functions of the records, what the
service said and the time ``now`` it is given (the run's clock):

- the transitions of one record, given an observation: :func:`observed` (a state other
  than done), :func:`completed` (a result), :func:`not_found`, :func:`with_usage`;
  each returns the record's next version, or None when nothing changes;
- the run's plan over the working set: :func:`plan_run` (what to poll, whose usage to ask
  for, what is deferred), :func:`usage_due`, :func:`retries_due` and :func:`retry_of`,
  :func:`listing_start` and :func:`deferral_reason`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from qcourier.accounting.budget import finished_in_window, usage_pending
from qcourier.ledger.status import JobStatus
from qcourier.ledger.working import may_be_retried
from qcourier.services.base import JobMetrics, JobState, JobStatusReport
from qcourier.submit.dispatch import QueuePolicy, open_slots, queue_key

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.summary import Entry, RecordView

STATUS_FOR_STATE = {
    JobState.INITIALIZING: JobStatus.QUEUED,
    JobState.QUEUED: JobStatus.QUEUED,
    JobState.RUNNING: JobStatus.RUNNING,
    JobState.DONE: JobStatus.COMPLETED,
    JobState.CANCELLED: JobStatus.CANCELLED,
    JobState.ERROR: JobStatus.FAILED,
}

#: How long before the oldest recorded submission a listing of job states starts.
LISTING_MARGIN = timedelta(hours=1)
#: Final jobs whose usage is still unknown asked about per run (newest finished first).
USAGE_BATCH = 20

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


def error_text(status: JobStatusReport) -> str:
    """The ledger's ``error`` for a job that ended without a result."""
    message = status.error_message or f"job ended {status.state.value}"
    return f"{message} (reason code {status.reason_code})" if status.reason_code else message


def needs_metrics(status: JobStatusReport) -> bool:
    """Whether :func:`observed` needs the job's metrics: it ended without a result."""
    return STATUS_FOR_STATE[status.state] in (JobStatus.FAILED, JobStatus.CANCELLED)


# -- transitions of one record ---------------------------------------------------------------


def observed(record: LedgerRecord, status: JobStatusReport, metrics: JobMetrics | None,
             now: datetime) -> LedgerRecord | None:
    """The record after the service reported ``status`` (any state but done), or None if
    that changes nothing. A failed or cancelled job needs its ``metrics``
    (:func:`needs_metrics`)."""
    new_status = STATUS_FOR_STATE[status.state]
    if new_status is JobStatus.COMPLETED:
        raise ValueError("a done job's next record is completed(): it has a result")
    if new_status in (JobStatus.FAILED, JobStatus.CANCELLED):
        if metrics is None:
            raise ValueError(f"a {new_status.value} job's next record needs its metrics")
        return record.evolve(
            now=now,
            status=new_status,
            error=error_text(status),
            failure_class=classify_failure(status) if new_status is JobStatus.FAILED else None,
            completion_time=metrics.finished or now,
            usage_seconds=metrics.usage_seconds,
            queue_seconds=metrics.queue_seconds,
        )
    if new_status is record.status:
        return None
    return record.evolve(now=now, status=new_status, error=None)


def partial_reason(record: LedgerRecord, shots: Sequence[int]) -> str | None:
    """Why a result is partial (a circuit has fewer shots than asked), or None."""
    short = [(i, n) for i, n in enumerate(shots) if n < record.shots]
    if not short:
        return None
    return f"partial result: circuit {short[0][0]} has {short[0][1]} of {record.shots} shots"


def completed(record: LedgerRecord, shots: Sequence[int], metrics: JobMetrics, *,
              result_path: str, result_sha256: str, now: datetime) -> LedgerRecord:
    """The record of a job whose result (``shots`` per circuit) is in ``result_path``:
    ``completed``, or ``partial`` (a system failure, worth a retry)."""
    partial = partial_reason(record, shots)
    return record.evolve(
        now=now,
        status=JobStatus.PARTIAL if partial else JobStatus.COMPLETED,
        error=partial,
        failure_class="system" if partial else None,
        completion_time=metrics.finished or now,
        result_path=result_path,
        result_sha256=result_sha256,
        usage_seconds=metrics.usage_seconds,
        queue_seconds=metrics.queue_seconds,
    )


def not_found(record: LedgerRecord, reason: str, now: datetime) -> LedgerRecord | None:
    """The record of a job the service does not know (status ``error``), or None if it is
    recorded so already."""
    if record.status is JobStatus.ERROR and record.error == reason:
        return None
    return record.evolve(now=now, status=JobStatus.ERROR, error=reason)


def with_usage(record: LedgerRecord, metrics: JobMetrics, now: datetime) -> LedgerRecord | None:
    """A final record with the usage that has arrived, or None while it is still pending.
    A queue time already recorded is kept."""
    if metrics.usage_seconds is None:
        return None
    return record.evolve(
        now=now,
        usage_seconds=metrics.usage_seconds,
        queue_seconds=(record.queue_seconds if record.queue_seconds is not None
                       else metrics.queue_seconds))


def retry_of(record: LedgerRecord, record_id: str, now: datetime) -> LedgerRecord:
    """A new ``deferred`` record (id ``record_id``) that retries ``record``, linked to it."""
    from qcourier.ledger.record import LedgerRecord

    return LedgerRecord.model_validate({
        **record.model_dump(),
        "record_id": record_id, "status": JobStatus.DEFERRED,
        "job_id": None, "request_id": None, "tags": [], "submission_time": None,
        "completion_time": None, "error": None, "failure_class": None,
        "result_path": None, "result_sha256": None, "usage_seconds": None,
        "queue_seconds": None, "retry_of": record.record_id,
        "retry_count": record.retry_count + 1, "updated_at": now,
    })


# -- the run's plan ----------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What a run does with the entries of its working set.

    Attributes:
        poll: not final, not deferred: intents to settle and jobs to poll, in ledger order.
        usage: final jobs whose usage was still pending when recorded.
        deferred: waiting for a free slot (retries planned later are added to them).
    """

    poll: list[Entry] = field(default_factory=list)
    usage: list[Entry] = field(default_factory=list)
    deferred: list[Entry] = field(default_factory=list)


def plan_run(entries: Iterable[Entry], skip_usage: Collection[str] = ()) -> RunPlan:
    """Sort the entries into a :class:`RunPlan`; ``skip_usage``: record ids whose result is
    being downloaded again (their usage comes with it)."""
    plan = RunPlan()
    for entry in entries:
        status = entry.summary.status
        if status is JobStatus.DEFERRED:
            plan.deferred.append(entry)
        elif status.is_final:
            if entry.summary.record_id not in skip_usage and usage_pending(entry.summary):
                plan.usage.append(entry)
        else:
            plan.poll.append(entry)
    return plan


def usage_due(entries: Iterable[Entry], now: datetime, batch: int = USAGE_BATCH) -> list[Entry]:
    """The final jobs to ask about their usage this run: those that finished in the budget
    window (only they count against a budget), most recently finished first (their figure is
    the likeliest to have arrived), at most ``batch``."""
    due = (e for e in entries if e.summary.job_id and finished_in_window(e.summary, now))
    return sorted(due, key=lambda e: e.summary.completion_time or e.summary.updated_at,
                  reverse=True)[:batch]


def retries_due(entries: Iterable[Entry], retried: set[str], max_retries: int) -> list[Entry]:
    """The failed (system) and partial records to retry now: not retried yet (``retried``
    holds the ids some record retries) and with retries left."""
    entries = list(entries)
    retried = retried | {e.summary.retry_of for e in entries if e.summary.retry_of}
    return [e for e in entries
            if may_be_retried(e.summary) and e.summary.record_id not in retried
            and e.summary.retry_count < max_retries]


def listing_start(records: Sequence[LedgerRecord]) -> datetime | None:
    """Where a listing of these jobs' states starts: an hour before the oldest submission
    recorded (clocks differ), or None (from the start) if one has no submission time."""
    times = [r.submission_time for r in records if r.submission_time is not None]
    return min(times) - LISTING_MARGIN if times and len(times) == len(records) else None


def deferral_reason(record: LedgerRecord, summaries: Sequence[RecordView], policy: QueuePolicy,
                    now: datetime) -> str | None:
    """Why a deferred record must wait (its key has no free slot), or None."""
    mine = [s for s in summaries if queue_key(s) == queue_key(record)]
    return None if open_slots(mine, policy, now) else "waiting for a free slot"
