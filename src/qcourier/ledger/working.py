"""The working set: what a collect run and the budget guard need of the ledger, without the rest.

A study's ledger only grows, and most of it is final and long out of the budget window. A
collect run (and a submission's guard) needs only:

- the records that are not final (to poll, settle or submit);
- the final ones that the budget guard, the pace rule and the queue's per-minute limit can
  still count: those with a time (submitted, last line, completed) in the last
  :data:`HORIZON`, longer than any of their windows;
- the final ones a ``--resubmit-failed`` run may retry (:func:`may_be_retried`) and that
  no record retries yet;
- how many records there are of each status, and, for the result check, which result
  files the completed ones name.

That is a ledger file's *digest*, kept for every file in ``<ledger>/cache/index/open.json``
beside the fold index (the hashes of its record ids and the names of its result files,
needed less often, in ``cache/index/<file>.names.json``). A digest is used while its file still shows the stamp it was made
from (:data:`~qcourier.ledger.index.Stamp`: inode, size, modification and change times;
one ``stat`` per file); a file that changed, or is new, is folded again through its fold
index (only its appended lines are read) and its digest made anew. So a collect run beside
100,000 final records reads one small file and stats each ledger file; it never folds,
counts or iterates the final records.

Like the fold index, the digests are derived data: deleting ``cache/`` is always safe, a
digest that does not match its file is remade, the file is written atomically (a crash or
two writers leave a correct file or the old one: each digest describes the stamp it
records, and a stale one does not match its file), and a ledger directory that cannot be
written is worked on without it.

The working set is the full fold, restricted: its entries are the full fold's for the
records it keeps, its counts and problems those of the full fold. That rests on every
record living in one file, as qcourier writes them (a retry and every change of a record
go to its own file); each digest keeps a hash of each record id, and when a changed file
brings a record id another file holds too (a ledger file copied within the directory), the
working set is made from a full fold instead, until the ledger has no such record again.
So is it while the ledger holds segments pulled from other writers of a team store (a
record's lines are then in several files, settled by :mod:`qcourier.ledger.union`).

This module knows nothing of qiskit or of services.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.errors import LedgerError
from qcourier.ledger.index import Stamp, _entry, _row, fold_file, fold_file_stamped, stamp_of
from qcourier.ledger.status import FINAL_STATUSES, JobStatus, as_utc, utc_now
from qcourier.ledger.store import Fold, Ledger, is_pulled
from qcourier.ledger.summary import Entry, LedgerProblem, RecordSummary

if TYPE_CHECKING:
    from qcourier.ledger.summary import RecordView

#: How far back a final record can still matter to the budget guard (its 28-day window),
#: the pace rule (the same window, by submission time) and the per-minute limit, with a
#: day's margin for clocks that differ. ``tests/test_ledger_working.py`` checks it against
#: ``accounting.budget.WINDOW``.
HORIZON = timedelta(days=29)
#: A digest's kept records are chosen again (those that left the horizon dropped) daily.
_REFILTER_AFTER = timedelta(days=1)
#: Bumped whenever the layout of the digests changes; digests of another format are remade.
DIGEST_FORMAT = 1
DIGESTS_FILE = "open.json"
NAMES_SUFFIX = ".names.json"
_ID_BYTES = 8
_CIRCUIT_PREFIX = 16
#: New record ids looked up one by one against the others' hashes; more: one set of all.
_FEW_NEW_IDS = 256


def may_be_retried(record: RecordView) -> bool:
    """Whether ``qcollect --resubmit-failed`` retries a record (if no record retries it yet,
    and its retries are not used up): a partial job, or one that failed through the
    system's fault (not charged)."""
    return record.status is JobStatus.PARTIAL or (
        record.status is JobStatus.FAILED and record.failure_class == "system")


def result_name(relative: str) -> str | None:
    """``<name>`` for a result path ``jobs/<name>`` (where qcourier writes results), else None."""
    name = relative[5:] if relative.startswith("jobs/") else ""
    return name if name and "/" not in name and "\n" not in name else None


