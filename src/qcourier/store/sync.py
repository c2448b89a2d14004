"""Push what this machine wrote to the team store, pull what the others wrote.

The layout of a study in the bucket (below ``QCOURIER_STORE``'s prefix)::

    ledger/<writer>/<ledger-file-name>/<start>-<end>.jsonl   ledger lines (segments)
    blobs/sha256/<hex>                                        results, circuits, snapshots
    refs/circuits/<isa_circuit_hash>                          the blob of a job's ISA circuits

- **Writers.** Each ledger directory is one writer, with a random id (``w`` and 16 hex
  digits) made once in ``<ledger>/store/writer``. Only that directory writes below
  ``ledger/<writer>/``.
- **Segments.** A local ledger file is append-only, so bytes ``start..end`` of it never
  change: each push uploads the complete lines appended since the last one as one object
  named by that byte range, create-only (``If-None-Match: *``). A retried upload of the same
  range is a no-op; the object already there is checked to hold the same bytes (a different
  one means two directories share a writer id, and the push stops). Concatenated in order,
  a writer's segments of a file are that file, byte for byte (``recover_from_store``).
- **Blobs.** Result files (``jobs/``), calibration snapshots (``snapshots/``, stored as their
  canonical JSON, whose sha256 the ledger records) and ISA circuits (``circuits/``, as the
  ``.qpy`` bytes, found through ``refs/circuits/<isa_circuit_hash>``) are content-addressed
  by the sha256 of their bytes and checked against it on download. A push uploads the blobs a
  segment's lines refer to before the segment, so a segment in the bucket has its blobs.
- **What was pushed** is kept in ``<ledger>/store/pushed.json`` (derived: if deleted, it is
  rebuilt from a listing of this writer's segments). The ranges a push is about to upload are
  written there first, so a push killed mid-way uploads exactly those ranges again (no-ops
  where they landed) and never an overlapping one.
- **Pulled segments** of the other writers land, each written atomically, as
  ``<ledger>/store/remote/<writer>/<ledger-file-name>/<start>-<end>.jsonl``, after the blobs
  their lines refer to have been fetched into ``jobs/``, ``circuits/`` and ``snapshots/``.
  Every name from the bucket is checked (:func:`check_key_part` and the shapes above) before
  it is used in a path. An object that is truncated (its size is not its byte range), not
  whole lines of ledger records, or not of this layout is reported by key and skipped. A
  result file that two machines both wrote (a job collected twice) is then made to hold what
  the union's latest line of its record names.

The ledger folds the pulled segments with the local files (:mod:`qcourier.ledger.union`).
One push or pull at a time per ledger directory (a file lock); concurrent ones wait.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcourier.errors import LedgerError, QcourierError
from qcourier.files import atomic_write_bytes, sha256_file
from qcourier.ledger.store import (
    LEDGER_NAME,
    SEGMENT_NAME,
    WRITER_PATTERN,
    Ledger,
)
from qcourier.ledger.working import result_name
from qcourier.store.objects import ObjectStore, StoreError, StoreUnavailable, check_key_part

SEGMENTS = "ledger/"
BLOBS = "blobs/sha256/"
CIRCUIT_REFS = "refs/circuits/"
PUSHED_FILE = "store/pushed.json"
SYNC_LOCK_FILE = "store/.sync.lock"
#: How long a sync waits for another sync of the same ledger directory to finish.
SYNC_LOCK_SECONDS = 120.0
#: Objects uploaded or downloaded at once.
DEFAULT_WORKERS = 8
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

#: Called as objects are done: (what, done, total).
Progress = Callable[[str, int, int], None]


class SyncBusy(StoreUnavailable):
    """Another sync of this ledger directory held it for too long."""


@dataclass
class PushResult:
    """What a push did.

    Attributes:
        segments: segments created in the store.
        blobs: blobs (and circuit refs) created in the store.
        present: objects that were already there (a retried upload).
        bytes: ledger bytes in the segments uploaded.
        problems: what could not be uploaded, one line each (the rest was).
    """

    segments: int = 0
    blobs: int = 0
    present: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class PullResult:
    """What a pull did.

    Attributes:
        segments: other writers' segments downloaded.
        blobs: result, circuit and snapshot files fetched into the ledger directory.
        writers: the other writers seen in the store.
        problems: objects reported and skipped (truncated, foreign, unsafe names, missing or
            damaged blobs), one line each by key.
    """

    segments: int = 0
    blobs: int = 0
    writers: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Segment:
    """Bytes ``start..end`` (complete lines) of ledger file ``name`` of ``writer``."""

    writer: str
    name: str
    start: int
    end: int

    @property
    def key(self) -> str:
        return f"{SEGMENTS}{self.writer}/{self.name}/{self.start}-{self.end}.jsonl"

    @classmethod
    def parse(cls, key: str) -> Segment:
        """The segment a key names.

        Raises:
            StoreError: the key is not a segment's (an unsafe name, another shape).
        """
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != SEGMENTS.rstrip("/"):
            raise StoreError(f"foreign object {key!r} in the store: not ledger/<writer>/"
                             "<file>/<start>-<end>.jsonl; skipped")
        for part in parts[1:]:
            check_key_part(part, f"the name in {key!r}")
        match = SEGMENT_NAME.fullmatch(parts[3])
        if not (WRITER_PATTERN.fullmatch(parts[1]) and LEDGER_NAME.fullmatch(parts[2])
                and match and int(match.group(1)) < int(match.group(2))):
            raise StoreError(f"foreign object {key!r} in the store: not ledger/<writer>/"
                             "<file>/<start>-<end>.jsonl; skipped")
        return cls(parts[1], parts[2], int(match.group(1)), int(match.group(2)))


# -- the lock and what was pushed ------------------------------------------------------------

@contextmanager
def sync_lock(ledger: Ledger, timeout: float = SYNC_LOCK_SECONDS) -> Iterator[None]:
    """Hold the ledger directory's sync lock (one push or pull at a time).

    Raises:
        SyncBusy: another sync held it for ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    path = ledger.directory / SYNC_LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise SyncBusy(f"another sync of {ledger.directory} has run for {timeout:.0f} s; "
                       "this one is skipped, the next catches up") from None
    except OSError as exc:
        raise LedgerError(f"cannot lock {path}: {exc.strerror or exc}") from None


