"""The working set (``ledger/working.py``): always the full fold, restricted — whatever
happened to the ledger files or to the digests between runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from test_ledger import make_record

from qcourier.accounting.budget import WINDOW
from qcourier.ledger import index as ledger_index
from qcourier.ledger import store as L
from qcourier.ledger import working as W
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus, as_utc, utc_now
from qcourier.ledger.store import Ledger

NOW = utc_now()
OLD = NOW - timedelta(days=60)


def full_fold(ledger: Ledger, paths=None) -> L.Fold:
    """The fold without any index or digest: every line read and validated."""
    fold = L.Fold()
    for path in ledger.files() if paths is None else paths:
        entries, problems = ledger_index.fold_file(path, None)
        fold.entries.update(entries)
        fold.problems.extend(problems)
    return fold


def should_keep(summary, now, retried) -> bool:
    """The working set's rule, written out again: not final, a time in the horizon, or a
    retry candidate no record retries."""
    if not summary.status.is_final:
        return True
    times = [t for t in (summary.submission_time, summary.updated_at, summary.completion_time) if t]
    if max(as_utc(t) for t in times) > now - W.HORIZON:
        return True
    candidate = summary.status is JobStatus.PARTIAL or (
        summary.status is JobStatus.FAILED and summary.failure_class == "system")
    return candidate and summary.record_id not in retried


def assert_full(ws: W.WorkingSet, ledger: Ledger, now=NOW, paths=None) -> None:
    """``ws`` is the full fold of the same files, restricted to what it keeps."""
    fold = full_fold(ledger, paths)
    retried = {e.summary.retry_of for e in fold.entries.values() if e.summary.retry_of}
    kept = {rid: e for rid, e in fold.entries.items() if should_keep(e.summary, now, retried)}
    assert list(ws.entries) == list(kept)
    assert [e.summary for e in ws.entries.values()] == [e.summary for e in kept.values()]
    assert [e.record.model_dump() for e in ws.entries.values()] == \
        [e.record.model_dump() for e in kept.values()]
    assert ws.counts == dict(Counter(e.summary.status for e in fold.entries.values()))
    assert ws.total == len(fold.entries)
    assert [str(p) for p in ws.problems] == [str(p) for p in fold.problems]
    assert ws.retried == retried
    names = [n for d in ws.files for n in d.names().results]
    completed = [e.summary.result_path for e in fold.entries.values()
                 if e.summary.status is JobStatus.COMPLETED and e.summary.result_path]
    in_jobs = [p for p in completed if p.startswith("jobs/")]
    if ws.full is not None:  # each record under the file of its latest line
        names, in_jobs = sorted(names), sorted(in_jobs)
    assert [f"jobs/{n}" for n in names] == in_jobs
    assert sum(d.result_count for d in ws.files) == len(completed)


def finished(record: LedgerRecord, status=JobStatus.COMPLETED, when=OLD, **changes) -> LedgerRecord:
    data = dict(status=status, submission_time=when, completion_time=when, updated_at=when)
    if status is JobStatus.COMPLETED:
        data.update(result_path=f"jobs/{record.job_id}.json", result_sha256="0" * 64)
    data.update(changes)
    return LedgerRecord.model_validate({**record.model_dump(), **data})


def study(ledger: Ledger) -> list[Path]:
    """Three files: old final records of every kind, recent ones, open ones, a bad line."""
    paths = []
    old = [make_record(job_id=f"o{i:019d}") for i in range(6)]
    path = ledger.new_file(NOW - timedelta(days=90))
    L.append(path, old)
    L.append(path, [finished(old[0]), finished(old[1], JobStatus.FAILED, failure_class="user"),
                    finished(old[2], JobStatus.FAILED, failure_class="system"),
                    finished(old[3], JobStatus.PARTIAL, failure_class="system"),
                    finished(old[4], JobStatus.CANCELLED), finished(old[5])])
    paths.append(path)
    path = ledger.new_file(NOW - timedelta(days=40))
    retry = make_record(job_id="r" * 20, retry_of=old[3].record_id, retry_count=1)
    older = [make_record(job_id=f"p{i:019d}") for i in range(3)]
    L.append(path, [retry, *older])
    L.append(path, [finished(retry), finished(older[0]),
                    finished(older[1], JobStatus.FAILED, failure_class="system"),
                    finished(older[2], when=NOW - timedelta(days=2))])  # in the window
    with open(path, "ab") as fh:
        fh.write(b'{"not": "a record"}\n')
    paths.append(path)
    path = ledger.new_file(NOW - timedelta(hours=1))
    recent = [make_record(job_id=f"n{i:019d}") for i in range(4)]
    L.append(path, recent)
    L.append(path, [recent[0].evolve(status=JobStatus.QUEUED),
                    recent[1].evolve(status=JobStatus.DEFERRED, job_id=None),
                    finished(recent[2], when=NOW - timedelta(minutes=5)),
                    recent[3].evolve(status=JobStatus.ERROR, error="lost")])
    paths.append(path)
    return paths


class Spy:
    """Counts the ledger files folded (through the fold index) from now on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.folded: list[str] = []
        real = ledger_index.fold_file_stamped
        monkeypatch.setattr(ledger_index, "fold_file_stamped", self._wrap(real))
        monkeypatch.setattr(W, "fold_file_stamped", ledger_index.fold_file_stamped)
        monkeypatch.setattr(W, "fold_file", ledger_index.fold_file)  # calls the one above

    def _wrap(self, real):
        def spy(path, index_dir):
            self.folded.append(Path(path).name)
            return real(path, index_dir)
        return spy