def latest_time(record: RecordView) -> datetime:
    """The latest of a record's times: submitted, its last line, completed (UTC)."""
    times = [record.updated_at, record.submission_time, record.completion_time]
    return max(as_utc(t) for t in times if t is not None)


@dataclass(frozen=True)
class FileNames:
    """What a digest keeps beside it: the 8-byte blake2b hash of every record id of the file
    (concatenated), and the names in ``jobs/`` of its completed records' result files."""

    ids: bytes
    results: tuple[str, ...]

    @property
    def key(self) -> str:
        """A fingerprint of both, kept in the digest to tell its own names file."""
        digest = hashlib.sha256(self.ids)
        digest.update("\n".join(self.results).encode())
        return digest.hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "ids": base64.b64encode(self.ids).decode(),
                "results": "\n".join(self.results)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileNames:
        results = str(data["results"])
        return cls(base64.b64decode(data["ids"]), tuple(results.split("\n")) if results else ())

    @property
    def id_set(self) -> set[bytes]:
        return {self.ids[i:i + _ID_BYTES] for i in range(0, len(self.ids), _ID_BYTES)}


@dataclass(eq=False)  # one per file: compared (and hashed) by identity
class FileDigest:
    """One ledger file's digest (see the module).

    Attributes:
        path: the ledger file.
        stamp: how the file looked when the digest was made; ``None`` when it is not kept
            (a file outside the ledger directory, or a working set made from a full fold).
        as_of: when the kept records were chosen (a final record is kept if it has a time
            after ``as_of - HORIZON``).
        counts: records by latest status.
        kept: the latest entry of each kept record, in the order they were first written.
        retried: the ``retry_of`` of the file's records.
        problems: the file's unreadable lines, as its fold reports them.
        result_count: its completed records that name a result file.
        other_results: their result paths that are not ``jobs/<name>``, in order.
        names_key: the :attr:`FileNames.key` of its names.
        circuits: the first 16 hex digits of its completed records' circuit hashes, sorted
            (a submission looks for the jobs it would repeat: :func:`working_set`).
        index_dir: where the file's fold index and names file are (``None``: none).
    """

    path: Path
    stamp: Stamp | None
    as_of: datetime
    counts: dict[JobStatus, int]
    kept: dict[str, Entry]
    retried: list[str]
    problems: list[LedgerProblem]
    result_count: int
    other_results: list[str]
    names_key: str
    circuits: list[str]
    index_dir: Path | None
    _names: FileNames | None = None

    @property
    def names_path(self) -> Path | None:
        return None if self.index_dir is None else self.index_dir / f"{self.path.name}{NAMES_SUFFIX}"

    def names(self) -> FileNames:
        """The file's record-id hashes and result names: from its names file, or (missing,
        or not this digest's) from the file's fold, and then written again.

        Raises:
            LedgerError: the ledger file cannot be read.
        """
        if self._names is None:
            self._names = self._stored_names()
        if self._names is None:
            try:
                entries, _problems = fold_file(self.path, self.index_dir)
            except OSError as exc:
                raise LedgerError(f"cannot read ledger file {self.path}: "
                                  f"{exc.strerror or exc}") from None
            self._names = _names_of(entries)
            self.save_names()
        return self._names

    def stored_names(self) -> FileNames | None:
        """The names in the names file, if it is this digest's (else None; never folds)."""
        if self._names is None:
            self._names = self._stored_names()
        return self._names

    def _stored_names(self) -> FileNames | None:
        if self.names_path is None:
            return None
        try:
            data = json.loads(self.names_path.read_bytes())
            names = FileNames.from_json(data)
            return names if data["key"] == self.names_key == names.key else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save_names(self) -> None:
        if self._names is None or self.names_path is None:
            return
        from qcourier.files import atomic_write_bytes

        try:
            atomic_write_bytes(self.names_path, json.dumps(self._names.to_json()).encode(),
                               durable=False)
        except OSError:
            pass  # a cache: made again when needed

    def to_json(self) -> dict[str, Any]:
        return {"stamp": list(self.stamp or ()), "as_of": self.as_of.isoformat(),
                "counts": {status.value: n for status, n in self.counts.items()},
                "rows": [_row(e.summary, e.offset, e.length) for e in self.kept.values()],
                "retried": self.retried,
                # a torn last line is never kept: its file's stamp never matches again
                "problems": [(p.line, p.reason) for p in self.problems if not p.torn],
                "result_count": self.result_count, "other_results": self.other_results,
                "names_key": self.names_key, "circuits": self.circuits}

    @classmethod
    def from_json(cls, path: Path, index_dir: Path, data: dict[str, Any]) -> FileDigest:
        """The digest as stored.

        Raises:
            ValueError, KeyError, TypeError, AttributeError, IndexError: it is not one.
        """
        ino, size, mtime, ctime = (int(x) for x in data["stamp"])
        kept = {}
        for row in data["rows"]:
            entry = _entry(list(row), path)
            kept[entry.summary.record_id] = entry
        return cls(path, (ino, size, mtime, ctime), as_utc(datetime.fromisoformat(data["as_of"])),
                   {JobStatus(k): int(v) for k, v in data["counts"].items()}, kept,
                   [str(x) for x in data["retried"]],
                   [LedgerProblem(path, int(line), str(reason))
                    for line, reason in data["problems"]],
                   int(data["result_count"]), [str(x) for x in data["other_results"]],
                   str(data["names_key"]), [str(x) for x in data["circuits"]], index_dir)