@dataclass
class PushState:
    """``store/pushed.json``: per ledger file the bytes pushed, the ranges being pushed, and
    the blobs known to be in the store (all derived data, see the module)."""

    writer: str
    pushed: dict[str, int] = field(default_factory=dict)
    planned: dict[str, list[int]] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, ledger: Ledger, writer: str, store: ObjectStore) -> PushState:
        """The state as saved, or (missing, unreadable, another writer's) rebuilt from a
        listing of this writer's segments."""
        try:
            data = json.loads((ledger.directory / PUSHED_FILE).read_bytes())
            if data["writer"] == writer:
                return cls(writer, {str(k): int(v) for k, v in data["pushed"].items()},
                           {str(k): [int(v[0]), int(v[1])] for k, v in data["planned"].items()},
                           {str(x) for x in data["blobs"]})
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        return cls.from_listing(writer, store, ledger)

    @classmethod
    def from_listing(cls, writer: str, store: ObjectStore, ledger: Ledger) -> PushState:
        """The state the store shows: per file, the end of its segments that follow on from
        byte 0, each file's last one checked against the local bytes.

        Raises:
            StoreError: the store holds other bytes (or more) of a file than this directory
                (another directory with the same writer id).
        """
        by_name: dict[str, dict[int, Segment]] = {}
        for item in store.list(f"{SEGMENTS}{writer}/"):
            try:
                segment = Segment.parse(item.key)
            except StoreError:
                continue
            starts = by_name.setdefault(segment.name, {})
            if segment.start not in starts or starts[segment.start].end < segment.end:
                starts[segment.start] = segment
        state = cls(writer)
        for name, starts in by_name.items():
            position, last = 0, None
            while position in starts:
                last, position = starts[position], starts[position].end
            if last is not None:
                _check_same_bytes(store, ledger, last)
                state.pushed[name] = position
        return state

    def save(self, ledger: Ledger) -> None:
        data = {"writer": self.writer, "pushed": self.pushed, "planned": self.planned,
                "blobs": sorted(self.blobs)}
        try:
            atomic_write_bytes(ledger.directory / PUSHED_FILE,
                               json.dumps(data, separators=(",", ":")).encode())
        except OSError as exc:
            raise LedgerError(f"cannot write {ledger.directory / PUSHED_FILE}: "
                              f"{exc.strerror or exc}") from None


