"""The fold index (``<ledger>/cache/index``): a fold through it is always the fold of the JSONL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_ledger import make_record

from qcourier.errors import LedgerError
from qcourier.ledger import index as ledger_index
from qcourier.ledger import store as L
from qcourier.ledger.record import JobStatus, LedgerRecord, RecordSummary
from qcourier.ledger.store import Ledger


def plain_fold(ledger: Ledger) -> L.Fold:
    """The fold without any index: every line read and validated."""
    fold = L.Fold()
    for path in ledger.files():
        entries, problems = ledger_index.fold_file(path, None)
        fold.entries.update(entries)
        fold.problems.extend(problems)
    return fold


def same(a: L.Fold, b: L.Fold) -> None:
    assert list(a.entries) == list(b.entries)
    assert [r.model_dump() for r in a.records] == [r.model_dump() for r in b.records]
    assert a.summaries == b.summaries
    assert [str(p) for p in a.problems] == [str(p) for p in b.problems]


def validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the lines validated from now on (a one-item list, updated in place)."""
    seen = [0]
    real = LedgerRecord.model_validate_json.__func__

    def counting(cls, data, *args, **kwargs):
        seen[0] += 1
        return real(cls, data, *args, **kwargs)

    monkeypatch.setattr(LedgerRecord, "model_validate_json", classmethod(counting))
    return seen


def study(ledger: Ledger) -> tuple[Path, list[LedgerRecord]]:
    path = ledger.new_file()
    records = [make_record(job_id=f"{i:020d}") for i in range(5)]
    L.append(path, records)
    L.append(path, records[1].evolve(status=JobStatus.RUNNING))
    L.append(path, records[1].evolve(status=JobStatus.COMPLETED, usage_seconds=2.5))
    with open(path, "ab") as fh:
        fh.write(b'{"not": "a record"}\n')
    L.append(path, records[3].evolve(status=JobStatus.FAILED, error="boom"))
    return path, records


def test_fold_through_the_index_is_the_fold_of_the_lines(ledger: Ledger):
    path, records = study(ledger)
    first = ledger.fold()  # builds the index
    assert (ledger.index_dir / f"{path.name}.json").is_file()
    second = ledger.fold()  # reads it
    same(first, plain_fold(ledger))
    same(second, plain_fold(ledger))
    assert second.entries[records[1].record_id].summary.status is JobStatus.COMPLETED
    assert second.entries[records[1].record_id].record.usage_seconds == 2.5
    [problem] = second.problems
    assert problem.line == 8 and not problem.torn


def test_only_appended_lines_are_read_again(ledger: Ledger, monkeypatch: pytest.MonkeyPatch):
    path, records = study(ledger)
    ledger.fold()
    count = validations(monkeypatch)
    fold = ledger.fold()
    assert count[0] == 0  # nothing new: no line validated
    L.append(path, records[0].evolve(status=JobStatus.QUEUED))
    fold = ledger.fold()
    assert count[0] == 1
    assert fold.entries[records[0].record_id].summary.status is JobStatus.QUEUED
    fold.entries[records[2].record_id].record  # a whole record is read on demand
    assert count[0] == 2
    same(fold, plain_fold(ledger))


def test_a_torn_last_line_is_never_indexed(ledger: Ledger):
    path, records = study(ledger)
    with open(path, "ab") as fh:
        fh.write(records[0].evolve(status=JobStatus.RUNNING).to_line().encode()[:50])
    fold = ledger.fold()
    assert fold.problems[-1].torn
    same(ledger.fold(), plain_fold(ledger))
    # The next append starts a fresh line: the torn one becomes an ordinary malformed line.
    L.append(path, records[0].evolve(status=JobStatus.QUEUED))
    fold = ledger.fold()
    same(fold, plain_fold(ledger))
    assert [p.torn for p in fold.problems] == [False, False]
    assert fold.entries[records[0].record_id].summary.status is JobStatus.QUEUED


@pytest.mark.parametrize("damage", ["replaced", "shortened", "edited", "index garbage",
                                    "index other format", "index deleted"])
