"""A ledger record: its statuses, the pydantic model of one line, the light summary a fold keeps, and
the lazy entry that reads a whole record from its line on demand.
"""

from __future__ import annotations

import operator
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcourier.errors import LedgerError

SCHEMA_VERSION = 1


class JobStatus(StrEnum):
    """A job's status in the ledger."""

    DEFERRED = "deferred"  # planned, waiting for a free pending slot (qcollect submits it)
    SUBMITTING = "submitting"  # intent: the service is being asked; the job id is not known yet
    SUBMIT_FAILED = "submit_failed"  # the intent never became a job
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"  # finished with fewer shots than asked for
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"  # could not be polled, or the service does not know the job

    @property
    def is_final(self) -> bool:
        """Whether collection is over for a job in this status."""
        return self in FINAL_STATUSES

    @property
    def is_pending(self) -> bool:
        """Whether the job is still on its way at the service."""
        return self in (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def is_open(self) -> bool:
        """Whether the record still needs qcollect: on its way, in an intent, or deferred."""
        return self.is_pending or self in (JobStatus.SUBMITTING, JobStatus.DEFERRED)


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED,
                            JobStatus.CANCELLED, JobStatus.SUBMIT_FAILED})


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC time (a naive one is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def new_record_id() -> str:
    """A stable, unique id for a ledger record (independent of the service's job id)."""
    return secrets.token_hex(8)


class LedgerRecord(BaseModel):
    """One job as the ledger knows it. Each ledger line is one whole ``LedgerRecord``.

    Unknown fields (written by a newer qcourier) are kept, not dropped.
    """

    # defer_build: the validator is built on first use, not on import, so commands that
    # read only the fold index (status, a qcollect with nothing to do) start faster.
    model_config = ConfigDict(extra="allow", defer_build=True)

    schema_version: int = SCHEMA_VERSION
    record_id: str = Field(default_factory=new_record_id)
    job_id: str | None = None
    status: JobStatus = JobStatus.SUBMITTED
    service: str
    backend: str
    experiment_type: str
    logical_state: str | None = None
    shots: int
    num_circuits: int
    circuit_hash: str
    isa_circuit_hash: str
    transpiled_depth: int
    transpiled_gates: dict[str, int]
    submission_time: datetime | None = None
    updated_at: datetime = Field(default_factory=utc_now)
    api_key_index: int | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    tags: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    backend_snapshot_sha256: str | None = None
    calibration_age_hours: float | None = None
    estimated_qpu_seconds: float | None = None
    max_execution_time: int | None = None
    request_id: str | None = None  # also a job tag: finds the job if the process died
    retry_of: str | None = None  # record_id of the failed record this one retries
    retry_count: int = 0
    failure_class: str | None = None  # "system" (not charged, worth retrying) or "user"
    recovered: bool = False  # written by `qcourier recover` from the service's own records
    # After collection:
    completion_time: datetime | None = None
    error: str | None = None
    result_path: str | None = None
    result_sha256: str | None = None
    usage_seconds: float | None = None
    queue_seconds: float | None = None

    def to_line(self) -> str:
        """The record as one JSON line, newline included."""
        return self.model_dump_json() + "\n"

    def evolve(self, **changes: Any) -> LedgerRecord:
        """A copy with ``changes`` applied and ``updated_at`` set to now."""
        data = self.model_dump()
        data.update(changes)
        data["updated_at"] = utc_now()
        return LedgerRecord.model_validate(data)


@dataclass(frozen=True)
class LedgerProblem:
    """A line that could not be read: where, and why."""

    path: Path
    line: int
    reason: str
    torn: bool = False

    def __str__(self) -> str:
        kind = "torn last line" if self.torn else "malformed line"
        return f"{self.path}:{self.line}: {kind} skipped ({self.reason})"


class RecordSummary(NamedTuple):
    """The fields of a record that listing, budgeting and queueing need.

    A fold keeps one summary per record in memory; the whole record is read from its latest
    line only when asked for (:attr:`Entry.record`), so a ledger of 100,000 jobs folds in
    little time and memory. The names and types are those of :class:`LedgerRecord`, so code
    that reads only these fields takes either.
    """

    record_id: str
    job_id: str | None
    status: JobStatus
    service: str
    backend: str
    experiment_type: str
    logical_state: str | None
    shots: int
    circuit_hash: str
    api_key_index: int | None
    submission_time: datetime | None
    updated_at: datetime
    completion_time: datetime | None
    estimated_qpu_seconds: float | None
    max_execution_time: int | None
    request_id: str | None
    retry_of: str | None
    retry_count: int
    failure_class: str | None
    error: str | None
    result_path: str | None
    result_sha256: str | None
    usage_seconds: float | None
    queue_seconds: float | None

    @classmethod
    def of(cls, record: LedgerRecord) -> RecordSummary:
        """The summary of a whole record."""
        return tuple.__new__(cls, _summary_fields(record))


_summary_fields = operator.attrgetter(*RecordSummary._fields)


#: What code that only reads summary fields accepts.
RecordView = LedgerRecord | RecordSummary


class Entry:
    """The current state of one record: its summary, and where its latest line is.

    ``record`` reads and validates that line on first use (or is given, for a record just
    written).
    """

    __slots__ = ("summary", "path", "offset", "length", "_record")

    def __init__(self, summary: RecordSummary, path: Path, offset: int = -1, length: int = 0,
                 record: LedgerRecord | None = None):
        self.summary = summary
        self.path = path
        self.offset = offset
        self.length = length
        self._record = record

    @classmethod
    def of(cls, record: LedgerRecord, path: Path) -> Entry:
        """The entry of a record held in memory (just written, or just read)."""
        return cls(RecordSummary.of(record), path, record=record)

    @property
    def record(self) -> LedgerRecord:
        """The whole record, read from its line in the ledger file on first use.

        Raises:
            LedgerError: the line can no longer be read as the record it was.
        """
        if self._record is None:
            self._record = _read_record_at(self.path, self.offset, self.length,
                                           self.summary.record_id)
        return self._record


def _read_record_at(path: Path, offset: int, length: int, record_id: str) -> LedgerRecord:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        record = LedgerRecord.model_validate_json(raw)
    except (OSError, ValidationError) as exc:
        raise LedgerError(
            f"{path}: the line of record {record_id} at byte {offset} can no longer be read "
            f"({exc.__class__.__name__}); the file was changed after it was indexed — remove "
            f"{path.parent / INDEX_DIR} and try again"
        ) from None
    if record.record_id != record_id:
        raise LedgerError(
            f"{path}: byte {offset} no longer holds record {record_id}; the file was changed "
            f"after it was indexed — remove {path.parent / INDEX_DIR} and try again"
        )
    return record


def summarise_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


#: Where derived, deletable data lives: ``<ledger>/cache/`` (the fold index is in ``index/``).
INDEX_DIR = "cache/index"

