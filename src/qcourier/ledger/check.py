"""``qcourier ledger check``: read every line of every ledger file, and every result file.

The fold (and its index) skips what it cannot read and says so; this check reads the JSONL
itself, whole, without the index, so it is the authority on what is damaged and where. It
changes nothing: damaged lines stay where they are (the ledger is never rewritten), and a
result file that is missing or differs from its recorded sha256 is downloaded again by the
next ``qcollect``.

It also remembers which problems a quiet ``qcollect`` has already warned about, so that cron
mail says it once per state of the file, not on every run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcourier.files import atomic_write_bytes
from qcourier.ledger.record import LedgerProblem, LedgerRecord
from qcourier.ledger.store import Ledger, read_lines

#: Where a quiet qcollect notes the problems it has warned about.
WARNED_FILE = Path("cache") / "warned-problems.json"


@dataclass
class FileCheck:
    """One ledger file: how many lines and records it holds, and what is wrong with it."""

    path: Path
    lines: int = 0
    records: int = 0
    problems: list[LedgerProblem] = field(default_factory=list)


@dataclass
class LedgerCheck:
    """The whole ledger directory."""

    files: list[FileCheck] = field(default_factory=list)
    results_checked: int = 0
    result_problems: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(len(f.problems) for f in self.files) + len(self.result_problems)

    @property
    def exit_code(self) -> int:
        """0 when nothing is damaged, 1 when anything is."""
        return 1 if self.problems else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "files": [{"path": str(f.path), "lines": f.lines, "records": f.records,
                       "problems": [{"line": p.line, "torn": p.torn, "reason": p.reason}
                                    for p in f.problems]} for f in self.files],
            "results_checked": self.results_checked,
            "result_problems": self.result_problems,
            "problems": self.problems,
        }


def check_ledger(ledger: Ledger, progress=lambda _message: None) -> LedgerCheck:
    """Read every ledger line and re-hash every result file the latest lines name."""
    check = LedgerCheck()
    latest: dict[str, LedgerRecord] = {}
    files = ledger.files()
    for n, path in enumerate(files, start=1):
        progress(f"reading ledger file {n}/{len(files)}: {path.name}")
        item = FileCheck(path)
        for _number, line in read_lines(path):
            item.lines += 1
            if isinstance(line, LedgerProblem):
                item.problems.append(line)
            else:
                item.records += 1
                latest[line.record_id] = line
        check.files.append(item)
    from qcourier.ledger.results import ResultCheck

    results = ResultCheck(ledger, batch=None)  # every file re-hashed
    completed = [r for r in latest.values() if r.status.value == "completed" and r.result_path]
    for n, record in enumerate(completed, start=1):
        if n % 50 == 1:
            progress(f"re-hashing result files {n}/{len(completed)}")
        check.results_checked += 1
        problem = results.problem(record)
        if problem:
            check.result_problems.append(f"job {record.job_id}: {problem} ({record.result_path}); "
                                         "the next qcollect downloads it again")
    return check


def not_yet_warned(ledger: Ledger, problems: list[LedgerProblem]) -> list[LedgerProblem]:
    """The problems not warned about since their file last changed; notes them as warned.

    A file's state is its size and modification time: a problem is warned about again when
    its file changes (a line appended, the file replaced).
    """
    if not problems:
        return []
    path = ledger.directory / WARNED_FILE
    try:
        warned: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        warned = {}
    fresh, seen = [], dict(warned)
    for problem in problems:
        try:
            st = os.stat(problem.path)
        except OSError:
            continue
        state = f"{st.st_size}:{st.st_mtime_ns}"
        key = f"{Path(problem.path).name}:{problem.line}"
        if warned.get(key) != state:
            fresh.append(problem)
            seen[key] = state
    if seen != warned:
        try:
            atomic_write_bytes(path, json.dumps(seen, sort_keys=True).encode(), durable=False)
        except OSError:
            pass  # a read-only ledger: warn every time rather than fail
    return fresh