def _check_same_bytes(store: ObjectStore, ledger: Ledger, segment: Segment) -> None:
    """Check that a segment of this writer holds the local file's bytes.

    Raises:
        StoreError: it does not (see :func:`_conflict`).
    """
    path = ledger.directory / segment.name
    try:
        with open(path, "rb") as fh:
            mine = os.pread(fh.fileno(), segment.end - segment.start, segment.start)
    except OSError:
        mine = b""
    found = store.get(segment.key)
    if found is not None and found[0] != mine:
        raise _conflict(store, segment, path)


def _conflict(store: ObjectStore, segment: Segment, path: Path) -> StoreError:
    return StoreError(
        f"store {store.location}: {segment.key} holds other bytes than {path}: two ledger "
        f"directories use writer id {segment.writer} (a copied directory?) — remove the "
        "store/ directory of one of them to give it a new id")


# -- push ----------------------------------------------------------------------------------

def push(ledger: Ledger, store: ObjectStore, *, workers: int = DEFAULT_WORKERS,
         progress: Progress | None = None, lock_timeout: float = SYNC_LOCK_SECONDS
         ) -> PushResult:
    """Upload the complete lines this machine appended since the last push, and the blobs
    they refer to (see the module).

    Raises:
        StoreUnavailable: the store could not be reached (what was uploaded stays, the next
            push does the rest).
        StoreError: the store refused (credentials, no bucket), or holds different bytes
            under one of this writer's segment keys.
        LedgerError: a ledger file or the push state cannot be read or written.
    """
    writer = ledger.writer_id(create=True)
    result = PushResult()
    with sync_lock(ledger, lock_timeout):
        state = PushState.load(ledger, writer, store)
        segments = _segments_to_push(ledger, state, result)
        if not segments:
            return result
        _check_no_overlap(store, writer, segments)
        for segment in segments:
            state.planned.setdefault(segment.name, [segment.start, segment.end])
        state.save(ledger)
        uploader = _Uploader(ledger, store, state, result)
        by_file: dict[str, list[Segment]] = {}
        for segment in segments:  # a file's ranges in order, each after the one before
            by_file.setdefault(segment.name, []).append(segment)
        try:
            for last in run_all(uploader.file, by_file.values(), workers, "uploading files",
                                progress):
                state.pushed[last.name] = last.end
                state.planned.pop(last.name, None)
        finally:
            state.save(ledger)
    return result


def _check_no_overlap(store: ObjectStore, writer: str, segments: list[Segment]) -> None:
    """Refuse to push a range that overlaps another range of this writer in the store.

    By construction a writer's ranges of a file follow on from each other; an overlapping
    one was pushed by another directory with the same writer id (a copied directory), and
    pushing on would give readers two versions of the same bytes.

    Raises:
        StoreError: such a range is in the store.
    """
    wanted = {(s.name, s.start, s.end) for s in segments}
    names = {s.name for s in segments}
    for item in store.list(f"{SEGMENTS}{writer}/"):
        try:
            there = Segment.parse(item.key)
        except StoreError:
            continue
        if there.name not in names or (there.name, there.start, there.end) in wanted:
            continue
        for segment in segments:
            if (segment.name == there.name and segment.start < there.end
                    and there.start < segment.end):
                raise StoreError(
                    f"store {store.location}: {there.key} overlaps the range "
                    f"{segment.start}-{segment.end} of {segment.name} to be pushed: two "
                    f"ledger directories use writer id {writer} (a copied directory?) — "
                    "remove the store/ directory of one of them to give it a new id")


def _segments_to_push(ledger: Ledger, state: PushState, result: PushResult) -> list[Segment]:
    """Per local file: a planned range left by an interrupted push, then what follows."""
    segments = []
    for path in ledger.local_files():
        name = path.name
        if not LEDGER_NAME.fullmatch(name):
            result.problems.append(f"ledger file {path} not pushed: its name cannot be a "
                                   "store key (letters, digits and ._=+- only)")
            continue
        try:
            size = path.stat().st_size
            start = state.pushed.get(name, 0)
            planned = state.planned.get(name)
            if planned and planned[0] == start and start < planned[1] <= size:
                segments.append(Segment(state.writer, name, start, planned[1]))
                start = planned[1]
            if size < start:
                result.problems.append(f"ledger file {path} is shorter than what was pushed "
                                       f"({size} < {start} bytes); not pushed")
                continue
            with open(path, "rb") as fh:
                fh.seek(start)
                end = start + fh.read().rfind(b"\n") + 1
        except OSError as exc:
            raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
        if end > start:
            segments.append(Segment(state.writer, name, start, end))
    return segments


