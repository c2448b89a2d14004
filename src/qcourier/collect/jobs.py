"""One job at a time: find it in the ledger, read its history and result, cancel it.

These back ``qcourier show`` and ``qcourier cancel``. A job is named by its job id or by
its record id (a deferred job has no job id yet), or by an unambiguous prefix of either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.errors import UsageError
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger, read_lines
from qcourier.ledger.store import append as append_line
from qcourier.ledger.summary import Entry

if TYPE_CHECKING:
    from qcourier.services import ServicePool

#: A prefix shorter than this could match by accident.
MIN_PREFIX = 6


def find_entry(ledger: Ledger, name: str) -> Entry:
    """The ledger entry of the job called ``name`` (job id, record id, or a prefix of one).

    Raises:
        UsageError: no record matches, or a prefix matches several.
    """
    fold = ledger.fold()
    exact = [e for e in fold.entries.values() if name in (e.summary.job_id, e.summary.record_id)]
    if exact:
        return exact[0]
    matches = [] if len(name) < MIN_PREFIX else [
        e for e in fold.entries.values()
        if (e.summary.job_id or "").startswith(name) or e.summary.record_id.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(sorted(e.summary.job_id or e.summary.record_id for e in matches)[:5])
        raise UsageError(f"{name!r} matches {len(matches)} jobs ({ids}); give more of the id")
    raise UsageError(f"no job {name!r} in the ledger at {ledger.directory}; list the jobs "
                     "with: qcourier status")


def history(entry: Entry) -> list[LedgerRecord]:
    """Every line the ledger file holds for the entry's record, oldest first."""
    return [item for _n, item in read_lines(entry.path)
            if isinstance(item, LedgerRecord) and item.record_id == entry.summary.record_id]


@dataclass
class ResultFile:
    """A completed job's result file, checked against the ledger."""

    path: Path
    problem: str | None = None  # missing, unreadable or a sha256 that differs
    analysis: dict[str, Any] | None = None
    analysis_error: str | None = None


def read_result(ledger: Ledger, record: LedgerRecord) -> ResultFile | None:
    """The record's result file, its analysis, and whether it is as the ledger says; None
    for a record with no result."""
    from qcourier.ledger.results import ResultCheck

    if not record.result_path:
        return None
    path = (ledger.directory / record.result_path).resolve()
    if not path.is_relative_to(ledger.directory.resolve()):
        return ResultFile(path, "is outside the ledger directory (not read)")
    problem = ResultCheck(ledger, batch=None).problem(record)
    if problem:
        return ResultFile(path, f"{problem}; the next qcollect downloads it again")
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return ResultFile(path, f"cannot be read as JSON ({exc})")
    return ResultFile(path, None, payload.get("analysis"), payload.get("analysis_error"))


@dataclass
class CancelOutcome:
    """What ``cancel`` did: the record as now recorded, and what to tell the user."""

    record: LedgerRecord
    message: str
    notes: list[str] = field(default_factory=list)


def cancel(pool: ServicePool, ledger: Ledger, name: str) -> CancelOutcome:
    """Cancel a job: ask its service (with the key that submitted it), then record it.

    A deferred job (not yet submitted) is recorded as cancelled, so qcollect never submits
    it. A job on its way is cancelled at the service, then polled once so that the ledger
    line carries the service's final state and usage; if another qcollect holds the ledger,
    that collector records it.

    Raises:
        UsageError: the job is unknown, or already final.
        ServiceError: the service refused or could not be reached (nothing is recorded).
    """
    from qcourier.collect.run import CollectOptions, CollectorBusy, collect_pending

    entry = find_entry(ledger, name)
    record = entry.record
    if record.status.is_final:
        raise UsageError(f"job {record.job_id or record.record_id} is already "
                         f"{record.status.value}; there is nothing to cancel")
    if record.status is JobStatus.DEFERRED:
        updated = record.evolve(status=JobStatus.CANCELLED,
                                error="cancelled before submission (qcourier cancel)")
        append_line(entry.path, updated)
        return CancelOutcome(updated, "cancelled before it was submitted; qcollect will not "
                             "submit it")
    if record.job_id is None:  # an intent: the job id is not known yet
        raise UsageError(f"record {record.record_id} is still being submitted (no job id yet); "
                         "run qcollect to settle it, then cancel the job")
    pool.get(record.service, record.api_key_index).cancel(record.job_id)
    try:
        report = collect_pending(pool, ledger, CollectOptions(job_id=record.job_id,
                                                           default_service=record.service))
    except CollectorBusy:
        return CancelOutcome(record, "cancel requested; the qcollect now running records it")
    latest = find_entry(ledger, record.record_id).record
    if latest.status is JobStatus.CANCELLED:
        return CancelOutcome(latest, "cancelled", [str(p) for p in report.problems])
    return CancelOutcome(latest, f"cancel requested; the service says {latest.status.value} "
                         "for now, and qcollect records its final state")