def _names_of(entries: dict[str, Entry]) -> FileNames:
    results = []
    for entry in entries.values():
        s = entry.summary
        if s.status is JobStatus.COMPLETED and s.result_path:
            name = result_name(s.result_path)
            if name is not None:
                results.append(name)
    ids = b"".join(hashlib.blake2b(rid.encode(), digest_size=_ID_BYTES).digest()
                   for rid in entries)
    return FileNames(ids, tuple(results))


def digest_of(path: Path, entries: dict[str, Entry], problems: list[LedgerProblem],
              stamp: Stamp | None, now: datetime, index_dir: Path | None) -> FileDigest:
    """The digest of a file from its fold."""
    since = now - HORIZON
    counts: dict[JobStatus, int] = {}
    retry_of: set[str] = set()
    other: list[str] = []
    results = 0
    for entry in entries.values():
        s = entry.summary
        counts[s.status] = counts.get(s.status, 0) + 1
        if s.retry_of:
            retry_of.add(s.retry_of)
        if s.status is JobStatus.COMPLETED and s.result_path:
            results += 1
            if result_name(s.result_path) is None:
                other.append(s.result_path)
    kept = {rid: e for rid, e in entries.items() if _kept(e.summary, since, retry_of)}
    names = _names_of(entries)
    circuits = sorted({e.summary.circuit_hash[:_CIRCUIT_PREFIX] for e in entries.values()
                       if e.summary.status is JobStatus.COMPLETED})
    return FileDigest(path, stamp, now, counts, kept, sorted(retry_of), list(problems),
                      results, other, names.key, circuits, index_dir, names)


def _kept(summary: RecordSummary, since: datetime, retried: set[str]) -> bool:
    if not summary.status.is_final or latest_time(summary) > since:
        return True
    return may_be_retried(summary) and summary.record_id not in retried


def _refiltered(digest: FileDigest, now: datetime) -> FileDigest:
    """The digest with its records chosen again at ``now`` (its file unchanged)."""
    since = now - HORIZON
    retried = set(digest.retried)
    kept = {rid: e for rid, e in digest.kept.items() if _kept(e.summary, since, retried)}
    return FileDigest(digest.path, digest.stamp, now, digest.counts, kept, digest.retried,
                      digest.problems, digest.result_count, digest.other_results,
                      digest.names_key, digest.circuits, digest.index_dir, digest._names)


