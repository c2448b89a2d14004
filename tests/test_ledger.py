from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qcourier.errors import LedgerError, UsageError
from qcourier.ledger import store as L
from qcourier.ledger.record import SCHEMA_VERSION, JobStatus, LedgerRecord
from qcourier.ledger.store import Ledger


def make_record(**overrides) -> LedgerRecord:
    data = dict(service="local", backend="fake_fez", experiment_type="bell", shots=100,
                num_circuits=1, circuit_hash="a" * 64, isa_circuit_hash="b" * 64,
                transpiled_depth=5, transpiled_gates={"cz": 1}, job_id="j" * 20)
    data.update(overrides)
    return LedgerRecord(**data)


def test_append_and_fold_keeps_last_line_per_record(ledger: Ledger):
    path = ledger.new_file()
    first = make_record()
    second = make_record(job_id="k" * 20)
    L.append(path, [first, second])
    L.append(path, first.evolve(status=JobStatus.RUNNING))
    L.append(path, first.evolve(status=JobStatus.COMPLETED))
    fold = ledger.fold()
    assert fold.problems == []
    assert [r.job_id for r in fold.records] == ["j" * 20, "k" * 20]
    assert fold.entries[first.record_id].record.status is JobStatus.COMPLETED
    assert fold.entries[second.record_id].record.status is JobStatus.SUBMITTED
    assert len(path.read_text().splitlines()) == 4  # history is kept


def test_every_line_is_one_whole_json_record(ledger: Ledger):
    path = ledger.new_file()
    L.append(path, [make_record() for _ in range(3)])
    for line in path.read_text().splitlines():
        assert json.loads(line)["schema_version"] == SCHEMA_VERSION


def test_torn_last_line_is_reported_and_skipped_and_next_append_starts_fresh(ledger: Ledger):
    path = ledger.new_file()
    good = make_record()
    L.append(path, good)
    with open(path, "ab") as fh:
        fh.write(good.to_line().encode()[:40])  # a write cut short by a crash
    fold = ledger.fold()
    assert [r.record_id for r in fold.records] == [good.record_id]
    [problem] = fold.problems
    assert problem.torn and problem.line == 2
    assert f"{path}:2: torn last line" in str(problem)

    later = make_record(job_id="z" * 20)
    L.append(path, later)
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == good.to_line().encode()[:40]  # the torn line is kept as it was
    fold = ledger.fold()
    assert {r.job_id for r in fold.records} == {"j" * 20, "z" * 20}
    assert len(fold.problems) == 1 and not fold.problems[0].torn  # now an inner bad line


def test_malformed_lines_are_reported_with_file_and_line_and_never_dropped(ledger: Ledger):
    path = ledger.new_file()
    L.append(path, make_record())
    with open(path, "a") as fh:
        fh.write("not json at all\n")
        fh.write(json.dumps({"job_id": "x"}) + "\n")
    L.append(path, make_record(job_id="y" * 20))
    before = path.read_bytes()
    fold = ledger.fold()
    assert len(fold.records) == 2
    assert [p.line for p in fold.problems] == [2, 3]
    assert all(str(path) in str(p) and "malformed" in str(p) for p in fold.problems)
    assert path.read_bytes() == before


def test_unknown_fields_from_newer_versions_are_kept(ledger: Ledger):
    path = ledger.new_file()
    data = json.loads(make_record().to_line())
    data["field_from_the_future"] = {"x": 1}
    path.write_text(json.dumps(data) + "\n")
    [record] = ledger.fold().records
    assert record.model_dump()["field_from_the_future"] == {"x": 1}
    assert "field_from_the_future" in record.evolve(status=JobStatus.QUEUED).to_line()


def test_new_file_never_overwrites(ledger: Ledger):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    a, b, c = (ledger.new_file(now) for _ in range(3))
    assert a.name == "submitted_jobs_20260102_030405.jsonl"
    assert b.name == "submitted_jobs_20260102_030405_1.jsonl"
    assert c.name == "submitted_jobs_20260102_030405_2.jsonl"


def test_unwritable_directory_is_a_clear_error(tmp_path: Path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        target = Ledger(blocker / "sub")  # a file where a directory should be
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = Ledger(locked / "sub")
    with pytest.raises(LedgerError, match="cannot create ledger directory"):
        target.new_file()


def test_check_ledger_file(tmp_path: Path, ledger: Ledger):
    with pytest.raises(UsageError, match="does not exist"):
        L.check_ledger_file(tmp_path / "missing.jsonl")
    other = tmp_path / "notes.txt"
    other.write_text("hello\nworld\n")
    with pytest.raises(UsageError, match="is not a qcourier ledger"):
        L.check_ledger_file(other)
    path = ledger.new_file()
    assert L.check_ledger_file(path) == path  # empty is fine
    L.append(path, make_record())
    assert L.check_ledger_file(path) == path


def _append_many(path: str, tag: int, count: int) -> None:
    for i in range(count):
        L.append(Path(path), make_record(job_id=f"{tag:02d}{i:018d}"))


def test_concurrent_appends_from_processes_stay_whole(ledger: Ledger):
    path = ledger.new_file()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), t, 40)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    fold = ledger.fold()
    assert fold.problems == []
    assert len(fold.records) == 160


APPENDER = """
import sys
from pathlib import Path
from qcourier.ledger import store as L
from qcourier.ledger.record import LedgerRecord
path = Path(sys.argv[1])
big = {"pad": "x" * 200_000}  # large lines make a kill mid-write likely
i = 0
while True:
    L.append(path, LedgerRecord(service="local", backend="b", experiment_type="bell", shots=1,
        num_circuits=1, circuit_hash="h", isa_circuit_hash="h", transpiled_depth=1,
        transpiled_gates={}, job_id=f"{i:020d}", metadata=big))
    i += 1
"""


def test_kill_9_during_appends_leaves_a_readable_ledger(ledger: Ledger):
    import random

    rng = random.Random(1234)
    path = ledger.new_file()
    for kill in range(1, 6):
        proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)])
        time.sleep(0.6 + rng.random() * 0.6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fold = ledger.fold()  # never raises
        # each kill can tear at most the one line being written
        assert len(fold.problems) <= kill
        assert all(p.torn == (p.line == len(path.read_bytes().split(b"\n"))) for p in fold.problems)
        count = len(fold.records)
        # the next append always starts a fresh, whole line
        L.append(path, make_record(job_id="after-kill-000000000"))
        assert len(ledger.fold().records) == count + 1
    assert len(ledger.fold().records) > 5


def test_atomically_written_files_get_ordinary_modes(tmp_path: Path):
    """Not the 0600 of a temp file: node_exporter (another user) reads the metrics file."""
    import os
    import stat

    from qcourier.files import atomic_write_bytes

    old = os.umask(0o022)
    try:
        path = tmp_path / "metrics.prom"
        atomic_write_bytes(path, b"x 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
