"""Result files of completed records: read them, write them, and check them against the
sha256 the ledger recorded (a rotating batch per collect run, or all of them for
`qcourier ledger check`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.files import (
    STALE_TEMP_SECONDS,
    TEMP_FILE_PATTERN,
    atomic_write_bytes,
    sha256_file,
)
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.ledger.working import FileDigest, WorkingSet, result_name

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.summary import Entry, RecordView


#: A directory's stamp: inode, modification and change times (ns). Any entry made, removed
#: or renamed in it changes the times.
DirStamp = tuple[int, int, int]
#: A stamp is relied on only once its times are this old: a change within the file system's
#: time granularity of the last one could leave them as they were.
_SETTLE_NS = 20_000_000
#: More result files than this to look up one by one: one listing of ``jobs/`` is cheaper.
_STAT_AT_MOST = 2000


def _dir_stamp(directory: Path) -> DirStamp | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _settled_stamp(directory: Path) -> DirStamp | None:
    """The directory's stamp, once a change just now can no longer leave it unchanged."""
    stamp = _dir_stamp(directory)
    if stamp is not None:
        wait = _SETTLE_NS - (time.time_ns() - max(stamp[1], stamp[2]))
        if wait > 0:
            time.sleep(wait / 1e9)
            stamp = _dir_stamp(directory)
    return stamp