@dataclass
class WorkingSet:
    """The part of a ledger's fold that a collect run needs (see the module).

    Attributes:
        entries: the latest entry of every record kept: not final, in the horizon, or one
            that may be retried (and, when asked for, completed with a given circuit hash);
            in the order the records were first written.
        problems: every unreadable line of the files, as the full fold reports them.
        counts: every record of the files by latest status.
        retried: the record ids that some record retries (``retry_of``), all files.
        files: the digest of each file, in order.
        now: when it was made.
    """

    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[LedgerProblem] = field(default_factory=list)
    counts: dict[JobStatus, int] = field(default_factory=dict)
    retried: set[str] = field(default_factory=set)
    files: list[FileDigest] = field(default_factory=list)
    now: datetime = field(default_factory=utc_now)
    #: The full fold it was made from, when record ids repeat across files.
    full: Fold | None = None

    @property
    def summaries(self) -> list[RecordSummary]:
        return [e.summary for e in self.entries.values()]

    @property
    def total(self) -> int:
        """Every record of the files."""
        return sum(self.counts.values())

    @property
    def final(self) -> int:
        """Records whose latest status is final."""
        return sum(n for status, n in self.counts.items() if status in FINAL_STATUSES)

    def completed(self, digest: FileDigest) -> list[Entry]:
        """The completed records of one file that name a result file, in order (the file is
        folded through its index: all its records are read).

        Raises:
            LedgerError: the ledger file cannot be read.
        """
        if self.full is not None:
            entries: Iterable[Entry] = (e for e in self.full.entries.values()
                                        if e.path == digest.path)
        else:
            try:
                entries = fold_file(digest.path, digest.index_dir)[0].values()
            except OSError as exc:
                raise LedgerError(f"cannot read ledger file {digest.path}: "
                                  f"{exc.strerror or exc}") from None
        return [e for e in entries
                if e.summary.status is JobStatus.COMPLETED and e.summary.result_path]


def working_set(ledger: Ledger, now: datetime | None = None,
                paths: Iterable[Path] | None = None,
                circuits: Iterable[str] | None = None) -> WorkingSet:
    """The working set of the ledger's files (default: all of them) at ``now``.

    Args:
        circuits: also keep every completed record of these circuit hashes, whenever it
            finished (a submission's check for the jobs it would repeat); only the files
            that hold one are folded.

    Refreshes the digests (and the fold index of the files that changed).

    Raises:
        LedgerError: a ledger file cannot be read.
    """
    now = as_utc(now or utc_now())
    files = ledger.files() if paths is None else [Path(p) for p in paths]
    wanted = frozenset(circuits or ())
    if any(map(is_pulled, files)):  # a team's union: records span files (see the module)
        return _from_full_fold(ledger.fold(files), files, now, wanted)
    digests = _Digests(ledger)
    found = [digests.digest(path, now) for path in files]
    if paths is None:
        digests.forget_all_but({path.name for path in files})
    unique = digests.unique()
    digests.save()
    if not unique:
        return _from_full_fold(ledger.fold(files), files, now, wanted)
    result = WorkingSet(now=now, files=found)
    prefixes = {c[:_CIRCUIT_PREFIX] for c in wanted}
    for digest in found:
        entries = digest.kept
        if prefixes.intersection(digest.circuits):
            try:
                every = fold_file(digest.path, digest.index_dir)[0]
            except OSError as exc:
                raise LedgerError(f"cannot read ledger file {digest.path}: "
                                  f"{exc.strerror or exc}") from None
            entries = {rid: e for rid, e in every.items()
                       if rid in digest.kept or _of_circuits(e.summary, wanted)}
        result.entries.update(entries)
        result.problems.extend(digest.problems)
        result.retried.update(digest.retried)
        for status, n in digest.counts.items():
            result.counts[status] = result.counts.get(status, 0) + n
    # Exactly the records the full fold would keep now: not those that left the horizon
    # since their digest was made, nor those a record of another file retries.
    since = now - HORIZON
    result.entries = {rid: e for rid, e in result.entries.items()
                      if _kept(e.summary, since, result.retried)
                      or _of_circuits(e.summary, wanted)}
    return result


def _of_circuits(summary: RecordSummary, circuits: frozenset[str]) -> bool:
    return summary.status is JobStatus.COMPLETED and summary.circuit_hash in circuits