class _Uploader:
    """Uploads segments (on several threads), each after the blobs its lines refer to."""

    def __init__(self, ledger: Ledger, store: ObjectStore, state: PushState,
                 result: PushResult):
        self.ledger, self.store, self.state, self.result = ledger, store, state, result
        self.lock = threading.Lock()

    def file(self, segments: list[Segment]) -> Segment:
        """Upload one file's segments in order; the last one."""
        for segment in segments:
            self.segment(segment)
        return segments[-1]

    def segment(self, segment: Segment) -> Segment:
        path = self.ledger.directory / segment.name
        with open(path, "rb") as fh:
            data = os.pread(fh.fileno(), segment.end - segment.start, segment.start)
        for blob in blobs_of(data):
            self.blob(blob)
        created = self.store.put_new(segment.key, data, content_type="application/x-ndjson")
        if not created:  # a retried upload: the object there must be these bytes
            found = self.store.get(segment.key)
            if found is None or hashlib.sha256(found[0]).digest() != hashlib.sha256(data).digest():
                raise _conflict(self.store, segment, path)
        with self.lock:
            self.result.segments += created
            self.result.present += not created
            self.result.bytes += len(data)
        return segment

    def blob(self, blob: BlobRef) -> None:
        with self.lock:
            if blob.id in self.state.blobs:
                return
            self.state.blobs.add(blob.id)  # one thread uploads it; a failure forgets it
        try:
            created = self._upload(blob)
        except BaseException:
            with self.lock:
                self.state.blobs.discard(blob.id)
            raise
        with self.lock:
            if created is None:
                self.state.blobs.discard(blob.id)
            else:
                self.result.blobs += created
                self.result.present += not created

    def _upload(self, blob: BlobRef) -> bool | None:
        """Upload one blob; whether it was created (None: a problem, reported)."""
        data = blob.read_local(self.ledger)
        if data is None:
            if self.store.head(blob.key) is not None:
                return False  # another machine uploaded it; this one never had it
            with self.lock:
                self.result.problems.append(f"{blob.describe(self.ledger)} is missing or "
                                            "does not match its sha256; not uploaded")
            return None
        sha = hashlib.sha256(data).hexdigest()
        created = self.store.put_new(f"{BLOBS}{sha}", data)
        if blob.kind == "circuits":
            created = self.store.put_new(blob.key, sha.encode(), content_type="text/plain") \
                or created
        return created


# -- what lines refer to -------------------------------------------------------------------

@dataclass(frozen=True)
class BlobRef:
    """A file a ledger line refers to: its kind (``jobs``, ``circuits``, ``snapshots``),
    its name there, and the hash the line records for it."""

    kind: str
    name: str
    sha: str

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.sha}"

    @property
    def key(self) -> str:
        """The object that holds it (for circuits: the ref naming their blob)."""
        return f"{CIRCUIT_REFS}{self.sha}" if self.kind == "circuits" else f"{BLOBS}{self.sha}"

    def local_path(self, ledger: Ledger) -> Path:
        if self.kind == "jobs":
            return ledger.results_dir / self.name
        if self.kind == "snapshots":
            return ledger.snapshots_dir / f"{self.sha}.json.gz"
        return ledger.directory / "circuits" / f"{self.sha}.qpy"

    def describe(self, ledger: Ledger) -> str:
        return f"{self.local_path(ledger)} (sha256 {self.sha[:12]}…)" if self.kind != "circuits" \
            else f"{self.local_path(ledger)}"

    def read_local(self, ledger: Ledger) -> bytes | None:
        """The blob's bytes from the local file (None: missing, or not what the line says)."""
        try:
            data = self.local_path(ledger).read_bytes()
            if self.kind == "snapshots":
                data = gzip.decompress(data)
        except (OSError, EOFError, ValueError):
            return None
        if self.kind != "circuits" and hashlib.sha256(data).hexdigest() != self.sha:
            return None
        return data

    def store_local(self, ledger: Ledger, data: bytes) -> None:
        """Write the blob's bytes where the ledger keeps it (atomically)."""
        body = gzip.compress(data, mtime=0) if self.kind == "snapshots" else data
        atomic_write_bytes(self.local_path(ledger), body)


