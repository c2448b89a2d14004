"""Issue 17: a final job whose usage the service still reports as pending counts its estimate
in the budget guard until a later ``qcollect`` fetches the real figure, and records it in a
new ledger line (the ledger is append-only); a usage call that fails changes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from ibm_emulator import IBMEmulator

from qcourier.cli import collect, submit
from qcourier.cli.main import main as qcourier_main

BELL = ["-e", "bell", "--shots", "50"]
#: The local service reports a job's usage as this much more than its estimate, so that the
#: estimate and the real figure can be told apart in the guard's numbers.
FACTOR = 1.3
#: Long enough that a job finished in this test is still "usage pending" for a process
#: started with it: the delay is the asking process's setting, so nothing waits for it.
PENDING = "86400"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def ledger_bytes(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes()
            for p in sorted((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))}


@pytest.mark.slow
def test_usage_pending_counts_the_estimate_until_a_later_qcollect_records_the_figure(
        tmp_path: Path):
    env = cli_env(tmp_path, QCOURIER_LOCAL_USAGE_FACTOR=str(FACTOR))
    pending = dict(env, QCOURIER_LOCAL_USAGE_DELAY_SECONDS=PENDING)
    sub = run([script("qsubmit"), *BELL], env, tmp_path)
    assert sub.returncode == 0, sub.stderr
    [record] = ledger_records(tmp_path / "ledger")
    job_id, estimate = record["job_id"], record["estimated_qpu_seconds"]

    # The job is done, but the service has no usage figure yet: final, usage unknown.
    first = run([script("qcollect")], pending, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"Job {job_id}: completed" in first.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed" and record["usage_seconds"] is None

    # The guard counts its estimate (the service's own figure says 0 meanwhile): with room
    # for 1.5 estimates, a second job does not fit.
    refused = run([script("qsubmit"), *BELL, "--force"],
                  dict(pending, QCOURIER_BUDGET_SECONDS=str(1.5 * estimate)), tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"(used {estimate:.1f} s, reserved 0.0 s)" in refused.stderr
    show = run([script("qcourier"), "show", job_id], env, tmp_path)
    assert f"usage pending (estimated {estimate:.1f}" in show.stdout
    status = run([script("qcourier"), "status"], dict(env, COLUMNS="200"), tmp_path)
    [row] = [line for line in status.stdout.splitlines() if line.startswith(job_id)]
    assert row.split()[-1] == "pending"

    # Still pending: nothing changes, and it is said.
    before = ledger_bytes(tmp_path)
    again = run([script("qcollect")], pending, tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Job {job_id}: completed — usage still pending at the service" in again.stdout
    assert ledger_bytes(tmp_path) == before

    # The usage call fails (a service that does not know the job): the collect does not
    # fail, nothing is written, and the figure is asked for again next time.
    lost = run([script("qcollect")], dict(env, QCOURIER_LOCAL_SERVICE_DIR=str(tmp_path / "x")),
               tmp_path)
    assert lost.returncode == 0, lost.stdout + lost.stderr
    assert f"Job {job_id}: completed — usage not fetched (" in lost.stdout
    assert ledger_bytes(tmp_path) == before
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed" and record["usage_seconds"] is None

    # The figure has arrived: one new line, the old ones untouched.
    last = run([script("qcollect"), "--json"], env, tmp_path)
    assert last.returncode == 0, last.stderr
    [usage] = json.loads(last.stdout)["usage"]
    assert usage["job_id"] == job_id and usage["recorded"]
    assert usage["usage_seconds"] == pytest.approx(estimate * FACTOR, rel=1e-4)
    after = ledger_bytes(tmp_path)
    assert after.keys() == before.keys()
    for name, content in before.items():
        assert after[name].startswith(content)
    new_lines = b"".join(after[n][len(c):] for n, c in before.items()).splitlines()
    assert len(new_lines) == 1
    [record] = ledger_records(tmp_path / "ledger")
    assert record["usage_seconds"] == usage["usage_seconds"]
    assert record["result_path"] and record["status"] == "completed"

    # The guard now counts the real figure, from the ledger (the service's still says 0 to
    # this process): room for 2.2 estimates leaves 0.9 after 1.3, so a job does not fit.
    refused = run([script("qsubmit"), *BELL, "--force"],
                  dict(pending, QCOURIER_BUDGET_SECONDS=str(2.2 * estimate)), tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"(used {estimate * FACTOR:.1f} s, reserved 0.0 s)" in refused.stderr

    # Nothing more to ask: the next run appends nothing.
    done = run([script("qcollect")], env, tmp_path)
    assert done.returncode == 0 and "usage" not in done.stdout
    assert ledger_bytes(tmp_path) == after


@pytest.fixture
def emu(monkeypatch):
    with IBMEmulator(queue_seconds=0, run_seconds=0) as emulator:
        for name, value in emulator.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("QCOURIER_IBM_URL", emulator.api_url)
        monkeypatch.setenv("QCOURIER_SERVICE", "ibm")
        monkeypatch.setenv("QCOURIER_IBM_RETRIES", "0")
        monkeypatch.setenv("IBM_QUANTUM_TOKEN", "good-token-0")
        yield emulator
        assert emulator.errors == []


def test_ibm_usage_pending_after_the_job_is_final_is_fetched_by_a_later_run(
        emu, invoke, tmp_path: Path):
    assert invoke(submit.main, BELL).exit_code == 0
    [job_id] = emu.jobs
    emu.usage_pending.add(job_id)
    first = invoke(collect.main, ["--watch", "--interval", "0.2"])
    assert first.exit_code == 0, first.output
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed" and record["usage_seconds"] is None
    budget = json.loads(invoke(qcourier_main, ["budget", "--json"]).stdout)
    [key] = budget["keys"]
    assert key["jobs_usage_pending"] == 1
    assert key["usage_pending_seconds"] == record["estimated_qpu_seconds"]
    assert key["service_usage"]["usage_seconds"] == 0
    table = invoke(qcourier_main, ["budget"]).stdout
    assert ("ibm key 0: usage pending at the service for 1 finished job(s), not in used; the "
            "budget guard counts their estimates") in table

    emu.fail("GET", rf"/jobs/{job_id}/metrics", 500, count=100)
    failing = invoke(collect.main, ["--json"])
    assert failing.exit_code == 0, failing.output
    [usage] = json.loads(failing.stdout)["usage"]
    assert not usage["recorded"] and usage["message"].startswith("usage not fetched (")
    [record] = ledger_records(tmp_path / "ledger")
    assert record["usage_seconds"] is None

    emu.clear_faults()
    emu.usage_pending.clear()
    last = invoke(collect.main, [])
    assert last.exit_code == 0, last.output
    assert f"Job {job_id}: completed — usage recorded: " in last.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["usage_seconds"] == pytest.approx(emu.jobs[job_id]["usage_seconds"])