def test_horizon_covers_the_budget_window():
    assert W.HORIZON >= WINDOW + timedelta(hours=12)


def test_the_working_set_is_the_full_fold_restricted(ledger: Ledger, monkeypatch):
    study(ledger)
    cold = W.working_set(ledger, NOW)
    assert_full(cold, ledger)
    assert (ledger.index_dir / W.DIGESTS_FILE).is_file()
    spy = Spy(monkeypatch)
    warm = W.working_set(ledger, NOW)
    assert spy.folded == []  # nothing changed: no file folded, no line read
    assert_full(warm, ledger)
    kinds = {e.summary.job_id: e.summary.status for e in warm.entries.values()}
    # Open ones, the recent ones, and the system failure no record retries; not the old
    # completed, cancelled or user-failed ones, nor the partial one already retried.
    assert kinds == {
        "o0000000000000000002": JobStatus.FAILED, "p0000000000000000001": JobStatus.FAILED,
        "p0000000000000000002": JobStatus.COMPLETED, "n0000000000000000000": JobStatus.QUEUED,
        None: JobStatus.DEFERRED, "n0000000000000000002": JobStatus.COMPLETED,
        "n0000000000000000003": JobStatus.ERROR}
    assert warm.final == 11 and warm.total == 14


def test_only_the_files_that_changed_are_folded_again(ledger: Ledger, monkeypatch):
    paths = study(ledger)
    W.working_set(ledger, NOW)
    spy = Spy(monkeypatch)
    record = full_fold(ledger).entries
    queued = next(e.record for e in record.values() if e.summary.status is JobStatus.QUEUED)
    L.append(paths[2], finished(queued, when=NOW))
    spy.folded.clear()
    ws = W.working_set(ledger, NOW)
    assert spy.folded == [paths[2].name]
    assert_full(ws, ledger)
    assert ws.entries[queued.record_id].summary.status is JobStatus.COMPLETED
    new = ledger.new_file(NOW)
    L.append(new, make_record(job_id="x" * 20))
    spy.folded.clear()
    ws = W.working_set(ledger, NOW)
    assert spy.folded == [new.name]
    assert_full(ws, ledger)


def test_a_torn_last_line_gives_the_full_folds_answer(ledger: Ledger):
    paths = study(ledger)
    W.working_set(ledger, NOW)
    late = make_record(job_id="t" * 20)
    with open(paths[2], "ab") as fh:
        fh.write(late.to_line().encode()[:50])  # a write cut short
    for _ in range(2):
        ws = W.working_set(ledger, NOW)
        assert_full(ws, ledger)
        assert ws.problems[-1].torn
    L.append(paths[2], late)  # the next append starts on a fresh line
    assert_full(W.working_set(ledger, NOW), ledger)
    with open(paths[2], "ab") as fh:  # a whole record, but no newline yet
        fh.write(late.evolve(status=JobStatus.RUNNING).to_line().encode()[:-1])
    ws = W.working_set(ledger, NOW)
    assert_full(ws, ledger)
    assert ws.entries[late.record_id].summary.status is JobStatus.RUNNING


APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from qcourier.ledger import store as L
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.status import JobStatus
    path, count = Path(sys.argv[1]), int(sys.argv[2])
    record = LedgerRecord.model_validate_json(sys.argv[3])
    print("ready", flush=True)
    for i in range(count):
        record = record.evolve(status=JobStatus.RUNNING if i % 2 else JobStatus.QUEUED,
                               error=f"line {i}")
        L.append(path, record)
        if i % 7 == 0:
            L.append(path, record.evolve(job_id=None, record_id=f"new{i:05d}",
                                         status=JobStatus.DEFERRED))
""")


def test_a_file_appended_by_another_process_gives_the_full_folds_answer(ledger: Ledger):
    paths = study(ledger)
    W.working_set(ledger, NOW)
    queued = next(e.record for e in full_fold(ledger).entries.values()
                  if e.summary.status is JobStatus.QUEUED)
    # Between runs.
    subprocess.run([sys.executable, "-c", APPENDER, str(paths[2]), "3", queued.model_dump_json()],
                   check=True, capture_output=True)
    assert_full(W.working_set(ledger, NOW), ledger)
    # While working sets are made: each is whole, and the last, made after the other
    # process ended, is the full fold (no digest taken mid-append passes for a later state).
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(paths[2]), "300",
                             queued.model_dump_json()], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    seen = 0
    while proc.poll() is None:
        ws = W.working_set(ledger, NOW)
        assert ws.entries[queued.record_id].summary.status in (JobStatus.QUEUED,
                                                               JobStatus.RUNNING)
        seen = max(seen, ws.total)
    assert proc.wait() == 0
    ws = W.working_set(ledger, NOW)
    assert_full(ws, ledger)
    assert ws.entries[queued.record_id].record.error == "line 299"
    assert ws.total >= seen


def test_digests_killed_mid_write_or_damaged_are_remade(ledger: Ledger, tmp_path: Path):
    paths = study(ledger)
    # A process killed between writing the digests' temp file and renaming it.
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        real = os.replace
        def stop(src, dst):
            if str(dst).endswith("open.json"):
                print("written", flush=True)
                time.sleep(600)
            real(src, dst)
        os.replace = stop
        from qcourier.ledger.store import Ledger
        from qcourier.ledger.working import working_set
        working_set(Ledger(Path({str(ledger.directory)!r})))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (ledger.index_dir / W.DIGESTS_FILE).exists()
    assert_full(W.working_set(ledger, NOW), ledger)
    digests = ledger.index_dir / W.DIGESTS_FILE
    body = digests.read_bytes()
    for damage in (body[: len(body) // 2], b"[]", json.dumps({"format": 99}).encode(),
                   body.replace(b'"counts":{', b'"counts":{"bogus":1,')):
        digests.write_bytes(damage)
        assert_full(W.working_set(ledger, NOW), ledger)
    for names in ledger.index_dir.glob(f"*{W.NAMES_SUFFIX}"):
        names.write_bytes(b"{")
    ws = W.working_set(ledger, NOW)
    assert_full(ws, ledger)
    shutil.rmtree(ledger.directory / "cache")
    assert_full(W.working_set(ledger, NOW), ledger)
    L.append(paths[0], make_record(job_id="y" * 20))
    assert_full(W.working_set(ledger, NOW), ledger)


def test_a_replaced_or_rewritten_file_is_digested_again(ledger: Ledger):
    paths = study(ledger)
    W.working_set(ledger, NOW)
    # Replaced by another file of the same size (a new inode).
    lines = paths[2].read_bytes().splitlines(keepends=True)
    swapped = lines[4].replace(b'"queued"', b'"failed"')
    assert len(swapped) == len(lines[4])
    replacement = paths[2].with_suffix(".tmp")
    replacement.write_bytes(b"".join(lines[:4] + [swapped] + lines[5:]))
    os.replace(replacement, paths[2])
    assert_full(W.working_set(ledger, NOW), ledger)
    # Rewritten in place, shorter (its fold index is rebuilt too).
    paths[1].write_bytes(b"".join(paths[1].read_bytes().splitlines(keepends=True)[:3]))
    assert_full(W.working_set(ledger, NOW), ledger)
    paths[0].unlink()
    assert_full(W.working_set(ledger, NOW), ledger)
    stored = json.loads((ledger.index_dir / W.DIGESTS_FILE).read_bytes())["files"]
    assert sorted(stored) == sorted(p.name for p in paths[1:])


def test_records_leave_the_working_set_as_they_leave_the_horizon(ledger: Ledger):
    study(ledger)
    W.working_set(ledger, NOW)
    for days in (1, 3, 29, 31, 400):
        later = NOW + timedelta(days=days)
        assert_full(W.working_set(ledger, later), ledger, later)
    later = W.working_set(ledger, NOW + timedelta(days=400))
    assert {e.summary.status for e in later.entries.values()} == {
        JobStatus.FAILED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.ERROR}
    # A clock set back: the digests, chosen at a later time, are made again.
    assert_full(W.working_set(ledger, NOW - timedelta(days=10)), ledger, NOW - timedelta(days=10))


def test_a_record_in_two_files_is_worked_on_from_the_full_fold(ledger: Ledger):
    paths = study(ledger)
    assert W.working_set(ledger, NOW).full is None
    copy = ledger.directory / "submitted_jobs_29990101_000000.jsonl"
    shutil.copyfile(paths[1], copy)  # e.g. a backup made in the ledger directory
    for _ in range(2):
        ws = W.working_set(ledger, NOW)
        assert ws.full is not None
        assert_full(ws, ledger)
    copy.unlink()
    ws = W.working_set(ledger, NOW)
    assert ws.full is None
    assert_full(ws, ledger)
    # One record copied into another file: a new id of a changed file, found one by one.
    line = paths[0].read_bytes().splitlines(keepends=True)[0]
    with open(paths[2], "ab") as fh:
        fh.write(line)
    ws = W.working_set(ledger, NOW)
    assert ws.full is not None
    assert_full(ws, ledger)


def test_a_subset_of_files_is_that_subsets_full_fold(ledger: Ledger):
    paths = study(ledger)
    for subset in ([paths[1]], [paths[0], paths[2]]):
        assert_full(W.working_set(ledger, NOW, subset), ledger, paths=subset)
    assert_full(W.working_set(ledger, NOW), ledger)
    outside = ledger.directory.parent / "elsewhere" / paths[2].name
    outside.parent.mkdir()
    shutil.copyfile(paths[2], outside)
    assert_full(W.working_set(ledger, NOW, [outside]), ledger, paths=[outside])


def test_completed_records_of_given_circuits_are_kept_whenever_they_finished(
        ledger: Ledger, monkeypatch):
    paths = study(ledger)
    other = ledger.new_file(NOW - timedelta(days=80))
    L.append(other, finished(make_record(job_id="c" * 20, circuit_hash="c" * 64)))
    W.working_set(ledger, NOW)
    spy = Spy(monkeypatch)
    plain = W.working_set(ledger, NOW)
    assert spy.folded == []
    unknown = W.working_set(ledger, NOW, circuits={"f" * 64})
    assert spy.folded == [] and list(unknown.entries) == list(plain.entries)
    with_c = W.working_set(ledger, NOW, circuits={"c" * 64})
    assert spy.folded == [other.name]  # only the file that holds one
    fold = full_fold(ledger)
    expected = [rid for rid, e in fold.entries.items()
                if rid in plain.entries or e.summary.circuit_hash == "c" * 64]
    assert list(with_c.entries) == expected
    spy.folded.clear()
    with_a = W.working_set(ledger, NOW, circuits={"a" * 64})
    assert sorted(spy.folded) == sorted(p.name for p in paths)
    expected = [rid for rid, e in fold.entries.items() if rid in plain.entries
                or (e.summary.circuit_hash == "a" * 64 and e.summary.status is JobStatus.COMPLETED)]
    assert list(with_a.entries) == expected
