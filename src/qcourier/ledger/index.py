"""The fold index: each ledger file's fold, kept so that folding a large ledger reads little.

For a ledger file ``F`` the index ``<ledger>/cache/index/F.json`` holds the fold of F's
complete lines up to a byte offset: one row per record (its summary, and the offset and
length of its latest line), the malformed lines, and how many lines were read. Folding F
then reads the index and only what was appended since; the whole record is read from its
line when someone asks for it.

The JSONL file stays the source of truth. An index is used only while it still describes
its file: the same inode, not longer than the file, and the same first and last 4 KB before
its offset (qcourier only ever appends to ledger files). Otherwise — missing, unreadable,
of another format, a replaced or shortened file — the file is folded from its first line
and the index written again. Indexes are written atomically, so a crash or two processes
writing one at once leave a correct index or none; deleting ``cache/`` is always safe. A
ledger directory that cannot be written to is folded without an index.

This module knows nothing of qiskit or of services.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from qcourier.ledger.status import JobStatus
from qcourier.ledger.summary import Entry, LedgerProblem, RecordSummary

#: Bumped whenever the layout of an index changes; an index of another format is rebuilt.
INDEX_FORMAT = 1
_PROBE_BYTES = 4096
_STATUS = {s.value: s for s in JobStatus}
_TIME_FIELDS = tuple(RecordSummary._fields.index(name)
                     for name in ("submission_time", "updated_at", "completion_time"))
_SHARED_FIELDS = tuple(RecordSummary._fields.index(name)
                       for name in ("service", "backend", "experiment_type", "logical_state"))
_STATUS_FIELD = RecordSummary._fields.index("status")


def index_path(index_dir: Path, ledger_file: Path) -> Path:
    """Where the index of ``ledger_file`` lives."""
    return index_dir / f"{ledger_file.name}.json"


#: How a ledger file looked when it was folded: inode, the bytes of complete lines read,
#: and the modification and change times (ns) seen before reading. A file that still shows
#: the same four (as ``os.stat`` gives them) has not changed since: qcourier only appends,
#: and an append changes the size.
Stamp = tuple[int, int, int, int]


def stamp_of(st: os.stat_result, size: int | None = None) -> Stamp:
    """The stamp of a file as ``st`` shows it (``size``: of its complete lines, if fewer)."""
    return (st.st_ino, st.st_size if size is None else size, st.st_mtime_ns, st.st_ctime_ns)


def fold_file(path: Path, index_dir: Path | None) -> tuple[dict[str, Entry], list[LedgerProblem]]:
    """The latest entry of every record in one ledger file, and its unreadable lines.

    Uses and refreshes the file's index in ``index_dir`` (``None``: no index).

    Raises:
        OSError: the ledger file cannot be read.
    """
    entries, problems, _stamp = fold_file_stamped(path, index_dir)
    return entries, problems


def fold_file_stamped(path: Path, index_dir: Path | None
                      ) -> tuple[dict[str, Entry], list[LedgerProblem], Stamp]:
    """:func:`fold_file`, and the stamp of the file as it was folded (:data:`Stamp`).

    Raises:
        OSError: the ledger file cannot be read.
    """
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        known = _load(index_dir, path, fh, st) if index_dir is not None else None
        rows, problems, lines, start = known or ({}, [], 0, 0)
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    entries = {record_id: _entry(row, path) for record_id, row in rows.items()}
    problem_list = [LedgerProblem(path, line, reason) for line, reason in problems]
    if data.strip():  # lines the index does not hold yet: validated, so pydantic is needed
        from pydantic import ValidationError

        from qcourier.ledger.record import LedgerRecord, summarise_error
    position, number = 0, lines
    while position < end:
        stop = data.index(b"\n", position)
        number += 1
        raw = data[position:stop]
        if raw.strip():
            try:
                record = LedgerRecord.model_validate_json(raw)
            except ValidationError as exc:
                reason = summarise_error(exc)
                problems.append((number, reason))
                problem_list.append(LedgerProblem(path, number, reason))
            else:
                summary = RecordSummary.of(record)
                rows[record.record_id] = _row(summary, start + position, stop - position)
                # Only the summary is kept: a fold of 100,000 new lines must not hold 100,000
                # whole records (each is read again from its line when asked for).
                entries[record.record_id] = Entry(summary, path, start + position,
                                                  stop - position)
        position = stop + 1
    tail = data[end:]
    if tail.strip():  # no newline yet: a torn line, or one still being written; never indexed
        try:
            record = LedgerRecord.model_validate_json(tail)
            entries[record.record_id] = Entry(RecordSummary.of(record), path,
                                              start + end, len(tail), record)
        except ValidationError as exc:
            problem_list.append(LedgerProblem(path, number + 1, summarise_error(exc), torn=True))
    if index_dir is not None and (known is None or end > 0):
        _save(index_dir, path, st.st_ino, start + end, number, rows, problems)
    return entries, problem_list, stamp_of(st, start + end)


def _row(summary: RecordSummary, offset: int, length: int) -> list[Any]:
    row: list[Any] = list(summary)
    row[_STATUS_FIELD] = summary.status.value
    for i in _TIME_FIELDS:
        if row[i] is not None:
            row[i] = row[i].isoformat()
    row.append(offset)
    row.append(length)
    return row


def _entry(row: list[Any], path: Path) -> Entry:
    values = row[:-2]
    values[_STATUS_FIELD] = _STATUS[values[_STATUS_FIELD]]
    for i in _TIME_FIELDS:
        if values[i] is not None:
            values[i] = datetime.fromisoformat(values[i])
    for i in _SHARED_FIELDS:  # a few distinct values, repeated in every row
        if values[i] is not None:
            values[i] = sys.intern(values[i])
    return Entry(RecordSummary._make(values), path, row[-2], row[-1])


def _probe(fh: Any, size: int) -> tuple[str, str]:
    """sha256 of the first and of the last 4 KB of the file's first ``size`` bytes."""
    fd = fh.fileno()
    head = os.pread(fd, min(size, _PROBE_BYTES), 0)
    start = max(0, size - _PROBE_BYTES)
    tail = os.pread(fd, size - start, start)
    return hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()


def _load(index_dir: Path, path: Path, fh: Any, st: os.stat_result) -> tuple[
        dict[str, list[Any]], list[tuple[int, str]], int, int] | None:
    """The index's rows, problems, line count and offset, if it still describes the file."""
    try:
        index = json.loads(index_path(index_dir, path).read_bytes())
        size = index["size"]
        if (index["format"] != INDEX_FORMAT or index["ino"] != st.st_ino
                or not 0 <= size <= st.st_size
                or [index["head"], index["tail"]] != list(_probe(fh, size))):
            return None
        rows = {row[0]: row for row in index["rows"]}
        problems = [(int(line), str(reason)) for line, reason in index["problems"]]
        return rows, problems, int(index["lines"]), size
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(index_dir: Path, path: Path, ino: int, size: int, lines: int,
          rows: dict[str, list[Any]], problems: list[tuple[int, str]]) -> None:
    from qcourier.files import atomic_write_bytes

    try:
        with open(path, "rb") as fh:
            head, tail = _probe(fh, size)
        body = json.dumps({"format": INDEX_FORMAT, "file": path.name, "ino": ino, "size": size,
                           "lines": lines, "head": head, "tail": tail,
                           "rows": list(rows.values()), "problems": problems},
                          separators=(",", ":"))
        atomic_write_bytes(index_path(index_dir, path), body.encode(), durable=False)
    except OSError:
        pass  # an index is an optimisation: a read-only ledger is folded without one
