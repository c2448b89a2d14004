"""kill -9 at random moments of qsubmit and qcollect, many times, with a fixed seed.

After every kill: every ledger file still folds (at most a torn last line per kill), and every
result file is whole JSON or absent. At the end, after qcollect has run to quiet: every job
the service holds is recorded exactly once, no intent is left unsettled, no intent made two
jobs, and every completed record's result file matches its sha256.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script

from qcourier.ledger.store import Ledger
from qcourier.services.local import LocalService, LocalServiceConfig

SEED = 20261121
KILLS = 12


def ledger_line_count(ledger_dir: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in ledger_dir.glob("submitted_jobs_*.jsonl"))


def wait_for(condition, timeout: float = 300.0) -> None:
    """Poll ``condition`` until it holds (a bounded wait: a hung command fails the test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for an observed point"
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_at_random_moments(tmp_path: Path):
    rng = random.Random(SEED)
    env = cli_env(tmp_path, QCOURIER_SUBMISSIONS_PER_MINUTE="1000", QCOURIER_MAX_PENDING="1000",
                  QCOURIER_INTENT_GRACE_SECONDS="0", QCOURIER_LOCAL_QUEUE_SECONDS="0.5")
    ledger_dir = tmp_path / "ledger"
    commands = [
        [script("qsubmit"), "-e", "ghz", "-p", "width=3", "--shots", "300", "--repeat", "3", "--force"],
        [script("qcollect")],
    ]
    for kill in range(1, KILLS + 1):
        lines_before = ledger_line_count(ledger_dir)
        proc = subprocess.Popen(commands[kill % 2], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill % 2:  # qcollect: anywhere in its first seconds, work done or not
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            # qsubmit: at an observed point, however slow the machine — once it has written
            # its first ledger line (an intent) — plus a random delay into its submissions.
            wait_for(lambda: ledger_line_count(ledger_dir) > lines_before or proc.poll() is not None)
            time.sleep(rng.uniform(0.0, 0.6))
        proc.kill()
        proc.wait()
        fold = Ledger(ledger_dir).fold()  # never raises
        assert len(fold.problems) <= kill
        for result in (ledger_dir / "jobs").glob("*.json") if (ledger_dir / "jobs").is_dir() else []:
            json.loads(result.read_text())  # whole, never half-written

    for _ in range(30):
        col = subprocess.run([script("qcollect")], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert col.returncode in (0, 1), col.stderr
        if "Pending: 0/" in col.stdout:
            break
        time.sleep(0.5)
    records = ledger_records(ledger_dir)
    assert len(records) >= 3, "the stress run recorded too little: adjust the kill timings"
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) <= {"completed", "submit_failed"}, statuses

    service = LocalService(LocalServiceConfig(root=tmp_path / "service"))
    service_jobs = service.find_jobs(["qcourier"])
    recorded = [r["job_id"] for r in records if r["job_id"]]
    assert sorted(recorded) == sorted(service_jobs)  # every job recorded, and only once
    requests = Counter(t for j in service_jobs for t in service.job_info(j).tags
                       if t.startswith("request:"))
    assert all(n == 1 for n in requests.values())  # no intent made two jobs
    for record in records:
        if record["status"] == "completed":
            data = (ledger_dir / record["result_path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["result_sha256"]
