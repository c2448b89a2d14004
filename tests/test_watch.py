"""qcollect --watch off a terminal: JSON Lines, changes only, and a busy round skipped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import cli_env, ledger_records, script
from conftest import submit_process as submit
from filelock import FileLock


def test_watch_json_is_one_object_per_line_per_run(tmp_path: Path):
    [record] = submit(tmp_path, "-e", "bell", "--shots", "10", QCOURIER_LOCAL_QUEUE_SECONDS="1.5")
    done = subprocess.run([script("qcollect"), "--watch", "--interval", "0.3", "--json"],
                          env=cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="1.5"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert len(runs) >= 2
    assert [r["pending"] for r in runs[:-1]] == [1] * (len(runs) - 1)
    assert runs[-1]["pending"] == 0 and runs[-1]["completed"] == 1
    [job] = runs[-1]["jobs"]
    assert (job["job_id"], job["status"]) == (record["job_id"], "completed")


def test_plain_json_stays_one_document(tmp_path: Path):
    submit(tmp_path, "-e", "bell", "--shots", "10")
    done = subprocess.run([script("qcollect"), "--json"], env=cli_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert json.loads(done.stdout)["completed"] == 1
    assert len(done.stdout.splitlines()) > 1  # indented for a reader


def test_watch_off_a_terminal_prints_only_what_changed(tmp_path: Path):
    [record] = submit(tmp_path, "-e", "bell", "--shots", "10", QCOURIER_LOCAL_QUEUE_SECONDS="2")
    done = subprocess.run([script("qcollect"), "--watch", "--interval", "0.2"],
                          env=cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="2"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job = record["job_id"]
    # several rounds ran while it was queued, but it was reported queued once, then done
    assert [line.split(" — ")[0] for line in lines if line.startswith(f"Job {job}")] == [
        f"Job {job}: queued", f"Job {job}: completed"]
    assert lines.count("Completed: 0/1  Pending: 1/1") == 1
    assert lines[-1] == "Completed: 1/1  Pending: 0/1"


def test_watch_skips_a_round_while_another_collector_is_busy_and_goes_on(tmp_path: Path):
    [record] = submit(tmp_path, "-e", "bell", "--shots", "10")
    lock = FileLock(str(tmp_path / "ledger" / ".qcollect.lock"), thread_local=False)
    lock.acquire()
    proc = subprocess.Popen([script("qcollect"), "--watch", "--interval", "0.2"],
                            env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # an observed point: it met the busy ledger
        assert "another qcollect is already collecting" in first
        assert "trying again in 0.2 s" in first
        assert proc.poll() is None  # still watching
    finally:
        lock.release()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"Job {record['job_id']}: completed" in out
    [after] = ledger_records(tmp_path / "ledger")
    assert after["status"] == "completed"
