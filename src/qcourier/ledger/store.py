"""The job ledger: a directory of append-only JSONL files, one per ``qsubmit`` run.

Each line is a whole snapshot of one job record; a change of status appends a new line and
the last line of a record is its current state. Lines are never rewritten, so a crash costs
at most the line being written and the history stays for audit.

Every append is one ``write`` of one line on a file opened with ``O_APPEND``, under a
:mod:`filelock` lock, followed by ``fsync``. Reading tolerates a torn last line (reported,
skipped) and reports malformed lines by ``file:line`` without dropping or rewriting them; an
append after a torn line starts on a fresh line.

With a team store (:mod:`qcourier.store.sync`), the directory also holds the segments
pulled from other machines, under ``store/remote/<writer>/<ledger-file>/<start>-<end>.jsonl``.
They are read with the local files (:meth:`Ledger.files`, :meth:`Ledger.fold`, by the rule
of :mod:`qcourier.ledger.union`) and never written: :func:`append` puts a line about a
record found in one into this machine's own file of the same name.

This module knows nothing of qiskit or of services.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, overload, TYPE_CHECKING

from filelock import FileLock, Timeout

from qcourier.errors import LedgerError, UsageError
from qcourier.files import create_timestamped
from qcourier.ledger.status import as_utc, utc_now
from qcourier.ledger.summary import INDEX_DIR, Entry, LedgerProblem, RecordSummary
from qcourier.ledger.union import union

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord

LEDGER_GLOB = "submitted_jobs_*.jsonl"
LOCK_TIMEOUT_SECONDS = 30.0
#: How much of the ledger files :meth:`Fold.lines` keeps in memory at once.
LINES_CACHE_BYTES = 64 * 1024 * 1024
#: This machine's writer id in a team store: ``<ledger>/store/writer``.
WRITER_FILE = "store/writer"
#: Where segments pulled from other writers live: ``<ledger>/store/remote/``.
REMOTE_DIR = "store/remote"
WRITER_PATTERN = re.compile(r"^w[0-9a-f]{16}$")
#: A ledger file name as qcourier makes them (and as a segment's key may hold one).
LEDGER_NAME = re.compile(r"^submitted_jobs_[A-Za-z0-9._=+-]{1,150}\.jsonl$")
SEGMENT_NAME = re.compile(r"^(0|[1-9][0-9]{0,15})-([1-9][0-9]{0,15})\.jsonl$")


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

    def select(self, statuses: Iterable[str] = (), experiments: Iterable[str] = (),
               since: datetime | None = None, in_time_order: bool = False) -> list[Entry]:
        """The entries whose latest status is one of ``statuses`` and whose experiment is one
        of ``experiments`` (either empty: any), submitted (or, never submitted, last
        updated) at or after ``since`` (naive: UTC), in the order first written, or with
        ``in_time_order`` in the order of those times (a team's union, whichever machine
        wrote first)."""
        wanted_status, wanted_experiment = set(statuses), set(experiments)
        cutoff = as_utc(since) if since is not None else None

        def when(entry: Entry) -> datetime:
            return entry.summary.submission_time or entry.summary.updated_at

        chosen = [e for e in self.entries.values()
                  if (not wanted_status or e.summary.status.value in wanted_status)
                  and (not wanted_experiment or e.summary.experiment_type in wanted_experiment)
                  and (cutoff is None or when(e) >= cutoff)]
        return sorted(chosen, key=when) if in_time_order else chosen

    @staticmethod
    def lines(entries: Iterable[Entry]) -> Iterator[bytes]:
        """The latest line of each entry (JSON, no newline), reading each file once (while
        the files read fit in :data:`LINES_CACHE_BYTES`: entries of a team's union, in time
        order, come from many small files in turn)."""
        data: dict[Path, bytes] = {}
        held = 0
        for entry in entries:
            if entry._record is not None or entry.offset < 0:
                yield entry.record.model_dump_json().encode()
                continue
            if entry.path not in data:
                if held > LINES_CACHE_BYTES:
                    data.clear()
                    held = 0
                data[entry.path] = entry.path.read_bytes()
                held += len(data[entry.path])
            yield data[entry.path][entry.offset:entry.offset + entry.length]


#: Serialises appends from the threads of one process (the file lock does between processes).
_APPEND_LOCK = threading.Lock()


def _lock_for(path: Path) -> FileLock:
    return FileLock(str(path.parent / f".{path.name}.lock"), timeout=LOCK_TIMEOUT_SECONDS)


def append(path: Path, records: LedgerRecord | Iterable[LedgerRecord]) -> None:
    """Append records to a ledger file, each as one line in one ``write``, then fsync.

    If the file's last line is torn (no trailing newline), a newline is written first so the
    new line starts fresh and the torn one stays as it was.

    A segment pulled from another writer is never written: lines for ``path`` in
    ``<ledger>/store/remote/<writer>/<name>/`` go to this machine's own ``<ledger>/<name>``
    (created if needed), which the next sync publishes as this writer's.

    Raises:
        LedgerError: the file cannot be locked or written.
    """
    from qcourier.ledger.record import LedgerRecord

    path = own_file_for(path)
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


def pulled_parts(path: Path) -> tuple[Path, str, str] | None:
    """``(ledger directory, writer, ledger file name)`` of a pulled segment, else None."""
    parts = Path(path).parts
    if (len(parts) < 6 or parts[-5:-3] != ("store", "remote")
            or not WRITER_PATTERN.fullmatch(parts[-3]) or not LEDGER_NAME.fullmatch(parts[-2])
            or not SEGMENT_NAME.fullmatch(parts[-1])):
        return None
    return Path(path).parents[4], parts[-3], parts[-2]


def own_file_for(path: Path) -> Path:
    """``path``, or for a pulled segment this machine's own ledger file of the same name."""
    found = pulled_parts(path)
    return path if found is None else found[0] / found[2]


