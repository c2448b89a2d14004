"""What crosses process boundaries, tested with real processes."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from filelock import FileLock


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def ledger_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
            for line in f.read_text().splitlines()]


def test_submit_in_one_process_collect_in_another(tmp_path: Path):
    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="1")
    sub = run([script("qsubmit"), "--experiment", "ghz", "--param", "width=3", "--shots", "50",
               "--repeat", "2"], env, tmp_path)
    assert sub.returncode == 0, sub.stderr
    submitted = [r["job_id"] for r in ledger_records(tmp_path / "ledger")]
    assert len(submitted) == 2

    col = run([script("qcollect"), "--watch", "--interval", "0.5"], env, tmp_path)
    assert col.returncode == 0, col.stderr
    for job_id in submitted:
        assert f"Job {job_id}: completed" in col.stdout
    assert "Completed: 2/2  Pending: 0/2" in col.stdout
    finals = {line["job_id"]: line for line in ledger_lines(tmp_path)}
    for job_id in submitted:
        assert finals[job_id]["status"] == "completed"
        assert (tmp_path / "ledger" / finals[job_id]["result_path"]).is_file()

    status = run([script("qcourier"), "status", "--json"], env, tmp_path)
    assert {r["job_id"]: r["status"] for r in json.loads(status.stdout)} == {
        j: "completed" for j in submitted}


def test_a_second_collector_exits_at_once_while_one_holds_the_ledger(tmp_path: Path):
    env = cli_env(tmp_path)
    assert run([script("qsubmit"), "-e", "bell", "--shots", "10"], env, tmp_path).returncode == 0
    with FileLock(str(tmp_path / "ledger" / ".qcollect.lock")):
        col = run([script("qcollect")], env, tmp_path)
    assert col.returncode == 0
    assert "another qcollect is already collecting" in col.stderr
    assert [line["status"] for line in ledger_lines(tmp_path)] == ["submitting", "submitted"]


def test_two_collectors_started_together_record_each_job_once(tmp_path: Path):
    env = cli_env(tmp_path)
    sub = run([script("qsubmit"), "-e", "ghz", "-p", "width=4", "--shots", "2000", "--repeat", "4",
               "--max-pending", "10"],
              env, tmp_path)
    assert sub.returncode == 0, sub.stderr
    procs = [subprocess.Popen([script("qcollect")], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    completed = Counter(line["job_id"] for line in ledger_lines(tmp_path) if line["status"] == "completed")
    # Each job completed exactly once, whichever collector got there first.
    assert sorted(completed.values()) == [1, 1, 1, 1]
    run_again = run([script("qcollect")], env, tmp_path)
    assert "Completed: 4/4" in run_again.stdout


def test_the_local_service_simulates_a_job_once_for_concurrent_pollers(tmp_path: Path):
    code = """
import sys, json
from pathlib import Path
from qcourier.services.local import LocalService, LocalServiceConfig
svc = LocalService(LocalServiceConfig(root=Path(sys.argv[1]), queue_seconds=0, run_seconds=0))
print(json.dumps(svc.job_result(sys.argv[2]).counts))
"""
    import sys

    from qiskit import QuantumCircuit

    from qcourier.services.local import LocalService, LocalServiceConfig

    svc = LocalService(LocalServiceConfig(root=tmp_path / "svc", queue_seconds=0, run_seconds=0))
    qc = QuantumCircuit(3, 3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure(range(3), range(3))
    job_id = svc.submit("fake_fez", [qc], 3000)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "svc"), job_id],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120)[0] for p in procs]
    assert len(set(results)) == 1  # all read the one stored result
    assert json.loads(results[0]) == svc.job_result(job_id).counts


def test_ctrl_c_during_watch_stops_cleanly(tmp_path: Path):
    import signal
    import time

    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="3600")
    assert run([script("qsubmit"), "-e", "bell", "--shots", "10"], env, tmp_path).returncode == 0
    proc = subprocess.Popen([script("qcollect"), "--watch", "--interval", "60"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(ledger_lines(tmp_path)) < 3:  # the first poll recorded QUEUED
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Interrupted" in err and "Traceback" not in err
    assert [line["status"] for line in ledger_lines(tmp_path)] == ["submitting", "submitted", "queued"]


def test_qsubmit_waits_for_a_held_ledger_lock_and_loses_nothing(tmp_path: Path):
    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="3600")
    assert run([script("qsubmit"), "-e", "bell", "--shots", "10"], env, tmp_path).returncode == 0
    [path] = list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
    before = path.read_bytes()
    lock = FileLock(str(path.parent / f".{path.name}.lock"), thread_local=False)
    lock.acquire()  # as a collector appending to this file would, only longer
    proc = subprocess.Popen([script("qsubmit"), "-e", "bell", "--shots", "11", "--jobs-file",
                             str(path)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # An observed point: it is about to write its intent line, which needs the lock.
        for line in proc.stderr:
            if line.startswith("submitting job 1/1"):
                break
        assert path.read_bytes() == before  # nothing written past the lock
        assert proc.poll() is None  # it waits for the lock rather than giving up
    finally:
        lock.release()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    col = run([script("qcollect")], env, tmp_path)  # and a collector appends after it
    assert col.returncode == 0
    records = ledger_records(tmp_path / "ledger")
    assert sorted(r["shots"] for r in records) == [10, 11]
    assert all(r["status"] == "queued" for r in records)
    assert all(json.loads(line) for line in path.read_text().splitlines())


@pytest.mark.slow
def test_a_fresh_collector_analyses_many_heavy_hex_code_jobs_on_its_workers(tmp_path: Path):
    """Eight workers finish heavy-hex code jobs at once in a fresh process: the simulations and
    the decoding (stim, PyMatching) must not deadlock on first use from several threads."""
    env = cli_env(tmp_path, QCOURIER_SUBMISSIONS_PER_MINUTE="100")
    for state in ("0", "1", "+", "-"):
        sub = run([script("qsubmit"), "-e", "heavy_hex_code", "-p", "rounds=2", "-p",
                   f"logical_state={state}", "--shots", "200", "--repeat", "2", "--max-pending",
                   "20"], env, tmp_path)
        assert sub.returncode == 0, sub.stderr
    col = run([script("qcollect"), "--workers", "8"], env, tmp_path)
    assert col.returncode == 0, col.stderr
    assert "Completed: 8/8  Pending: 0/8" in col.stdout
    for line in [r for r in ledger_records(tmp_path / "ledger")]:
        payload = json.loads((tmp_path / "ledger" / line["result_path"]).read_text())
        assert payload["analysis_error"] is None
        assert len(payload["analysis"]["per_round"]) == 2