def blobs_of(data: bytes) -> list[BlobRef]:
    """The files the ledger lines in ``data`` refer to (lines that are not JSON: none)."""
    found: dict[str, BlobRef] = {}
    for line in data.split(b"\n"):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for blob in _refs(record):
            found.setdefault(blob.id, blob)
    return list(found.values())


def _result_ref(result_path: Any, result_sha: Any) -> BlobRef | None:
    """The result file a line names, if its name and sha256 are safe to use."""
    if isinstance(result_path, str) and isinstance(result_sha, str) and SHA256_PATTERN.fullmatch(
            result_sha):
        name = result_name(result_path)
        if name is not None and _safe(name):
            return BlobRef("jobs", name, result_sha)
    return None


def _refs(record: dict[str, Any]) -> Iterator[BlobRef]:
    result = _result_ref(record.get("result_path"), record.get("result_sha256"))
    if result is not None:
        yield result
    isa = record.get("isa_circuit_hash")
    if isinstance(isa, str) and SHA256_PATTERN.fullmatch(isa):
        yield BlobRef("circuits", f"{isa}.qpy", isa)
    snapshot = record.get("backend_snapshot_sha256")
    if isinstance(snapshot, str) and SHA256_PATTERN.fullmatch(snapshot):
        yield BlobRef("snapshots", f"{snapshot}.json.gz", snapshot)


def _safe(name: str) -> bool:
    try:
        check_key_part(name)
        return True
    except StoreError:
        return False


# -- pull ----------------------------------------------------------------------------------

def pull(ledger: Ledger, store: ObjectStore, *, workers: int = DEFAULT_WORKERS,
         progress: Progress | None = None, lock_timeout: float = SYNC_LOCK_SECONDS
         ) -> PullResult:
    """Download the other writers' segments not here yet, each after the blobs its lines refer
    to that are missing here (see the module).

    Raises:
        StoreUnavailable: the store could not be reached (what landed stays whole; the next
            pull does the rest).
        StoreError: the store refused (credentials, no bucket).
        LedgerError: the ledger directory cannot be written.
    """
    writer = ledger.writer_id(create=True)
    result = PullResult()
    with sync_lock(ledger, lock_timeout):
        todo, writers = [], set()
        for item in store.list(SEGMENTS):
            try:
                segment = Segment.parse(item.key)
            except StoreError as exc:
                result.problems.append(str(exc))
                continue
            if segment.writer == writer:
                continue
            writers.add(segment.writer)
            if _pulled_path(ledger, segment).is_file():
                continue
            if item.size != segment.end - segment.start:
                result.problems.append(f"truncated object {item.key!r} in the store ({item.size}"
                                       f" bytes, not {segment.end - segment.start}); skipped")
                continue
            todo.append(segment)
        result.writers = len(writers)
        downloader = Downloader(ledger, store, result)
        for _ in run_all(downloader.segment, todo, workers, "downloading", progress):
            pass
        _settle_results(ledger, downloader)
    return result


def _settle_results(ledger: Ledger, downloader: Downloader) -> None:
    """Make the result file of each record whose pulled line names another result than the
    file here holds the bytes that the union's latest line of the record names.

    Two machines that both collected a job wrote two result files of the same name (their
    ``collected_at`` differs); without this, each would find its file not matching the
    other's winning line and download the result again, for ever.
    """
    if not downloader.with_results:
        return
    entries = ledger.fold().entries
    for record_id in sorted(downloader.with_results):
        entry = entries.get(record_id)
        blob = entry and _result_ref(entry.summary.result_path, entry.summary.result_sha256)
        if not blob:
            continue
        try:
            if sha256_file(blob.local_path(ledger)) == blob.sha:
                continue
        except FileNotFoundError:
            pass
        except OSError:
            continue  # unreadable: the collector's result check reports it
        downloader.fetch(blob, f"record {record_id}")


def _pulled_path(ledger: Ledger, segment: Segment) -> Path:
    return (ledger.remote_dir / segment.writer / segment.name
            / f"{segment.start}-{segment.end}.jsonl")