def is_pulled(path: Path) -> bool:
    """Whether ``path`` is a segment pulled from another writer (never written here)."""
    return pulled_parts(path) is not None


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_lines(path: Path) -> Iterator[tuple[int, LedgerRecord | LedgerProblem]]:
    """Each line of a ledger file as a record, or as the problem that stopped it being one."""
    from pydantic import ValidationError

    from qcourier.ledger.record import LedgerRecord, summarise_error

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
        """The ledger files, oldest first, then the segments pulled from other writers."""
        return self.local_files() + self.pulled_files()

    def local_files(self) -> list[Path]:
        """This machine's own ledger files, oldest first (the only ones ever appended to)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(LEDGER_GLOB))

    @property
    def remote_dir(self) -> Path:
        """Where segments pulled from other writers live: ``<ledger>/store/remote/``."""
        return self.directory / REMOTE_DIR

    def pulled_files(self) -> list[Path]:
        """The segments pulled from other writers: by writer, ledger file, then first byte."""
        found: list[Path] = []
        try:
            for writer in sorted(os.listdir(self.remote_dir)):
                for name in sorted(os.listdir(self.remote_dir / writer)):
                    folder = self.remote_dir / writer / name
                    segments = [(int(m.group(1)), segment) for segment in os.listdir(folder)
                                if (m := SEGMENT_NAME.fullmatch(segment))]
                    found.extend(folder / segment for _start, segment in sorted(segments))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return [path for path in found if is_pulled(path)]

    @overload
    def writer_id(self, create: Literal[True]) -> str: ...

    @overload
    def writer_id(self, create: bool = False) -> str | None: ...

    def writer_id(self, create: bool = False) -> str | None:
        """This directory's writer id in a team store (``<ledger>/store/writer``).

        Args:
            create: make one (random, once: two processes racing both get the same) if
                there is none yet.

        Returns:
            The id, or None when there is none and ``create`` is false.

        Raises:
            LedgerError: the file holds something else than a writer id, or cannot be made.
        """
        path = self.directory / WRITER_FILE
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if not create:
                return None
            self._create_writer_id(path)
            return self.writer_id()
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read the writer id {path}: {exc}") from None
        if not WRITER_PATTERN.fullmatch(text):
            raise LedgerError(f"{path} does not hold a writer id (w and 16 hex digits); "
                              "restore it from a backup, or remove it to become a new writer")
        return text

    def set_writer_id(self, writer: str) -> None:
        """Make ``writer`` this directory's writer id (a directory rebuilt from the store).

        Raises:
            LedgerError: it is not a writer id, or the directory already has another one.
        """
        if not WRITER_PATTERN.fullmatch(writer):
            raise LedgerError(f"{writer!r} is not a writer id (w and 16 hex digits)")
        path = self.directory / WRITER_FILE
        self._create_writer_id(path, writer)
        if self.writer_id() != writer:
            raise LedgerError(f"{self.directory} already has writer id {self.writer_id()}, "
                              f"not {writer}")

    def _create_writer_id(self, path: Path, writer: str | None = None) -> None:
        from qcourier.files import atomic_write_bytes

        self.ensure_writable()
        temp = path.with_name(f".writer.{secrets.token_hex(4)}")
        try:
            atomic_write_bytes(temp, f"{writer or 'w' + secrets.token_hex(8)}\n".encode())
            try:
                os.link(temp, path)  # fails if another process made one first: keep that
            except FileExistsError:
                pass
        except OSError as exc:
            raise LedgerError(f"cannot create the writer id {path}: "
                              f"{exc.strerror or exc}") from None
        finally:
            temp.unlink(missing_ok=True)

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
        try:
            return create_timestamped(self.directory, "submitted_jobs", ".jsonl", stamp)
        except OSError as exc:
            raise LedgerError(f"cannot create a ledger file in {self.directory}: "
                              f"{exc.strerror or exc}") from None

    @property
    def index_dir(self) -> Path:
        """Where the fold index lives: ``<ledger>/cache/index/`` (derived, safe to delete)."""
        return self.directory / INDEX_DIR

    def fold(self, paths: Iterable[Path] | None = None) -> Fold:
        """The latest state of every record in the given files (default: all of them).

        Each file's fold is kept in an index (:mod:`qcourier.ledger.index`), so only lines
        appended since the last fold are read and validated; whole records are read from
        their lines on demand (:attr:`Entry.record`). Lines of a record from several writers
        (this machine's files and pulled segments) are settled by
        :func:`qcourier.ledger.union.union`.

        Raises:
            LedgerError: a ledger file cannot be read.
        """
        from qcourier.ledger.index import fold_file

        result = Fold()
        home = self.directory.resolve()
        by_writer: dict[str, dict[str, Entry]] = {}
        for path in self.files() if paths is None else paths:
            path = Path(path)
            pulled = pulled_parts(path)
            if pulled is None:
                writer = ""  # this machine: its id is read only if another writer shows up
                index_dir = self.index_dir if path.resolve().parent == home else None
            else:
                writer = pulled[1]
                index_dir = self.index_dir / "remote" / writer / pulled[2]
            try:
                entries, problems = fold_file(path, index_dir)
            except OSError as exc:
                raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
            by_writer.setdefault(writer, {}).update(entries)
            result.problems.extend(problems)
        if "" in by_writer and len(by_writer) > 1:
            by_writer = {(self.writer_id() or "" if w == "" else w): e
                         for w, e in by_writer.items()}
        if by_writer:
            result.entries = union(by_writer)
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
    records = [i for i in items if not isinstance(i, LedgerProblem)]
    problems = [i for i in items if isinstance(i, LedgerProblem) and not i.torn]
    if items and not records:
        first = problems[0] if problems else items[0]
        raise UsageError(f"{path} is not a qcourier ledger ({first})")
    return path