def _from_full_fold(fold: Fold, files: list[Path], now: datetime,
                    circuits: frozenset[str]) -> WorkingSet:
    """The working set of a full fold (record ids repeat across files)."""
    by_file: dict[Path, dict[str, Entry]] = {Path(p): {} for p in files}
    for record_id, entry in fold.entries.items():
        by_file.setdefault(entry.path, {})[record_id] = entry
    problems: dict[Path, list[LedgerProblem]] = {}
    for problem in fold.problems:
        problems.setdefault(Path(problem.path), []).append(problem)
    result = WorkingSet(now=now, full=fold, problems=list(fold.problems))
    retried = {e.summary.retry_of for e in fold.entries.values() if e.summary.retry_of}
    for path, entries in by_file.items():
        digest = digest_of(path, entries, problems.get(path, []), None, now, None)
        result.files.append(digest)
        for status, n in digest.counts.items():
            result.counts[status] = result.counts.get(status, 0) + n
    since = now - HORIZON
    result.entries = {rid: e for rid, e in fold.entries.items()
                      if _kept(e.summary, since, retried) or _of_circuits(e.summary, circuits)}
    result.retried = retried
    return result


#: What this process last read or wrote of each ``open.json`` (its stamp, and its parsed
#: content), and the digests made from that content: a collect run takes a fresh working
#: set before each deferred job it submits, and need not parse the same file again. Safe
#: whatever another process did meanwhile: each digest is checked against its own file.
_READ: dict[Path, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}
_MADE: dict[tuple[Path, str], tuple[Any, FileDigest]] = {}


