"""What a fold keeps of each record: its summary, where its latest line is, and the lines it
could not read.

No pydantic at import: a fold read from the index builds no model. The whole record
(:attr:`Entry.record`, a :class:`~qcourier.ledger.record.LedgerRecord`) is validated from its
line only when someone asks for it.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from qcourier.errors import LedgerError
from qcourier.ledger.status import JobStatus

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord

#: Where derived, deletable data lives: ``<ledger>/cache/`` (the fold index is in ``index/``).
INDEX_DIR = "cache/index"


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
    from pydantic import ValidationError

    from qcourier.ledger.record import LedgerRecord

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


if TYPE_CHECKING:
    #: What code that only reads summary fields accepts (a name for type checkers only).
    RecordView = LedgerRecord | RecordSummary