class Downloader:
    """Downloads segments and the blobs they refer to (on several threads)."""

    def __init__(self, ledger: Ledger, store: ObjectStore, result: PullResult):
        self.ledger, self.store, self.result = ledger, store, result
        self.lock = threading.Lock()
        self.fetched: set[str] = set()
        self.with_results: set[str] = set()  # records whose result file here differs

    def problem(self, message: str) -> None:
        with self.lock:
            self.result.problems.append(message)

    def segment(self, segment: Segment) -> Segment:
        found = self.store.get(segment.key)
        if found is None:
            self.problem(f"object {segment.key!r} vanished from the store; skipped")
            return segment
        data = found[0]
        reason = not_ledger_lines(data, segment.end - segment.start)
        if reason:
            self.problem(f"{reason} object {segment.key!r} in the store; skipped")
            return segment
        differing = set()
        for blob in blobs_of(data):
            if blob.kind == "jobs" and _differs(blob.local_path(self.ledger), blob.sha):
                differing.add(blob.sha)  # this machine has another result of that name
            self.blob(blob, segment.key)
        atomic_write_bytes(_pulled_path(self.ledger, segment), data)
        with self.lock:
            self.result.segments += 1
            self.with_results.update(_record_ids(data, differing))
        return segment

    def blob(self, blob: BlobRef, referrer: str) -> None:
        """Fetch one blob into the ledger directory, if missing there."""
        with self.lock:
            if blob.id in self.fetched:
                return
            self.fetched.add(blob.id)
        if not blob.local_path(self.ledger).is_file():
            self.fetch(blob, referrer)

    def fetch(self, blob: BlobRef, referrer: str) -> None:
        """Fetch one blob into the ledger directory (sha256-checked), replacing its file."""
        fetched = fetch_blob(self.store, blob)
        if isinstance(fetched, str):
            self.problem(f"{fetched} (referred to by {referrer}); skipped")
            return
        blob.store_local(self.ledger, fetched)
        with self.lock:
            self.result.blobs += 1


def _differs(path: Path, sha: str) -> bool:
    """Whether ``path`` exists and its bytes do not hash to ``sha``."""
    try:
        return sha256_file(path) != sha
    except OSError:
        return False


def _record_ids(data: bytes, shas: set[str]) -> set[str]:
    """The record ids of the lines in ``data`` that name a result of one of ``shas``."""
    found: set[str] = set()
    for line in data.split(b"\n") if shas else []:
        try:
            record = json.loads(line) if b"result_sha256" in line else None
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("record_id"), str) \
                and record.get("result_sha256") in shas:
            found.add(record["record_id"])
    return found


def fetch_blob(store: ObjectStore, blob: BlobRef) -> bytes | str:
    """A blob's bytes from the store, checked against its sha256; or what is wrong with it."""
    sha = blob.sha
    if blob.kind == "circuits":
        ref = store.get(blob.key)
        if ref is None:
            return f"missing object {blob.key!r} in the store"
        sha = ref[0].decode("ascii", "replace").strip()
        if not SHA256_PATTERN.fullmatch(sha):
            return f"damaged object {blob.key!r} in the store (not a sha256)"
    found = store.get(f"{BLOBS}{sha}")
    if found is None:
        return f"missing object {BLOBS}{sha!s} in the store"
    if hashlib.sha256(found[0]).hexdigest() != sha:
        return f"damaged object {BLOBS}{sha!s} in the store (its sha256 does not match)"
    return found[0]


def not_ledger_lines(data: bytes, size: int) -> str | None:
    """Why ``data`` is not a segment of ``size`` bytes of ledger lines ("truncated",
    "foreign"), or None."""
    if len(data) != size or not data.endswith(b"\n"):
        return "truncated"
    for line in data.split(b"\n")[:-1]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            return "foreign"
        if not isinstance(record, dict) or not isinstance(record.get("record_id"), str):
            return "foreign"
    return None


# -- running many at once --------------------------------------------------------------------

def run_all(work: Callable[[Any], Any], items: Iterable[Any], workers: int, what: str,
         progress: Progress | None) -> Iterator[Any]:
    """``work`` over ``items`` on ``workers`` threads, results as they finish; the first
    error stops what has not started and is raised once the running ones are done."""
    items = list(items)
    if progress:
        progress(what, 0, len(items))
    if not items:
        return
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(work, item) for item in items]
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                value = future.result()
            except CancelledError:
                continue
            except (QcourierError, OSError) as exc:
                error = error or exc
                for other in futures:
                    other.cancel()
                continue
            if progress:
                progress(what, done, len(items))
            yield value
    if error is not None:
        raise error
