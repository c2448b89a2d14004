"""Never lose a job, never submit one twice: intents, dedupe, the queue, retries, result checks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script

from qcourier.cli import collect, submit
from qcourier.cli._common import AppState
from qcourier.ledger.status import JobStatus
from qcourier.services.base import JobResult
from qcourier.services.local import LocalService, LocalServiceConfig

KILL_AFTER_ACCEPT = """
import os, signal, sys
import qcourier.services.local as local
accept = local.LocalService.submit
def submit_then_die(self, *args, **kwargs):
    job_id = accept(self, *args, **kwargs)          # the service has accepted the job ...
    os.kill(os.getpid(), signal.SIGKILL)            # ... and qsubmit dies before recording it
local.LocalService.submit = submit_then_die
from qcourier.cli.submit import main
sys.argv = ["qsubmit", *sys.argv[1:]]
main()
"""

KILL_BEFORE_CALL = KILL_AFTER_ACCEPT.replace("job_id = accept(self, *args, **kwargs)", "pass")


def run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def service_jobs_with_tag(tmp_path: Path, tag: str) -> list[str]:
    return LocalService(LocalServiceConfig(root=tmp_path / "service")).find_jobs([tag])


def test_kill_9_right_after_the_service_accepted_the_job(tmp_path: Path):
    env = cli_env(tmp_path)
    killed = run([sys.executable, "-c", KILL_AFTER_ACCEPT, "-e", "bell", "--shots", "20"], env, tmp_path)
    assert killed.returncode == -9
    [intent] = ledger_records(tmp_path / "ledger")
    assert intent["status"] == "submitting" and intent["job_id"] is None
    request_tag = f"request:{intent['request_id']}"
    [job_id] = service_jobs_with_tag(tmp_path, request_tag)  # the job exists, unrecorded

    col = run([script("qcollect")], env, tmp_path)
    assert col.returncode == 0, col.stderr
    [record] = ledger_records(tmp_path / "ledger")
    assert record["job_id"] == job_id and record["status"] == "completed"
    assert service_jobs_with_tag(tmp_path, request_tag) == [job_id]  # never two jobs
    assert len(service_jobs_with_tag(tmp_path, "qcourier")) == 1


def test_an_intent_that_never_reached_the_service_becomes_submit_failed(tmp_path: Path):
    env = cli_env(tmp_path)
    run([sys.executable, "-c", KILL_BEFORE_CALL, "-e", "bell", "--shots", "20"], env, tmp_path)
    [intent] = ledger_records(tmp_path / "ledger")
    assert intent["status"] == "submitting"
    within_grace = run([script("qcollect")], env, tmp_path)
    assert within_grace.returncode == 0 and ": submitting" in within_grace.stdout
    assert ledger_records(tmp_path / "ledger")[0]["status"] == "submitting"
    after_grace = run([script("qcollect")], {**env, "QCOURIER_INTENT_GRACE_SECONDS": "0"}, tmp_path)
    assert after_grace.returncode == 0
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submit_failed" and "never reached the service" in record["error"]
    assert service_jobs_with_tag(tmp_path, "qcourier") == []


def test_identical_jobs_are_skipped_unless_forced(invoke, tmp_path: Path):
    first = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "20", "--json"]).stdout)
    job_id = first["jobs"][0]["job_id"]
    again = invoke(submit.main, ["-e", "bell", "--shots", "20"])
    assert again.exit_code == 0
    assert f"identical to job {job_id}" in again.stderr and "--force" in again.stderr
    assert "Nothing was submitted." in again.stdout
    assert len(ledger_records(tmp_path / "ledger")) == 1
    other_shots = invoke(submit.main, ["-e", "bell", "--shots", "21"])  # not identical
    assert "Skipped" not in other_shots.stderr
    forced = invoke(submit.main, ["-e", "bell", "--shots", "20", "--force"])
    assert "Skipped" not in forced.stderr
    assert len(ledger_records(tmp_path / "ledger")) == 3


def replay_pending(ledger_dir: Path) -> int:
    """The most jobs ever pending at once, replaying every ledger line in time order."""
    lines = [json.loads(line) for f in ledger_dir.glob("submitted_jobs_*.jsonl")
             for line in f.read_text().splitlines()]
    state, most = {}, 0
    for line in sorted(lines, key=lambda x: x["updated_at"]):
        state[line["record_id"]] = JobStatus(line["status"])
        most = max(most, sum(s.is_pending or s is JobStatus.SUBMITTING for s in state.values()))
    return most


def test_a_deferred_study_drains_with_never_more_than_three_pending(tmp_path: Path):
    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="0.4", QCOURIER_LOCAL_RUN_SECONDS="0.2",
                  QCOURIER_SUBMISSIONS_PER_MINUTE="100")  # the rate has its own test
    sub = run([script("qsubmit"), "-e", "deployment", "-p", "width=3", "--shots", "50",
               "--repeat", "10"], env, tmp_path)
    assert sub.returncode == 0, sub.stderr
    statuses = Counter(r["status"] for r in ledger_records(tmp_path / "ledger"))
    assert statuses == {"submitted": 3, "deferred": 7}
    assert "7 deferred" in sub.stdout
    status = run([script("qcourier"), "status"], env, tmp_path)
    rows = status.stdout.splitlines()[1:-1]
    assert sum(row.split()[6] == "deferred" for row in rows) == 7
    assert status.stdout.splitlines()[-1] == "10 job(s): 7 deferred, 3 submitted"
    for _ in range(40):  # cron, every few minutes, compressed
        col = run([script("qcollect")], env, tmp_path)
        assert col.returncode == 0, col.stderr
        if "Pending: 0/10" in col.stdout:
            break
        import time

        time.sleep(0.3)
    assert Counter(r["status"] for r in ledger_records(tmp_path / "ledger")) == {"completed": 10}
    assert replay_pending(tmp_path / "ledger") <= 3


def test_the_per_minute_rate_defers_submissions(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_SUBMISSIONS_PER_MINUTE", "2")
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--repeat", "4", "--max-pending", "10"])
    assert result.exit_code == 0
    statuses = Counter(r["status"] for r in ledger_records(tmp_path / "ledger"))
    assert statuses == {"submitted": 2, "deferred": 2}
    result = invoke(collect.main, [])  # within the same minute: still deferred
    assert "waiting for a free slot" in result.stdout
    assert Counter(r["status"] for r in ledger_records(tmp_path / "ledger"))["deferred"] == 2


def test_system_failures_are_resubmitted_up_to_max_retries(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_LOCAL_FAILURE_RATE", "1")
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    invoke(collect.main, [])
    [failed] = ledger_records(tmp_path / "ledger")
    assert failed["status"] == "failed" and failed["failure_class"] == "system"
    result = invoke(collect.main, ["--resubmit-failed", "--max-retries", "2"])
    assert "submitted (was deferred)" in result.stdout
    invoke(collect.main, ["--resubmit-failed", "--max-retries", "2"])  # collects retry 1, submits retry 2
    invoke(collect.main, ["--resubmit-failed", "--max-retries", "2"])  # collects retry 2; no retry 3
    records = ledger_records(tmp_path / "ledger")
    assert [r["retry_count"] for r in records] == [0, 1, 2]
    assert records[1]["retry_of"] == records[0]["record_id"]
    assert records[2]["retry_of"] == records[1]["record_id"]
    assert all(r["status"] == "failed" for r in records)
    assert len({r["job_id"] for r in records}) == 3


def test_user_failures_are_never_resubmitted(invoke, tmp_path: Path):
    class UserErrorService(LocalService):
        def job_status(self, job_id):
            super().job_status(job_id)  # unknown jobs still raise
            from qcourier.services.base import JobState, JobStatusReport

            return JobStatusReport(job_id, JobState.ERROR, "Invalid circuit: bad instruction", 1234)

    svc = UserErrorService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=0, run_seconds=0))
    state = lambda: AppState(service=svc)  # noqa: E731
    invoke(submit.main, ["-e", "bell", "--shots", "10"], state())
    invoke(collect.main, [], state())
    invoke(collect.main, ["--resubmit-failed"], state())
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "failed" and record["failure_class"] == "user"


def test_a_result_with_fewer_shots_is_partial_and_retried(invoke, tmp_path: Path):
    class ShortService(LocalService):
        short = True

        def job_result(self, job_id):
            result = super().job_result(job_id)
            if not ShortService.short:
                return result
            counts = [{k: max(0, n - 1) for k, n in c.items()} for c in result.counts]
            return JobResult(counts=counts, metadata=result.metadata)

    svc = ShortService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=0, run_seconds=0))
    invoke(submit.main, ["-e", "bell", "--shots", "100"], AppState(service=svc))
    result = invoke(collect.main, [], AppState(service=svc))
    assert "partial result" in result.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "partial" and record["result_path"]
    ShortService.short = False
    invoke(collect.main, ["--resubmit-failed"], AppState(service=svc))
    invoke(collect.main, [], AppState(service=svc))
    records = ledger_records(tmp_path / "ledger")
    assert [r["status"] for r in records] == ["partial", "completed"]


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_a_damaged_result_file_is_downloaded_again(invoke, tmp_path: Path, damage):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    invoke(collect.main, [])
    [record] = ledger_records(tmp_path / "ledger")
    path = tmp_path / "ledger" / record["result_path"]
    if damage == "corrupt":
        path.write_text(path.read_text().replace('"counts"', '"c0unts"'))
    else:
        path.unlink()
    result = invoke(collect.main, [])
    assert result.exit_code == 0 and "result downloaded again" in result.stdout
    import hashlib

    [record] = ledger_records(tmp_path / "ledger")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["result_sha256"]
    assert "result downloaded again" not in invoke(collect.main, []).stdout


def test_result_files_are_rehashed_in_turns_and_all_at_once_on_request(
        invoke, tmp_path: Path, monkeypatch):
    """Each run checks that every result file exists but re-hashes only a batch of them, in
    turns; --verify-results re-hashes them all."""
    monkeypatch.setattr("qcourier.collect.run.RESULT_CHECK_BATCH", 2)
    monkeypatch.setattr("qcourier.cli.collect.RESULT_CHECK_BATCH", 2, raising=False)
    invoke(submit.main, ["-e", "bell", "--shots", "10", "--repeat", "3", "--force"])
    invoke(collect.main, [])
    records = ledger_records(tmp_path / "ledger")
    assert [r["status"] for r in records] == ["completed"] * 3
    last = tmp_path / "ledger" / records[2]["result_path"]
    last.write_text(last.read_text().replace('"counts"', '"c0unts"'))
    runs = [invoke(collect.main, []).stdout for _ in range(3)]
    # Positions 0-1 are re-hashed first, then 2: the damage is found on the second run.
    assert ["result downloaded again" in out for out in runs] == [False, True, False]
    # The cursor is now at position 2: damage position 0, and delete position 1's file.
    first = tmp_path / "ledger" / records[0]["result_path"]
    first.write_text(first.read_text().replace('"counts"', '"c0unts"'))
    (tmp_path / "ledger" / records[1]["result_path"]).unlink()
    out = invoke(collect.main, []).stdout  # a missing file is found on any run
    assert out.count("result downloaded again") == 1 and records[1]["job_id"] in out
    out = invoke(collect.main, ["--verify-results"]).stdout
    assert out.count("result downloaded again") == 1 and records[0]["job_id"] in out


def test_the_budget_guard_refuses_what_the_budget_cannot_pay(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS", "1")
    result = invoke(submit.main, ["-e", "bell", "--shots", "10"])
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "need about 2.1 s of QPU time but only 1.0 s of 1 s remain" in line
    assert "--allow-over-budget" in line
    assert ledger_records(tmp_path / "ledger") == [] and not (tmp_path / "service").exists()
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--allow-over-budget"])
    assert result.exit_code == 0 and len(ledger_records(tmp_path / "ledger")) == 1


def test_pace_holds_an_hourly_heartbeat_to_an_even_spread(invoke, tmp_path: Path):
    # 600 s over 28 days with a day's burst: about 21.4 s may be spent at once.
    submitted = 0
    for _ in range(15):
        result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--pace", "--force"])
        assert result.exit_code == 0, result.output
        if "Not submitted" in result.stderr:
            break
        submitted += 1
    assert 5 <= submitted < 15
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Not submitted")]
    assert "pace" in line and "even-spread allowance" in line
    assert len(ledger_records(tmp_path / "ledger")) == submitted


def test_deferred_jobs_wait_for_budget(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS", "5")
    invoke(submit.main, ["-e", "bell", "--shots", "10", "--repeat", "3", "--max-pending", "1",
                         "--allow-over-budget"])
    assert Counter(r["status"] for r in ledger_records(tmp_path / "ledger")) == {"submitted": 1, "deferred": 2}
    invoke(collect.main, ["--max-pending", "1"])  # collects the first, submits the second
    result = invoke(collect.main, ["--max-pending", "1"])  # collects the second; the third would overspend
    assert "deferred: local: these jobs need about 2.1 s" in result.stdout
    assert Counter(r["status"] for r in ledger_records(tmp_path / "ledger")) == {"completed": 2, "deferred": 1}


def test_a_ledger_file_deleted_mid_study_is_rebuilt_by_recover(invoke, tmp_path: Path):
    from qcourier.cli import main

    out = json.loads(invoke(submit.main, ["-e", "both", "-p", "rounds=2", "-p", "width=4",
                                          "--shots", "100", "--json"]).stdout)
    original = {j["job_id"]: j for j in out["jobs"]}
    invoke(submit.main, ["-e", "bell", "--shots", "10"])  # another file, kept
    Path(out["ledger_path"]).unlink()
    assert len(ledger_records(tmp_path / "ledger")) == 1

    dry = invoke(main.main, ["recover", "--dry-run"])
    assert "Recovered 2 job(s) (dry run" in dry.stdout and "1 already in the ledger" in dry.stdout
    assert len(ledger_records(tmp_path / "ledger")) == 1
    result = invoke(main.main, ["recover", "--json"])
    assert result.exit_code == 0, result.output
    recovered = {r["job_id"]: r for r in json.loads(result.stdout)["recovered"]}
    assert set(recovered) == set(original)
    for job_id, record in recovered.items():
        before = original[job_id]
        for name in ("experiment_type", "logical_state", "backend", "shots", "circuit_hash",
                     "isa_circuit_hash", "params", "request_id", "tags", "num_circuits"):
            assert record[name] == before[name], name
        assert record["recovered"] is True
    assert "Nothing to recover" in invoke(main.main, ["recover"]).stdout

    invoke(collect.main, [])
    records = ledger_records(tmp_path / "ledger")
    assert Counter(r["status"] for r in records) == {"completed": 3}
    surface = next(r for r in records if r["experiment_type"] == "heavy_hex_code")
    payload = json.loads((tmp_path / "ledger" / surface["result_path"]).read_text())
    assert payload["analysis_error"] is None and len(payload["analysis"]["per_round"]) == 2


def test_recover_leaves_an_unsettled_intent_to_qcollect(tmp_path: Path):
    env = cli_env(tmp_path)
    run([sys.executable, "-c", KILL_AFTER_ACCEPT, "-e", "bell", "--shots", "20"], env, tmp_path)
    rec = run([script("qcourier"), "recover"], env, tmp_path)
    assert rec.returncode == 0 and "Nothing to recover" in rec.stdout
    run([script("qcollect")], env, tmp_path)
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed"


@pytest.mark.parametrize(("message", "code", "expected"), [
    ("Error returned at backend level.", 1010, "system"),
    ("API Internal error", 1000, "system"),
    ("something broke: internal error in the scheduler", None, "system"),
    ("The backend is in maintenance", None, "system"),
    ("RAN TOO LONG", 1305, "user"),
    ("Invalid circuit: unsupported instruction", 1234, "user"),
    (None, None, "user"),
])
def test_failure_classes(message, code, expected):
    from qcourier.collect.decide import classify_failure
    from qcourier.services.base import JobState, JobStatusReport

    assert classify_failure(JobStatusReport("j", JobState.ERROR, message, code)) == expected


def test_a_submission_decides_and_writes_on_its_clock(tmp_path: Path, service: LocalService):
    """The per-minute cap, and every line's time, come from SubmitOptions.clock: a
    submission half a minute after two others is deferred, one a minute after is not."""
    from datetime import UTC, datetime, timedelta

    from qcourier.experiments import get_experiment
    from qcourier.ledger.store import Ledger
    from qcourier.submit.dispatch import QueuePolicy
    from qcourier.submit.plan import SubmitOptions
    from qcourier.submit.run import submit_everywhere

    ledger = Ledger(tmp_path / "ledger")
    bell = get_experiment("bell")
    start = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)

    def submit_at(offset: float, repeat: int = 1) -> list:
        options = SubmitOptions(repeat=repeat, force=True, clock=lambda: start + timedelta(seconds=offset),
                                policy=QueuePolicy(max_pending=10, per_minute=2))
        report = submit_everywhere([service], ledger, [(bell, bell.Params(shots=10))], options)
        assert not report.failures, report.failures
        return report.records

    first = submit_at(0, repeat=2)
    assert [r.status for r in first] == [JobStatus.SUBMITTED] * 2
    assert {r.submission_time for r in first} == {r.updated_at for r in first} == {start}
    [held] = submit_at(30)
    assert held.status is JobStatus.DEFERRED and held.updated_at == start + timedelta(seconds=30)
    [later] = submit_at(61)
    assert later.status is JobStatus.SUBMITTED
    assert later.submission_time == start + timedelta(seconds=61)
