"""The job ledger: a directory of append-only JSONL files, one per ``qsubmit`` run.

Each line is a whole snapshot of one job record; a change of status appends a new line and
the last line of a record is its current state. Lines are never rewritten, so a crash costs
at most the line being written and the history stays for audit.

Every append is one ``write`` of one line on a file opened with ``O_APPEND``, under a
:mod:`filelock` lock, followed by ``fsync``. Reading tolerates a torn last line (reported,
skipped) and reports malformed lines by ``file:line`` without dropping or rewriting them; an
append after a torn line starts on a fresh line.

This module knows nothing of qiskit or of services.
"""

from __future__ import annotations

import operator
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcourier.errors import LedgerError, UsageError

SCHEMA_VERSION = 1
LEDGER_GLOB = "submitted_jobs_*.jsonl"
LOCK_TIMEOUT_SECONDS = 30.0
#: Where derived, deletable data lives: ``<ledger>/cache/`` (the fold index is in ``index/``).
INDEX_DIR = "cache/index"


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


@dataclass
class Fold:
    """The ledger folded to the latest state of every record, plus what could not be read."""

    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[LedgerProblem] = field(default_factory=list)

    @property
    def summaries(self) -> list[RecordSummary]:
        """Latest summaries, in the order the records were first written (cheap)."""
        return [e.summary for e in self.entries.values()]

    @property
    def records(self) -> list[LedgerRecord]:
        """Latest whole records, in the order they were first written (reads every line)."""
        return [e.record for e in self.entries.values()]

    @staticmethod
    def lines(entries: Iterable[Entry]) -> Iterator[bytes]:
        """The latest line of each entry (JSON, no newline), reading each file once."""
        data: dict[Path, bytes] = {}
        for entry in entries:
            if entry._record is not None or entry.offset < 0:
                yield entry.record.model_dump_json().encode()
                continue
            if entry.path not in data:
                data.clear()  # entries come file by file: keep one file in memory
                data[entry.path] = entry.path.read_bytes()
            yield data[entry.path][entry.offset:entry.offset + entry.length]


#: Serialises appends from the threads of one process (the file lock does between processes).
_APPEND_LOCK = threading.Lock()


def _lock_for(path: Path) -> FileLock:
    return FileLock(str(path.parent / f".{path.name}.lock"), timeout=LOCK_TIMEOUT_SECONDS)


def append(path: Path, records: LedgerRecord | Iterable[LedgerRecord]) -> None:
    """Append records to a ledger file, each as one line in one ``write``, then fsync.

    If the file's last line is torn (no trailing newline), a newline is written first so the
    new line starts fresh and the torn one stays as it was.

    Raises:
        LedgerError: the file cannot be locked or written.
    """
    items = [records] if isinstance(records, LedgerRecord) else list(records)
    try:
        with _APPEND_LOCK, _lock_for(path):
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(fd):
                    os.write(fd, b"\n")
                for record in items:
                    data = record.to_line().encode()
                    if os.write(fd, data) != len(data):
                        raise OSError(f"short write to {path}")
                os.fsync(fd)
            finally:
                os.close(fd)
    except Timeout:
        raise LedgerError(
            f"could not lock {path} within {LOCK_TIMEOUT_SECONDS:.0f} s; "
            "another qcourier process holds it — try again"
        ) from None
    except OSError as exc:
        raise LedgerError(f"cannot write ledger file {path}: {exc.strerror or exc}") from None


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_lines(path: Path) -> Iterator[tuple[int, LedgerRecord | LedgerProblem]]:
    """Each line of a ledger file as a record, or as the problem that stopped it being one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    torn_tail = lines[-1] != b""
    last = len(lines) if torn_tail else len(lines) - 1
    for number, raw in enumerate(lines[:last], start=1):
        if not raw.strip():
            continue
        try:
            yield number, LedgerRecord.model_validate_json(raw)
        except ValidationError as exc:
            torn = torn_tail and number == last
            yield number, LedgerProblem(path, number, summarise_error(exc), torn=torn)


def summarise_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


class Ledger:
    """A ledger directory: its files, its fold, and where new files go."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def results_dir(self) -> Path:
        """Where result files go: ``<ledger>/jobs/``."""
        return self.directory / "jobs"

    @property
    def snapshots_dir(self) -> Path:
        """Where backend calibration snapshots go: ``<ledger>/snapshots/``."""
        return self.directory / "snapshots"

    def files(self) -> list[Path]:
        """The ledger files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(LEDGER_GLOB))

    def ensure_writable(self) -> None:
        """Create the directory if needed and check that files can be created in it.

        Raises:
            LedgerError: it cannot be created or written.
        """
        from qcourier.files import make_output_directory

        try:
            make_output_directory(self.directory)
        except OSError as exc:
            raise LedgerError(
                f"cannot create ledger directory {self.directory}: {exc.strerror or exc}; "
                "choose another with --ledger-dir"
            ) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise LedgerError(
                f"ledger directory {self.directory} is not writable; "
                "fix its permissions or choose another with --ledger-dir"
            )

    def new_file(self, now: datetime | None = None) -> Path:
        """Create a new, empty ledger file named after the UTC time; never overwrite one."""
        self.ensure_writable()
        stamp = (now or utc_now()).strftime("%Y%m%d_%H%M%S")
        for suffix in range(1000):
            name = f"submitted_jobs_{stamp}{'' if suffix == 0 else f'_{suffix}'}.jsonl"
            path = self.directory / name
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise LedgerError(f"cannot create {path}: {exc.strerror or exc}") from None
        raise LedgerError(f"too many ledger files named for {stamp} in {self.directory}")

    @property
    def index_dir(self) -> Path:
        """Where the fold index lives: ``<ledger>/cache/index/`` (derived, safe to delete)."""
        return self.directory / INDEX_DIR

    def fold(self, paths: Iterable[Path] | None = None) -> Fold:
        """The latest state of every record in the given files (default: all of them).

        Each file's fold is kept in an index (:mod:`qcourier.ledger.index`), so only lines
        appended since the last fold are read and validated; whole records are read from
        their lines on demand (:attr:`Entry.record`).

        Raises:
            LedgerError: a ledger file cannot be read.
        """
        from qcourier.ledger.index import fold_file

        result = Fold()
        home = self.directory.resolve()
        for path in self.files() if paths is None else paths:
            path = Path(path)
            index_dir = self.index_dir if path.resolve().parent == home else None
            try:
                entries, problems = fold_file(path, index_dir)
            except OSError as exc:
                raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
            result.entries.update(entries)
            result.problems.extend(problems)
        return result


def check_ledger_file(path: Path) -> Path:
    """Validate a ``--jobs-file``: it exists and reads as a ledger.

    Raises:
        UsageError: it does not exist, is not a file, or no line of it is a ledger record.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"jobs file {path} does not exist; give an existing ledger file")
    items = [item for _n, item in read_lines(path)]
    records = [i for i in items if isinstance(i, LedgerRecord)]
    problems = [i for i in items if isinstance(i, LedgerProblem) and not i.torn]
    if items and not records:
        first = problems[0] if problems else items[0]
        raise UsageError(f"{path} is not a qcourier ledger ({first})")
    return path