class ResultCheck:
    """Whether completed records' result files can still be trusted, cheaply on every run.

    Every collect run (:meth:`scan`) finds every result file that went missing, and
    re-hashes ``batch`` of them against the sha256 in the ledger, taking turns over the
    completed records (a cursor in ``cache/result-check.json``), so every file is re-hashed
    once every ``n / batch`` runs; ``batch=None`` re-hashes them all. A result file is
    hashed when it is written, so a new one is always right.

    Missing files are found without looking at every one: the state file also keeps the
    stamp of ``jobs/`` (:data:`DirStamp`) and, per ledger file, the stamp of the file whose
    completed records all had their result there. While ``jobs/`` shows that stamp, nothing
    was removed from it, so only the records of ledger files that changed since are looked
    up (a ``stat`` each). Otherwise ``jobs/`` is listed once and every completed record's
    name (the working set's digests hold them) looked up in the listing; that listing also
    removes temp files that a killed writer left there. This run's own result files are
    written through :meth:`write`, which keeps the stamp across them: the next run lists
    ``jobs/`` only if something else changed it.
    """

    def __init__(self, ledger: Ledger, batch: int | None):
        self.ledger = ledger
        self.batch = batch
        self.state_path = ledger.directory / "cache" / "result-check.json"
        self._listing: set[str] | None = None
        self._position = 0  # index of the next completed record among this run's
        try:
            self._state = json.loads(self.state_path.read_bytes())
            self.cursor = int(self._state["cursor"])
        except (OSError, ValueError, KeyError, TypeError):
            self._state, self.cursor = {}, 0
        self._lock = threading.Lock()
        self._scanned = False
        self._expected: DirStamp | None = None  # jobs/ as this run last left it
        self._tainted = False  # jobs/ changed by someone else during this run
        self._temp_seen = False
        self._verified: dict[str, list[int]] = {}

    def problem(self, record: RecordView) -> str | None:
        """Why a completed record's result file cannot be trusted, or None if it can."""
        if record.status is not JobStatus.COMPLETED or not record.result_path:
            return None
        position, self._position = self._position, self._position + 1
        due = self._due(position)
        if not due and self._listed(record.result_path):  # the common case: no Path built
            return None
        return self._file_problem(record, due)

    def _file_problem(self, record: RecordView, rehash: bool) -> str | None:
        path = self.ledger.directory / (record.result_path or "")
        if not path.is_file():
            return "its result file is missing"
        if rehash and sha256_file(path) != record.result_sha256:
            return "its result file does not match the sha256 in the ledger"
        return None

    def _listed(self, relative: str) -> bool:
        """Whether ``jobs/<name>`` is in this run's one listing of ``jobs/``."""
        name = result_name(relative)
        if name is None:
            return False  # not where qcourier writes results: looked at on its own
        if self._listing is None:
            try:
                self._listing = set(os.listdir(self.ledger.results_dir))
            except OSError:
                self._listing = set()
        return name in self._listing

    def _due(self, position: int) -> bool:
        if self.batch is None:
            return True
        return self.cursor <= position < self.cursor + self.batch

    # -- the collect run's check, over a working set -----------------------------------------

    def scan(self, working: WorkingSet) -> list[tuple[Entry, str]]:
        """The completed records of the working set's files whose result file cannot be
        trusted, and why: this run's batch re-hashed, and every missing file found (see the
        class). Reads only the ledger files that hold this run's batch or a missing file.

        Raises:
            LedgerError: such a ledger file cannot be read.
        """
        self._scanned = True
        found: dict[str, tuple[Entry, str]] = {}
        position = 0
        for digest in working.files:
            first, position = position, position + digest.result_count
            if digest.result_count and self._batch_overlaps(first, position):
                for n, entry in enumerate(working.completed(digest), start=first):
                    if self._due(n):
                        reason = self._file_problem(entry.summary, rehash=True)
                        if reason is not None:
                            found[entry.summary.record_id] = (entry, reason)
        self._position = position
        for digest, names in self._missing(working).items():
            bad = {f"jobs/{name}" for name in names} | set(digest.other_results)
            for entry in working.completed(digest):
                rid = entry.summary.record_id
                if rid not in found and entry.summary.result_path in bad and \
                        not (self.ledger.directory / entry.summary.result_path).is_file():
                    found[rid] = (entry, "its result file is missing")
        return list(found.values())

    def _batch_overlaps(self, first: int, stop: int) -> bool:
        return self.batch is None or max(first, self.cursor) < min(stop, self.cursor + self.batch)

    def _missing(self, working: WorkingSet) -> dict[FileDigest, list[str]]:
        """Per ledger file that may have one: its result names not in ``jobs/``."""
        jobs = self.ledger.results_dir
        stamp = _dir_stamp(jobs)
        verified = self._state.get("verified") if isinstance(self._state, dict) else None
        if not isinstance(verified, dict):
            verified = None
        trusted = (working.full is None and stamp is not None and verified is not None
                   and self._state.get("jobs") == list(stamp) and not self._state.get("temp"))
        missing: dict[FileDigest, list[str]] = {}
        if trusted and verified is not None:
            self._verified = dict(verified)
            self._expected = stamp
            todo = [d for d in working.files  # the others' files were there, and none left
                    if d.stamp is None or verified.get(d.path.name) != list(d.stamp)]
            listing = (self._list_jobs() if sum(d.result_count for d in todo) > _STAT_AT_MOST
                       else None)
            for digest in todo:
                names = [n for n in digest.names().results
                         if (n not in listing if listing is not None
                             else not os.path.isfile(jobs / n))]
                self._note(digest, names, missing)
        else:
            self._expected = _settled_stamp(jobs)
            listing = self._list_jobs()
            for digest in working.files:
                self._note(digest, [n for n in digest.names().results if n not in listing],
                           missing)
        for digest in working.files:  # results kept elsewhere: looked at on every run
            if any(not (self.ledger.directory / p).is_file() for p in digest.other_results):
                missing.setdefault(digest, [])
                self._verified.pop(digest.path.name, None)
        return missing

    def _note(self, digest: FileDigest, names: list[str],
              missing: dict[FileDigest, list[str]]) -> None:
        if names:
            missing[digest] = names
            self._verified.pop(digest.path.name, None)
        elif digest.stamp is not None:
            self._verified[digest.path.name] = list(digest.stamp)

    def _list_jobs(self) -> set[str]:
        """The names in ``jobs/``; temp files a killed writer left there are removed."""
        jobs = self.ledger.results_dir
        try:
            names = set(os.listdir(jobs))
        except OSError:
            return set()
        cutoff = time.time() - STALE_TEMP_SECONDS
        for name in [n for n in names if n.startswith(".") and n.endswith(".tmp")]:
            if not TEMP_FILE_PATTERN.fullmatch(name):
                continue
            try:
                st = os.lstat(jobs / name)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(jobs / name)
                    names.discard(name)
                    continue
            except OSError:
                pass
            self._temp_seen = True  # a live writer's, or too young: listed again next run
        return names

    def write(self, target: Path, data: bytes) -> str:
        """Write a result file in ``jobs/`` atomically; return its sha256.

        The temp file is made in ``cache/``, so only the rename changes ``jobs/``, and the
        rename is done under a lock between two stamps of ``jobs/``: when every change the
        run sees is its own, the next run need not list ``jobs/``.
        """
        with self._lock:
            if self._expected is None and not target.parent.is_dir():
                # jobs/ made now: absent when scanned, so nothing was in it to lose
                target.parent.mkdir(parents=True, exist_ok=True)
                self._expected = _dir_stamp(target.parent) if self._scanned else None

        def rename(tmp: str, path: Path) -> None:
            with self._lock:
                if _dir_stamp(path.parent) != self._expected:
                    self._tainted = True
                try:
                    os.replace(tmp, path)
                finally:
                    self._expected = _dir_stamp(path.parent)

        try:
            return atomic_write_bytes(target, data, temp_dir=self.ledger.directory / "cache",
                                      rename=rename)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with self._lock:
                self._tainted = True  # cache/ on another file system: written in place
            return atomic_write_bytes(target, data)

    def save(self) -> None:
        """Move the cursor past this run's batch (to the start after the last record), and
        keep what :meth:`scan` learnt of ``jobs/``."""
        if self.batch is None and not self._scanned:
            return
        nxt = 0 if self.batch is None else self.cursor + self.batch
        nxt = 0 if nxt >= self._position else nxt
        state: dict[str, Any] = {"cursor": nxt}
        if self._scanned:
            stamp = _settled_stamp(self.ledger.results_dir)
            with self._lock:
                trusted = not self._tainted and stamp is not None and stamp == self._expected
            state.update(jobs=list(stamp) if trusted and stamp else None,
                         temp=self._temp_seen, verified=self._verified)
        if state != self._state:
            try:
                atomic_write_bytes(self.state_path, json.dumps(state).encode(), durable=False)
            except OSError:
                pass  # a cache: the next run starts from the same place


def read_result(ledger_dir: Path, record: LedgerRecord) -> tuple[dict[str, Any] | None, str | None]:
    """A record's result file as a dict, or ``(None, why it cannot be read)``."""
    if not record.result_path:
        return None, "no result_path recorded"
    path = Path(ledger_dir) / record.result_path
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    except ValueError as exc:
        return None, f"{path} is not JSON ({exc})"
    if not isinstance(payload, dict):
        return None, f"{path} is not a JSON object"
    return payload, None

