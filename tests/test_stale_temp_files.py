"""Temporary files a kill -9 leaves mid atomic write are removed by the next run (issue 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from qcourier.collect.run import collect_pending
from qcourier.files import STALE_TEMP_SECONDS, remove_stale_temp_files
from qcourier.ledger.store import Ledger


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_stale_files_of_our_pattern_are_removed(tmp_path: Path):
    stale = tmp_path / ".result.json.abcd_123.tmp"
    fresh = tmp_path / ".other.json.efgh4567.tmp"
    foreign = tmp_path / "notes.tmp"
    for path in (stale, fresh, foreign):
        path.write_text("x")
    age(stale, STALE_TEMP_SECONDS + 60)
    age(foreign, STALE_TEMP_SECONDS + 60)
    assert remove_stale_temp_files([tmp_path, tmp_path / "missing"]) == 1
    assert not stale.exists() and fresh.exists() and foreign.exists()


def test_a_writer_killed_mid_write_leaves_a_temp_file_the_next_qcollect_removes(
        tmp_path: Path, service):
    ledger = Ledger(tmp_path / "ledger")
    jobs = ledger.results_dir
    # The writer stops between writing its temp file and the rename, says so, and is killed
    # there (an observed point, not a guess at timing).
    code = textwrap.dedent(f"""
        import os, sys, time
        import qcourier.files as files
        def stop(src, dst):
            print("written", flush=True)
            time.sleep(600)
        files.os.replace = stop
        files.atomic_write_bytes(__import__("pathlib").Path({str(jobs / "job.json")!r}), b"{{}}")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    [left] = list(jobs.iterdir())
    assert left.name.startswith(".job.json.") and left.name.endswith(".tmp")
    collect_pending(service, ledger)
    assert left.exists()  # recent: it might be a live writer's
    age(left, STALE_TEMP_SECONDS + 1)
    collect_pending(service, ledger)
    assert list(jobs.iterdir()) == []


def test_timestamped_files_never_clobber_and_are_whole_when_visible(tmp_path: Path):
    from qcourier.files import create_timestamped

    first = create_timestamped(tmp_path, "collected_results", ".json", "20261203_120000", b"a")
    second = create_timestamped(tmp_path, "collected_results", ".json", "20261203_120000", b"b")
    assert first.name == "collected_results_20261203_120000.json"
    assert second.name == "collected_results_20261203_120000_1.json"
    assert (first.read_bytes(), second.read_bytes()) == (b"a", b"b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name]  # no temp left
