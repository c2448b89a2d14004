"""Collection: poll pending jobs, fetch and analyse finished ones, record what changed.

``collect_pending`` folds the ledger, skips records that are final, polls the rest, and for
every job that finished: writes its result file atomically, records its sha256, and appends
the final ledger line. It appends nothing for a job whose state did not change, so running
it again changes nothing. Only one collector runs on a ledger at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from qcourier import ledger as ledger_mod
from qcourier.errors import QcourierError, UsageError
from qcourier.files import atomic_write_bytes
from qcourier.ledger import Entry, JobStatus, Ledger, LedgerProblem, LedgerRecord, utc_now
from qcourier.provenance import calibration_for_qubits, load_snapshot
from qcourier.services import ServicePool
from qcourier.services.base import (
    AuthenticationError,
    JobNotFoundError,
    JobState,
    JobStatusReport,
    QuantumService,
    ServiceError,
)

STATUS_FOR_STATE = {
    JobState.INITIALIZING: JobStatus.QUEUED,
    JobState.QUEUED: JobStatus.QUEUED,
    JobState.RUNNING: JobStatus.RUNNING,
    JobState.DONE: JobStatus.COMPLETED,
    JobState.CANCELLED: JobStatus.CANCELLED,
    JobState.ERROR: JobStatus.FAILED,
}

Progress = Callable[[str], None]


class CollectorBusy(QcourierError):
    """Another collector is working on this ledger."""

    exit_code = 0


@dataclass
class JobOutcome:
    """What one poll found for one job."""

    record: LedgerRecord
    state: JobState | None  # None when the job could not be polled
    changed: bool
    message: str | None = None
    analysis: dict[str, Any] | None = None
    rejected_credentials: bool = False

    @property
    def poll_failed(self) -> bool:
        return self.state is None


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

    @property
    def total(self) -> int:
        return self.already_final + len(self.outcomes)

    @property
    def completed(self) -> int:
        done = sum(1 for o in self.outcomes if o.record.status is JobStatus.COMPLETED)
        return self.already_final_completed + done

    @property
    def pending(self) -> int:
        """Jobs still on their way (submitted, queued, running); ``error`` ones are not."""
        return sum(1 for o in self.outcomes if o.record.status.is_pending)

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
        return 1 if any(o.poll_failed for o in self.outcomes) else 0


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
    progress: Progress = lambda _: None,
) -> CollectReport:
    """Poll every non-final job in the ledger (or in ``paths``, or only ``job_id``).

    Each record is polled with the service (and API key) that submitted it. A job that
    cannot be polled this time (unreachable service, rejected key) is reported and left as
    it is, to be polled next time; a job the service does not know gets status ``error``.

    Args:
        default_service: the service asked about a ``job_id`` that no ledger file knows.

    Raises:
        CollectorBusy: another collector holds the ledger's lock.
        UsageError: ``job_id`` is in no ledger file given and unknown to the service.
    """
    pool = services if isinstance(services, ServicePool) else ServicePool.of(services)
    ledger.ensure_writable()
    try:
        with collector_lock(ledger):
            return _collect(pool, ledger, paths, job_id, default_service, progress)
    except Timeout:
        raise CollectorBusy(
            f"another qcollect is already collecting {ledger.directory}; nothing done"
        ) from None


def _collect(
    pool: ServicePool,
    ledger: Ledger,
    paths: list[Path] | None,
    job_id: str | None,
    default_service: str,
    progress: Progress,
) -> CollectReport:
    fold = ledger.fold(paths)
    report = CollectReport(problems=fold.problems)
    entries = list(fold.entries.values())
    if job_id is not None:
        entries = [e for e in entries if e.record.job_id == job_id]
        if not entries:
            report.unrecorded = poll_unrecorded(pool.get(default_service), job_id)
            return report
    unreachable: dict[tuple[str, int | None], str] = {}  # service, key -> why
    for entry in entries:
        record = entry.record
        if record.status.is_final:
            report.already_final += 1
            report.already_final_completed += record.status is JobStatus.COMPLETED
            continue
        if record.job_id is None:
            report.skipped.append(f"record {record.record_id} has no job id")
            continue
        where = (record.service, record.api_key_index)
        if where not in unreachable:
            try:
                service = pool.for_record(record)
            except QcourierError as exc:
                unreachable[where] = str(exc)
        if where in unreachable:
            report.outcomes.append(JobOutcome(record, None, False, unreachable[where]))
            continue
        progress(f"polling {record.job_id}")
        outcome = _poll_one(service, ledger, entry)
        if outcome.rejected_credentials:
            unreachable[where] = outcome.message or "credentials rejected"
        report.outcomes.append(outcome)
    if report.newly_final:
        report.collected_path = _write_collected(ledger, report.newly_final)
    return report


def _poll_one(service: QuantumService, ledger: Ledger, entry: Entry) -> JobOutcome:
    record = entry.record
    assert record.job_id is not None
    try:
        status = service.job_status(record.job_id)
    except JobNotFoundError as exc:
        return _record_not_found(entry, f"not found: {exc}")
    except ServiceError as exc:  # unreachable or rejected: poll again next time
        return JobOutcome(record, None, False, f"not polled: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError))
    try:
        return _apply_status(service, ledger, entry, status)
    except ServiceError as exc:  # the result or metrics could not be fetched this time
        return JobOutcome(record, None, False, f"not collected: {exc}",
                          rejected_credentials=isinstance(exc, AuthenticationError))


def _apply_status(
    service: QuantumService, ledger: Ledger, entry: Entry, status: JobStatusReport
) -> JobOutcome:
    record = entry.record
    assert record.job_id is not None
    new_status = STATUS_FOR_STATE[status.state]
    if new_status is JobStatus.COMPLETED:
        return _finish(service, ledger, entry, status)
    if new_status is JobStatus.FAILED or new_status is JobStatus.CANCELLED:
        metrics = service.job_metrics(record.job_id)
        updated = record.evolve(
            status=new_status,
            error=_error_text(status),
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
    return JobOutcome(record, None, changed, reason)


def _finish(
    service: QuantumService, ledger: Ledger, entry: Entry, status: JobStatusReport
) -> JobOutcome:
    record = entry.record
    assert record.job_id is not None
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
    relative = Path("jobs") / f"{record.job_id}.json"
    sha = atomic_write_bytes(ledger.directory / relative, json.dumps(payload, indent=1).encode())
    updated = record.evolve(
        status=JobStatus.COMPLETED,
        error=None,
        completion_time=metrics.finished or utc_now(),
        result_path=relative.as_posix(),
        result_sha256=sha,
        usage_seconds=metrics.usage_seconds,
        queue_seconds=metrics.queue_seconds,
    )
    ledger_mod.append(entry.path, updated)
    message = f"analysis failed: {analysis_error}" if analysis_error else None
    return JobOutcome(updated, status.state, True, message, analysis)


def analyse(
    ledger: Ledger, record: LedgerRecord, counts: list[dict[str, int]]
) -> tuple[dict[str, Any] | None, str | None]:
    """Run the record's experiment analysis; return (analysis, None) or (None, error)."""
    from qcourier.experiments import get_experiment

    try:
        experiment = get_experiment(record.experiment_type)
        calibration = None
        if record.backend_snapshot_sha256:
            snapshot = load_snapshot(ledger.snapshots_dir, record.backend_snapshot_sha256)
            if snapshot is not None:
                calibration = calibration_for_qubits(
                    snapshot, record.metadata.get("physical_qubits", [])
                )
        metadata = dict(record.metadata, logical_state=record.logical_state)
        return experiment.analyse(metadata, counts, calibration), None
    except Exception as exc:  # an analysis bug must not lose the counts
        return None, f"{type(exc).__name__}: {exc}"


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
    for suffix in range(1000):
        path = ledger.directory / f"collected_results_{stamp}{'' if not suffix else f'_{suffix}'}.json"
        if not path.exists():
            atomic_write_bytes(path, body)
            return path
    raise QcourierError(f"too many collected_results files for {stamp} in {ledger.directory}")


def poll_unrecorded(service: QuantumService, job_id: str) -> JobStatusReport:
    """The status of a job the ledger does not know (``qcollect --job-id``).

    Raises:
        UsageError: the service does not know it either.
    """
    try:
        return service.job_status(job_id)
    except JobNotFoundError as exc:
        raise UsageError(str(exc)) from None