def test_a_stale_index_is_rebuilt(ledger: Ledger, damage: str):
    path, records = study(ledger)
    ledger.fold()
    index = ledger.index_dir / f"{path.name}.json"
    lines = path.read_bytes().splitlines(keepends=True)
    if damage == "replaced":  # same content plus a change, through a new inode
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(lines[:2]))
        os.replace(tmp, path)
    elif damage == "shortened":
        path.write_bytes(b"".join(lines[:3]))
    elif damage == "edited":  # in place, same length, in the first line
        edited = lines[0].replace(b'"bell"', b'"ghz!"')
        assert len(edited) == len(lines[0])
        with open(path, "r+b") as fh:
            fh.write(edited)
    elif damage == "index garbage":
        index.write_bytes(b"{not json")
    elif damage == "index other format":
        data = json.loads(index.read_bytes())
        data["format"] = 999
        data["rows"] = []
        index.write_text(json.dumps(data))
    else:
        index.unlink()
    same(ledger.fold(), plain_fold(ledger))
    same(ledger.fold(), plain_fold(ledger))


def test_an_unwritable_cache_does_not_stop_a_fold(ledger: Ledger, monkeypatch: pytest.MonkeyPatch):
    path, _ = study(ledger)

    def refuse(*_args, **_kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr("qcourier.files.atomic_write_bytes", refuse)
    same(ledger.fold(), plain_fold(ledger))
    assert not ledger.index_dir.exists()


def test_a_line_changed_after_indexing_is_a_clear_error(ledger: Ledger):
    path, records = study(ledger)
    ledger.fold()
    fold = ledger.fold()
    with open(path, "r+b") as fh:  # break the first line behind the index's back
        fh.write(b"XXXX")
    with pytest.raises(LedgerError, match="changed after it was indexed"):
        fold.entries[records[0].record_id].record


def test_summary_fields_are_record_fields():
    record = make_record(status=JobStatus.COMPLETED, usage_seconds=1.5)
    summary = RecordSummary.of(record)
    for name in RecordSummary._fields:
        assert name in LedgerRecord.model_fields
        assert getattr(summary, name) == getattr(record, name)


def test_jobs_file_outside_the_ledger_writes_no_index(ledger: Ledger, tmp_path: Path):
    path, _ = study(ledger)
    elsewhere = tmp_path / "elsewhere" / path.name
    elsewhere.parent.mkdir()
    shutil.copy(path, elsewhere)
    shutil.rmtree(ledger.directory / "cache", ignore_errors=True)
    fold = ledger.fold([elsewhere])
    assert len(fold.entries) == 5
    assert not ledger.index_dir.exists()


APPENDER = """
import sys
from pathlib import Path
from qcourier.ledger import store as L
from test_ledger import make_record
path = Path(sys.argv[1])
for i in range(300):
    record = make_record(job_id=f"{i:020d}")
    L.append(path, record)
    L.append(path, record.evolve(error=str(i)))
"""

FOLDER = """
import sys
from pathlib import Path
from qcourier.ledger.store import Ledger
ledger = Ledger(Path(sys.argv[1]))
for _ in range(60):
    fold = ledger.fold()
    for entry in fold.entries.values():
        assert entry.summary.record_id == entry.record.record_id
print(len(fold.entries))
"""


def test_folders_and_an_appender_in_parallel_processes_agree(ledger: Ledger):
    """Two processes fold (and rewrite the index) while a third appends: the index never
    makes a fold differ from the lines."""
    path = ledger.new_file()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], env=env)
    folders = [subprocess.Popen([sys.executable, "-c", FOLDER, str(ledger.directory)], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert appender.wait(timeout=120) == 0
    for folder in folders:
        out, _ = folder.communicate(timeout=120)
        assert folder.returncode == 0
    fold = ledger.fold()
    same(fold, plain_fold(ledger))
    assert len(fold.entries) == 300
    assert all(e.record.error == str(int(e.record.job_id)) for e in fold.entries.values())