class _Digests:
    """``cache/index/open.json``: every ledger file's digest, as last made."""

    def __init__(self, ledger: Ledger):
        self.directory = ledger.directory
        self.home = ledger.directory.resolve()
        self.index_dir = ledger.index_dir
        self.path = self.index_dir / DIGESTS_FILE
        self.stored: dict[str, Any] = {}
        self.unique_before = False
        self.unique_now = False
        self.changed = False
        self.fresh: dict[str, FileDigest] = {}  # made or chosen again now: to be stored
        self.current: dict[str, FileDigest] = {}  # every file's digest, as used now
        self.new_ids: dict[str, set[bytes]] = {}  # made now: ids that file did not have
        try:
            data = self._read()
            if data["format"] == DIGEST_FORMAT:
                self.stored = dict(data["files"])
                self.unique_before = data["unique"] is True
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        if not self.stored:
            self.changed = True  # missing, unreadable or of another format: written anew

    def _read(self) -> dict[str, Any]:
        with open(self.path, "rb") as fh:
            stamp = stamp_of(os.fstat(fh.fileno()))
            memo = _READ.get(self.path)
            if memo is not None and memo[0] == stamp:
                return memo[1]
            data = json.loads(fh.read())
        self._remember(stamp, data)
        return data

    def _remember(self, stamp: tuple[int, int, int, int], data: dict[str, Any]) -> None:
        if self.path not in _READ and len(_READ) >= 4:  # a few ledgers per process at most
            _READ.clear()
            _MADE.clear()
        _READ[self.path] = (stamp, data)

    def _load(self, path: Path) -> FileDigest | None:
        data = self.stored.get(path.name)
        if data is None:
            return None
        memo = _MADE.get((self.path, path.name))
        if memo is not None and memo[0] is data:
            return memo[1]
        try:
            digest = FileDigest.from_json(path, self.index_dir, data)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None
        _MADE[(self.path, path.name)] = (data, digest)
        return digest

    def digest(self, path: Path, now: datetime) -> FileDigest:
        """The digest of one file: the stored one if it still describes the file, else
        made from the file's fold."""
        try:
            if path.resolve().parent != self.home:  # not of this ledger: never stored
                entries, problems = fold_file(path, None)
                return digest_of(path, entries, problems, None, now, None)
            st = os.stat(path)
        except OSError as exc:
            raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
        known = self._load(path)
        if known is not None and known.stamp == stamp_of(st) and known.as_of <= now:
            if now - known.as_of > _REFILTER_AFTER:
                known = self.fresh[path.name] = _refiltered(known, now)
            self.current[path.name] = known
            return known
        try:
            entries, problems, stamp = fold_file_stamped(path, self.index_dir)
        except OSError as exc:
            raise LedgerError(f"cannot read ledger file {path}: {exc.strerror or exc}") from None
        digest = digest_of(path, entries, problems, stamp, now, self.index_dir)
        self.current[path.name] = self.fresh[path.name] = digest
        self._note_names(known, digest)
        return digest

    def _note_names(self, known: FileDigest | None, digest: FileDigest) -> None:
        """Keep a new digest's names file, and note which of its record ids are new."""
        names = digest.names()
        if known is not None and known.names_key == digest.names_key:
            self.new_ids[digest.path.name] = set()  # the same records: names file as it was
            return
        old = known.stored_names() if known is not None else None
        same_file = known is not None and known.stamp is not None and digest.stamp is not None \
            and known.stamp[0] == digest.stamp[0]
        self.new_ids[digest.path.name] = names.id_set - (old.id_set if old and same_file
                                                         else set())
        digest.save_names()

    def forget_all_but(self, names: set[str]) -> None:
        """Drop the digests (and names files) of files that are gone."""
        for name in set(self.stored) - names:
            del self.stored[name]
            self.changed = True
            try:
                (self.index_dir / f"{name}{NAMES_SUFFIX}").unlink()
            except OSError:
                pass

    def unique(self) -> bool:
        """Whether no record id is in two of the ledger's files, as far as the digests know
        (those used now, and the other stored ones)."""
        new = [(name, h) for name, ids in self.new_ids.items() for h in ids]
        if self.unique_before and not new:
            self.unique_now = True  # no file has a record it did not have when checked
        elif self.unique_before and len(new) <= _FEW_NEW_IDS:
            blobs = self._all_ids()
            self.unique_now = len({h for _name, h in new}) == len(new) and not any(
                _has(blob, h) for name, h in new for other, blob in blobs.items()
                if other != name)
        else:
            seen: set[bytes] = set()
            total = 0
            for blob in self._all_ids().values():
                total += len(blob) // _ID_BYTES
                seen.update(blob[i:i + _ID_BYTES] for i in range(0, len(blob), _ID_BYTES))
            self.unique_now = len(seen) == total
        return self.unique_now

    def _all_ids(self) -> dict[str, bytes]:
        """Every file's record-id hashes: of the digests used now, and the other stored ones."""
        digests = dict(self.current)
        for name in self.stored:
            if name not in digests:
                known = self._load(self.directory / name)
                if known is not None:
                    digests[name] = known
        blobs = {}
        for name, digest in digests.items():
            try:
                blobs[name] = digest.names().ids
            except LedgerError:
                pass  # a file gone meanwhile
        return blobs

    def save(self) -> None:
        """Write the digests if any changed (never fails: they are a cache)."""
        if not (self.changed or self.fresh or self.unique_now != self.unique_before):
            return
        if not self.directory.is_dir():  # no ledger yet (a dry run): create nothing
            return
        from qcourier.files import atomic_write_bytes

        files = dict(self.stored)
        for name, digest in self.fresh.items():
            files[name] = digest.to_json()
        data = {"format": DIGEST_FORMAT, "unique": self.unique_now, "files": files}
        try:
            atomic_write_bytes(self.path, json.dumps(data, separators=(",", ":")).encode(),
                               durable=False)
            self._remember(stamp_of(os.stat(self.path)), data)
            for name, digest in self.fresh.items():
                _MADE[(self.path, name)] = (files[name], digest)
        except OSError:
            pass  # a read-only ledger: worked on without digests


def _has(blob: bytes, item: bytes) -> bool:
    """Whether ``item`` is one of the 8-byte hashes in ``blob``."""
    start = blob.find(item)
    while start != -1:
        if start % _ID_BYTES == 0:
            return True
        start = blob.find(item, start + 1)
    return False
