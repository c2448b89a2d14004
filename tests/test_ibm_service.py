"""The IBM service through the REAL qiskit-ibm-runtime client, against the loopback emulator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from ibm_emulator import IBMEmulator

from qcourier.cli import collect, submit

SMALL_BOTH = ["-e", "both", "-p", "rounds=2", "-p", "width=4", "--shots", "100"]


@pytest.fixture
def emu(monkeypatch):
    with IBMEmulator(queue_seconds=0.3, run_seconds=0.3) as emulator:
        for name, value in emulator.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("QCOURIER_IBM_URL", emulator.api_url)
        monkeypatch.setenv("QCOURIER_SERVICE", "ibm")
        monkeypatch.setenv("QCOURIER_IBM_RETRIES", "2")
        monkeypatch.setenv("IBM_QUANTUM_TOKEN", "good-token-0")
        yield emulator
        assert emulator.errors == []
        assert not [r for r in emulator.requests if "/sessions" in r[1]]  # never a Session


def ledger_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
            for line in f.read_text().splitlines()]


def latest(tmp_path: Path) -> dict[str, dict]:
    return {line["record_id"]: line for line in ledger_lines(tmp_path)}


def all_text_under(path: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in path.rglob("*")
                     if p.is_file() and p.name != ".env" and not p.name.endswith(".gz"))


@pytest.mark.slow
def test_two_keys_from_dotenv_submit_all_then_collect_in_another_process(emu, tmp_path: Path):
    env = cli_env(tmp_path, **emu.client_env(), QCOURIER_IBM_URL=emu.api_url)
    env.pop("IBM_QUANTUM_TOKEN", None)
    env.pop("QCOURIER_SERVICE")
    dotenv = tmp_path / ".env"
    dotenv.write_text("IBM_QUANTUM_TOKEN=good-token-0\nIBM_QUANTUM_TOKEN_1=good-token-1\n")
    dotenv.chmod(0o600)

    sub = subprocess.run([script("qsubmit"), *SMALL_BOTH, "--submit-all"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert sub.returncode == 0, sub.stderr
    assert "qiskit_runtime_service" not in sub.stderr  # the client's log chatter is silenced
    col = subprocess.run([script("qcollect"), "--watch", "--interval", "0.5"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert col.returncode == 0, col.stderr
    assert "Completed: 4/4  Pending: 0/4" in col.stdout

    records = list(latest(tmp_path).values())
    assert sorted(r["api_key_index"] for r in records) == [0, 0, 1, 1]
    for r in records:
        assert r["service"] == "ibm" and r["status"] == "completed"
        assert r["backend"].startswith("ibm_") and len(r["circuit_hash"]) == 64
        assert r["backend_snapshot_sha256"] and r["calibration_age_hours"] == pytest.approx(1.0, abs=0.1)
        assert r["queue_seconds"] == pytest.approx(0.3, abs=0.2) and r["usage_seconds"] > 2
        job = emu.jobs[r["job_id"]]
        assert job["instance"] == f"instance-{r['api_key_index']}"
        assert job["tags"] == r["tags"] and job["cost"] == r["max_execution_time"]
        assert {t.split(":")[0] for t in job["tags"]} == {"qcourier", "experiment", "batch", "request", "circuit"}
        assert f"circuit:{r['circuit_hash']}" in job["tags"]
        assert (tmp_path / "ledger" / "snapshots" / f"{r['backend_snapshot_sha256']}.json.gz").is_file()
    analyses = {r["experiment_type"]: json.loads((tmp_path / "ledger" / r["result_path"]).read_text())
                for r in records}
    assert analyses["heavy_hex_code"]["analysis"]["per_round"][0]["shots"] == 100
    assert analyses["deployment"]["analysis"]["marginal_fidelity"] > 0.9
    everything = all_text_under(tmp_path) + sub.stdout + sub.stderr + col.stdout + col.stderr
    assert "good-token" not in everything


def test_a_rejected_key_fails_alone(emu, invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("IBM_QUANTUM_TOKEN_1", "bad-secret-token")
    result = invoke(submit.main, [*SMALL_BOTH, "--submit-all"])
    assert result.exit_code == 1
    assert "key 1 (IBM_QUANTUM_TOKEN_1): IBM Cloud IAM (127.0.0.1) refused the API key" in result.stderr
    assert "bad-secret-token" not in result.output
    assert sorted(r["api_key_index"] for r in ledger_records(tmp_path / "ledger")) == [0, 0]


def test_credentials_rejected_while_collecting(emu, invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "50"])
    emu.fail("GET", r"/jobs/", 401, count=50)
    result = invoke(collect.main, [])
    assert result.exit_code == 1
    assert "not polled" in result.stdout and "refused the credentials" in result.stdout
    assert [r["status"] for r in ledger_records(tmp_path / "ledger")] == ["submitted"]  # left as it was
    emu.clear_faults()
    assert ": completed" in invoke(collect.main, ["--watch", "--interval", "0.3"]).stdout


def test_a_job_the_service_does_not_know_gets_status_error_others_go_on(emu, invoke, tmp_path: Path):
    out = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "50", "--repeat", "2", "--json"]).stdout)
    lost, kept = (j["job_id"] for j in out["jobs"])
    emu.forget_job(lost)
    result = invoke(collect.main, ["--watch", "--interval", "0.3"])
    assert result.exit_code == 1
    assert f"Job {kept}: completed" in result.stdout and f"Job {lost}: error" in result.stdout
    by_job = {r["job_id"]: r for r in latest(tmp_path).values()}
    assert by_job[lost]["status"] == "error" and "not found" in by_job[lost]["error"]
    assert by_job[kept]["status"] == "completed"


def test_usage_limit_409_on_submit(emu, invoke, tmp_path: Path):
    emu.extra_usage["instance-0"] = 600.0
    # The guard counts the service's figure (used elsewhere: this ledger knows nothing of it).
    result = invoke(submit.main, ["-e", "bell", "--shots", "50"])
    assert result.exit_code == 1
    assert "used 600.0 s (the service's figure)" in result.stderr and emu.jobs == {}
    assert ledger_records(tmp_path / "ledger") == []
    result = invoke(submit.main, ["-e", "bell", "--shots", "50", "--allow-over-budget"])
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "key 0 (IBM_QUANTUM_TOKEN)" in line and "usage exceeds the instance's limit" in line
    assert "Nothing was submitted." in result.stdout
    [record] = ledger_records(tmp_path / "ledger")  # the intent, settled: no job was made
    assert record["status"] == "submit_failed" and "usage exceeds" in record["error"]
    assert record["job_id"] is None and emu.jobs == {}


def test_server_errors_then_success_while_collecting(emu, invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "50"])
    emu.fail("GET", r"/jobs/[a-z0-9]+$", 503, count=2)
    result = invoke(collect.main, ["--watch", "--interval", "0.3"])
    assert result.exit_code == 0 and ": completed" in result.stdout


def test_rate_limited_submission_is_retried_after_retry_after(emu, invoke, tmp_path: Path):
    emu.fail("POST", r"/jobs$", 429, headers={"Retry-After": "1"})
    result = invoke(submit.main, ["-e", "bell", "--shots", "50"])
    assert result.exit_code == 0, result.output
    assert len(emu.jobs) == 1 and len(ledger_records(tmp_path / "ledger")) == 1
    posts = [r for r in emu.requests if r[0] == "POST" and r[1].endswith("/jobs")]
    assert len(posts) == 2


def test_a_server_that_never_answers_times_out_and_is_polled_next_time(emu, invoke, tmp_path: Path,
                                                                       monkeypatch):
    invoke(submit.main, ["-e", "bell", "--shots", "50"])
    monkeypatch.setenv("QCOURIER_IBM_TIMEOUT", "1")
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "0")
    emu.hang("GET", r"/jobs/", seconds=30, count=100)
    result = invoke(collect.main, [])
    assert result.exit_code == 1
    assert "not polled" in result.stdout and "did not answer" in result.stdout
    assert [r["status"] for r in ledger_records(tmp_path / "ledger")] == ["submitted"]
    emu.clear_faults()
    assert ": completed" in invoke(collect.main, ["--watch", "--interval", "0.3"]).stdout


def test_failed_job_keeps_the_service_message_and_reason_code(emu, invoke, tmp_path: Path):
    out = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "50", "--json"]).stdout)
    job_id = out["jobs"][0]["job_id"]
    emu.set_job_state(job_id, "Failed", reason="Kaboom in the control electronics", reason_code=1517)
    result = invoke(collect.main, [])
    assert f"Job {job_id}: failed" in result.stdout
    final = ledger_lines(tmp_path)[-1]
    assert final["status"] == "failed"
    assert "Kaboom in the control electronics" in final["error"] and "1517" in final["error"]


def test_old_calibration_is_warned_about_and_recorded(emu, invoke, tmp_path: Path):
    emu.calibration_age_hours = 48
    result = invoke(submit.main, ["-e", "bell", "--shots", "50"])
    assert result.exit_code == 0
    assert "calibration of ibm_" in result.stderr and "48 hours old" in result.stderr
    assert ledger_lines(tmp_path)[0]["calibration_age_hours"] == pytest.approx(48, abs=0.1)


def test_chosen_key_and_backend(emu, invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("IBM_QUANTUM_TOKEN_3", "good-token-1")
    result = invoke(submit.main, ["-e", "bell", "--shots", "50", "--api-key-index", "3",
                                  "--backend", "ibm_marrakesh"])
    assert result.exit_code == 0, result.output
    [line] = ledger_records(tmp_path / "ledger")
    assert line["api_key_index"] == 3 and line["backend"] == "ibm_marrakesh"
    assert emu.jobs[line["job_id"]]["instance"] == "instance-1"
    result = invoke(submit.main, ["-e", "bell", "--api-key-index", "7"])
    assert result.exit_code == 2 and "set IBM_QUANTUM_TOKEN_7" in result.stderr
    result = invoke(submit.main, ["-e", "bell", "--backend", "ibm_nowhere"])
    assert result.exit_code == 2 and "ibm_fez" in result.stderr


def test_choosing_the_least_busy_backend_fetches_the_properties_of_that_one_only(
        emu, invoke, tmp_path: Path):
    """The qubit counts to choose by come with the listing; each backend's properties are
    an HTTP request (and a Target to build) that only the chosen one needs."""
    emu.set_backend("ibm_fez", queue_length=5)
    try:
        result = invoke(submit.main, ["-e", "bell", "--shots", "50"])
    finally:
        emu.set_backend("ibm_fez", queue_length=0)
    assert result.exit_code == 0, result.output
    [line] = ledger_records(tmp_path / "ledger")
    assert line["backend"] == "ibm_marrakesh"
    fetched = [path for _, path, _ in emu.requests if path.endswith("/properties")]
    # once: for the calibration, the target and the sampler alike
    assert len(fetched) == 1 and "/ibm_marrakesh/" in fetched[0], fetched


def test_a_backend_is_fetched_again_once_its_reuse_time_is_over(emu, invoke, tmp_path: Path,
                                                                 monkeypatch):
    import qcourier.services.ibm as ibm

    def properties_fetched() -> int:
        return sum(1 for _, path, _ in emu.requests if path.endswith("/ibm_fez/properties"))

    args = ["-e", "bell", "--shots", "50", "--backend", "ibm_fez", "--force"]
    assert invoke(submit.main, args).exit_code == 0
    assert properties_fetched() == 1
    monkeypatch.setattr(ibm, "BACKEND_REUSE_SECONDS", 0.0)
    assert invoke(submit.main, args).exit_code == 0
    assert properties_fetched() == 1 + 3  # the calibration, the target, the sampler


def test_ibm_without_a_token_is_a_clear_error(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved qiskit account either
    result = invoke(submit.main, ["-e", "bell", "--service", "ibm"])
    assert result.exit_code == 2 and "set IBM_QUANTUM_TOKEN" in result.stderr


def test_world_readable_dotenv_is_warned_about(invoke, tmp_path: Path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("QCOURIER_LOCAL_QUEUE_SECONDS=0\n")
    dotenv.chmod(0o644)
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--dry-run"])
    assert "Warning: .env is readable by every user" in result.stderr and "chmod 600" in result.stderr


def test_oversized_input_is_refused_before_submission(invoke, tmp_path: Path, monkeypatch):
    import qcourier.circuits.transpile
    import qcourier.submit.plan

    # the limit is read where the plan checks it and where the size is measured
    monkeypatch.setattr(qcourier.submit.plan, "MAX_INPUT_BYTES", 200)
    monkeypatch.setattr(qcourier.circuits.transpile, "MAX_INPUT_BYTES", 200)
    result = invoke(submit.main, ["-e", "bell", "--shots", "10"])
    assert result.exit_code == 2 and "over the service's limit" in result.stderr
    assert not (tmp_path / "service").exists()


def test_a_saved_qiskit_account_is_used_when_no_token_is_set(emu, tmp_path: Path):
    home = tmp_path / "home"
    (home / ".qiskit").mkdir(parents=True)
    env = cli_env(tmp_path, **emu.client_env(), HOME=str(home), QCOURIER_IBM_URL=emu.api_url)
    env.pop("QCOURIER_SERVICE")
    env.pop("IBM_QUANTUM_TOKEN", None)
    save = ("import warnings; warnings.simplefilter('ignore')\n"
            "from qiskit_ibm_runtime import QiskitRuntimeService\n"
            f"QiskitRuntimeService.save_account(channel='ibm_quantum_platform', token='good-token-0', "
            f"url={emu.api_url!r}, set_as_default=True)\n")
    import sys

    subprocess.run([sys.executable, "-c", save], env=env, check=True, timeout=120)
    sub = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "50"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert sub.returncode == 0, sub.stderr
    [line] = ledger_records(tmp_path / "ledger")
    assert line["service"] == "ibm" and line["api_key_index"] == 0
    assert emu.jobs[line["job_id"]]["instance"] == "instance-0"


def test_a_deferred_job_is_submitted_to_ibm_by_qcollect(emu, invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "50", "--repeat", "2", "--max-pending", "1"])
    assert sorted(r["status"] for r in ledger_records(tmp_path / "ledger")) == ["deferred", "submitted"]
    result = invoke(collect.main, ["--watch", "--interval", "0.3", "--max-pending", "1"])
    assert result.exit_code == 0 and "submitted (was deferred)" in result.stdout
    records = ledger_records(tmp_path / "ledger")
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert {emu.jobs[r["job_id"]]["tags"][3] for r in records} == {f"request:{r['request_id']}" for r in records}


def test_recover_rebuilds_lost_ibm_jobs_for_every_key(emu, invoke, tmp_path: Path, monkeypatch):
    from qcourier.cli import main

    monkeypatch.setenv("IBM_QUANTUM_TOKEN_1", "good-token-1")
    out = json.loads(invoke(submit.main, [*SMALL_BOTH, "--submit-all", "--json"]).stdout)
    original = {j["job_id"]: j for j in out["jobs"]}
    Path(out["ledger_path"]).unlink()
    result = invoke(main.main, ["recover", "--json"])
    assert result.exit_code == 0, result.output
    recovered = {r["job_id"]: r for r in json.loads(result.stdout)["recovered"]}
    assert set(recovered) == set(original)
    for job_id, record in recovered.items():
        for name in ("api_key_index", "experiment_type", "backend", "shots", "circuit_hash",
                     "isa_circuit_hash", "params", "logical_state"):
            assert record[name] == original[job_id][name], name
    result = invoke(collect.main, ["--watch", "--interval", "0.3"])
    assert "Completed: 4/4" in result.stdout


def test_a_job_created_before_a_lost_answer_is_recorded_once(emu, invoke, tmp_path: Path):
    emu.fail("POST", r"/jobs$", 503, after=True)  # IBM made the job, then the answer was lost
    result = invoke(submit.main, ["-e", "bell", "--shots", "50"])
    assert result.exit_code == 1
    assert "the last one may have been submitted — the next `qcollect` will find out" in result.stderr
    assert "1 job(s) may have been submitted" in result.stdout
    assert "Nothing was submitted." not in result.stdout
    assert len(emu.jobs) == 1  # the client did not post it again
    [intent] = ledger_records(tmp_path / "ledger")
    assert intent["status"] == "submitting"
    result = invoke(collect.main, ["--watch", "--interval", "0.3"])
    assert result.exit_code == 0, result.output
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed" and record["job_id"] == next(iter(emu.jobs))
    assert len(emu.jobs) == 1


def test_a_system_failure_on_ibm_is_resubmitted(emu, invoke, tmp_path: Path):
    out = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "50", "--json"]).stdout)
    emu.set_job_state(out["jobs"][0]["job_id"], "Failed", reason="Error returned at backend level.",
                      reason_code=1010)
    invoke(collect.main, [])
    result = invoke(collect.main, ["--resubmit-failed"])
    assert "submitted (was deferred)" in result.stdout
    invoke(collect.main, ["--watch", "--interval", "0.3"])
    first, retry = ledger_records(tmp_path / "ledger")
    assert first["status"] == "failed" and first["failure_class"] == "system"
    assert retry["status"] == "completed" and retry["retry_of"] == first["record_id"]
    assert len(emu.jobs) == 2
