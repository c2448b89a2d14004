"""The commands as a user runs them, with CliRunner against the local service in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import finish_local_jobs, ledger_records

from qcourier.cli import collect, main, submit
from qcourier.cli._common import AppState
from qcourier.ledger.status import JobStatus
from qcourier.services.local import LocalService, LocalServiceConfig


def ledger_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
            for line in f.read_text().splitlines()]


def test_submit_then_collect_bell(invoke, tmp_path: Path):
    result = invoke(submit.main, ["--experiment", "bell", "--shots", "200"])
    assert result.exit_code == 0, result.output
    assert "Using the local Aer-backed service" in result.stderr
    [line] = ledger_records(tmp_path / "ledger")
    assert line["status"] == "submitted" and line["service"] == "local"
    assert len(line["job_id"]) == 20 and line["job_id"].isalnum() and line["job_id"].islower()
    assert len(line["circuit_hash"]) == 64 and line["shots"] == 200
    assert line["backend"] == "fake_fez" and line["experiment_type"] == "bell"
    assert line["transpiled_gates"]["measure"] == 2
    assert f"Job {line['job_id']}" not in result.stdout  # submit prints a table, not poll lines
    assert line["job_id"] in result.stdout

    result = invoke(collect.main, [])
    assert result.exit_code == 0, result.output
    assert f"Job {line['job_id']}: completed — Hellinger fidelity" in result.stdout
    assert "Completed: 1/1  Pending: 0/1" in result.stdout
    final = ledger_lines(tmp_path)[-1]
    assert final["status"] == "completed" and final["record_id"] == line["record_id"]
    assert final["usage_seconds"] > 0 and final["queue_seconds"] is not None
    result_file = tmp_path / "ledger" / final["result_path"]
    import hashlib

    assert hashlib.sha256(result_file.read_bytes()).hexdigest() == final["result_sha256"]
    payload = json.loads(result_file.read_text())
    assert sum(payload["counts"][0].values()) == 200
    assert payload["analysis"]["hellinger_fidelity"] > 0.8
    [collected] = list((tmp_path / "ledger").glob("collected_results_*.json"))
    assert json.loads(collected.read_text())["jobs"][0]["job_id"] == line["job_id"]


def test_collect_twice_changes_nothing(invoke, tmp_path: Path):
    invoke(submit.main, ["--experiment", "ghz", "--param", "width=3", "--shots", "100", "--repeat", "2"])
    invoke(collect.main, [])
    ledger_dir = tmp_path / "ledger"

    def files(skip_cache: bool) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in ledger_dir.rglob("*") if p.is_file()
                and not (skip_cache and "cache" in p.relative_to(ledger_dir).parts)}

    before = files(skip_cache=True)
    result = invoke(collect.main, [])
    assert result.exit_code == 0
    assert "Completed: 2/2  Pending: 0/2" in result.stdout
    assert files(skip_cache=True) == before
    # The fold index caught up with the lines the first run appended; after that, a run
    # with nothing to do writes nothing at all.
    settled = files(skip_cache=False)
    invoke(collect.main, [])
    assert files(skip_cache=False) == settled


def test_pending_jobs_are_polled_and_only_changes_recorded(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "3600")
    invoke(submit.main, ["--experiment", "bell", "--shots", "10"])
    for _ in range(2):
        result = invoke(collect.main, [])
        assert result.exit_code == 0
        assert ": queued" in result.stdout and "Pending: 1/1" in result.stdout
    statuses = [line["status"] for line in ledger_lines(tmp_path)]
    assert statuses == ["submitting", "submitted", "queued"]  # the second poll appended nothing


def test_failed_job_records_the_error(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_LOCAL_FAILURE_RATE", "1")
    invoke(submit.main, ["--experiment", "bell", "--shots", "10"])
    result = invoke(collect.main, [])
    assert result.exit_code == 0
    assert ": failed — Injected failure" in result.stdout and "Injected failure" in result.stdout
    final = ledger_lines(tmp_path)[-1]
    assert final["status"] == "failed" and "Injected failure" in final["error"]
    assert final["result_path"] is None


def test_json_outputs(invoke, tmp_path: Path):
    out = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "10", "--json"]).stdout)
    assert out["dry_run"] is False and len(out["jobs"]) == 1
    job_id = out["jobs"][0]["job_id"]
    out = json.loads(invoke(collect.main, ["--json"]).stdout)
    assert out["completed"] == 1 and out["pending"] == 0 and out["jobs"][0]["job_id"] == job_id
    [job] = out["jobs"]
    final = ledger_lines(tmp_path)[-1]
    assert {k: job[k] for k in ("job_id", "record_id", "status", "result_path")} == {
        k: final[k] for k in ("job_id", "record_id", "status", "result_path")}
    assert job["state"] == "DONE" and job["changed"] is True and job["failed"] is False
    assert (tmp_path / "ledger" / job["result_path"]).is_file()  # relative to the ledger
    out = json.loads(invoke(main.main, ["status", "--json"]).stdout)
    assert out[0]["job_id"] == job_id and out[0]["status"] == "completed"


def test_dry_run_writes_nothing(invoke, tmp_path: Path):
    result = invoke(submit.main, ["-e", "ghz", "-p", "width=4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Dry run: 1 job(s) planned" in result.stdout
    assert not (tmp_path / "ledger").exists() and not (tmp_path / "service").exists()


def test_jobs_file_appends_to_an_existing_ledger(invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    [path] = list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--jobs-file", path, "--force"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))) == 1
    assert len(ledger_records(tmp_path / "ledger")) == 2
    result = invoke(collect.main, ["--jobs-file", path])
    assert "Completed: 2/2" in result.stdout


def test_job_id_checks_one_job(invoke, tmp_path: Path):
    ids = [json.loads(invoke(submit.main, ["-e", "bell", "--shots", "10", "--json", "--force"]).stdout)["jobs"][0]["job_id"]
           for _ in range(2)]
    result = invoke(collect.main, ["--job-id", ids[0]])
    assert f"Job {ids[0]}: completed" in result.stdout and ids[1] not in result.stdout
    assert "Completed: 1/1" in result.stdout


def test_job_id_unknown_to_the_ledger_but_known_to_the_service(invoke, tmp_path: Path):
    service = LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=3600))
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    job_id = service.submit("fake_fez", [qc], 10)
    result = invoke(collect.main, ["--job-id", job_id])
    assert result.exit_code == 0
    assert f"Job {job_id}: queued (not in the ledger)" in result.stdout


def test_watch_repeats_until_done(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "2")
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    result = invoke(collect.main, ["--watch", "--interval", "0.5"])
    assert result.exit_code == 0
    assert result.stdout.count("Pending: 1/1") >= 1
    assert result.stdout.strip().endswith("Pending: 0/1") or "Collected results" in result.stdout


def test_status_table(invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    result = invoke(main.main, ["status"])
    assert result.exit_code == 0
    assert "submitted" in result.stdout and "1 job(s)" in result.stdout


def test_git_commit_is_recorded(invoke, tmp_path: Path):
    import git

    repo = git.Repo.init(tmp_path / "repo")
    (tmp_path / "repo" / "f").write_text("x")
    repo.index.add(["f"])
    repo.index.commit("c", author=git.Actor("t", "t@t"), committer=git.Actor("t", "t@t"))
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--repo", tmp_path / "repo"])
    assert result.exit_code == 0
    line = ledger_lines(tmp_path)[-1]
    assert line["git_commit"] == repo.head.commit.hexsha and line["git_dirty"] is False


def test_outside_a_repo_warns_but_submits(invoke, tmp_path: Path):
    result = invoke(submit.main, ["-e", "bell", "--shots", "10"])
    assert result.exit_code == 0
    assert "not in a git repository" in result.stderr
    assert ledger_lines(tmp_path)[-1]["git_commit"] is None


# -- bad input: one line, non-zero exit, nothing written ---------------------------------------

def assert_clean_failure(result, tmp_path: Path, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-e", "bell", "--backend", "fake_nowhere"], ["unknown backend 'fake_nowhere'", "fake_fez"]),
        (["-e", "ghz", "-p", "width=200"], ["width"]),
        (["-e", "ghz", "-p", "width=6", "--backend", "fake_manila"], ["need 6 qubits", "fake_manila"]),
        (["-e", "bell", "-p", "colour=blue"], ["unknown parameter 'colour'", "shots"]),
        (["-e", "surface_code", "-p", "distance=4"], ["distance", "3 or 5"]),
        (["-e", "surface_code", "-p", "distance=1"], ["3 or 5"]),
        (["-e", "surface_code", "-p", "rounds=0"], ["rounds"]),
        (["-e", "surface_code", "-p", "logical_state=2"], ["logical_state", "'+'"]),
        (["-e", "bell", "-p", "shots"], ["key=value"]),
        (["-e", "bell", "--jobs-file", "missing.jsonl"], ["does not exist"]),
    ],
)
def test_bad_submit_input(invoke, tmp_path: Path, args, fragments):
    result = invoke(submit.main, args)
    assert_clean_failure(result, tmp_path, 2, *fragments)
    assert not list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
    assert not (tmp_path / "service").exists()


@pytest.mark.parametrize("args", [["-e", "nope"], ["-e", "bell", "--shots", "0"],
                                  ["-e", "bell", "--shots", "99999999"]])
def test_bad_submit_input_caught_by_click(invoke, tmp_path: Path, args):
    result = invoke(submit.main, args)
    assert result.exit_code == 2
    assert "Error:" in result.stderr
    assert not (tmp_path / "ledger").exists()


def test_jobs_file_that_is_not_a_ledger(invoke, tmp_path: Path):
    other = tmp_path / "notes.jsonl"
    other.write_text("{\"hello\": 1}\n")
    for command in (submit.main, collect.main):
        args = ["-e", "bell", "--jobs-file", other] if command is submit.main else ["--jobs-file", other]
        result = invoke(command, args)
        assert_clean_failure(result, tmp_path, 2, "is not a qcourier ledger")
    assert other.read_text() == "{\"hello\": 1}\n"


def test_unwritable_ledger_directory(invoke, tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = invoke(submit.main, ["-e", "bell", "--ledger-dir", blocker / "ledger"])
    assert_clean_failure(result, tmp_path, 1, "cannot create ledger directory", "--ledger-dir")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        result = invoke(submit.main, ["-e", "bell", "--ledger-dir", ro])
        assert_clean_failure(result, tmp_path, 1, "not writable")


@pytest.mark.parametrize("interval", ["0", "-5"])
def test_bad_interval(invoke, tmp_path: Path, interval):
    result = invoke(collect.main, ["--watch", "--interval", interval])
    assert_clean_failure(result, tmp_path, 2, "--interval")


def test_unknown_job_id_on_the_local_service(invoke, tmp_path: Path):
    result = invoke(collect.main, ["--job-id", "aaaaaaaaaaaaaaaaaaaa"])
    assert_clean_failure(result, tmp_path, 2, "aaaaaaaaaaaaaaaaaaaa", "not found")


def test_conflicting_selectors(invoke, tmp_path: Path):
    result = invoke(collect.main, ["--poll-all", "--job-id", "x"])
    assert_clean_failure(result, tmp_path, 2, "at most one")


def test_a_job_the_service_lost_gets_status_error_and_exit_1(invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    for spec in (tmp_path / "service").glob("*.json"):
        spec.unlink()
    result = invoke(collect.main, [])
    assert result.exit_code == 1
    assert ": error — not found" in result.stdout
    assert ledger_lines(tmp_path)[-1]["status"] == JobStatus.ERROR.value
    lines = len(ledger_lines(tmp_path))
    invoke(collect.main, [])
    assert len(ledger_lines(tmp_path)) == lines  # the same error is not appended again


def test_a_torn_ledger_line_is_reported_not_fatal(invoke, tmp_path: Path):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    [path] = list((tmp_path / "ledger").glob("submitted_jobs_*.jsonl"))
    with open(path, "a") as fh:
        fh.write('{"schema_version": 1, "job_')
    result = invoke(collect.main, [])
    assert result.exit_code == 0
    assert f"{path}:3: torn last line skipped" in result.stderr
    assert "Completed: 1/1" in result.stdout


def test_injected_service_is_used_without_patching(runner, tmp_path: Path):
    class Recording(LocalService):
        submitted: list[str] = []

        def submit(self, *args, **kwargs):
            job_id = super().submit(*args, **kwargs)
            self.submitted.append(job_id)
            return job_id

    svc = Recording(LocalServiceConfig(root=tmp_path / "elsewhere", queue_seconds=0, run_seconds=0))
    result = runner.invoke(submit.main, ["-e", "bell", "--shots", "10"], obj=AppState(service=svc))
    assert result.exit_code == 0
    assert len(Recording.submitted) == 1 and (tmp_path / "elsewhere").is_dir()


def test_python_dash_m_and_help(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "qcourier", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "submit" in out.stdout and "collect" in out.stdout
    for command in (submit.main, collect.main):
        assert "Exit codes:" in command.get_help(command.make_context("x", ["--help"], resilient_parsing=True))


def test_both_end_to_end_gives_decoded_rates_and_heartbeat_fidelity(invoke, tmp_path: Path):
    result = invoke(submit.main, ["-e", "both", "-p", "rounds=2", "-p", "width=5", "--shots", "300"])
    assert result.exit_code == 0, result.output
    lines = ledger_lines(tmp_path)
    code = next(line for line in lines if line["experiment_type"] == "heavy_hex_code")
    assert code["logical_state"] == "0" and code["num_circuits"] == 2
    assert code["params"]["distance"] == 3 and code["metadata"]["rounds"] == [1, 2]
    assert len(code["metadata"]["layout"]) == 23
    result = invoke(collect.main, [])
    assert result.exit_code == 0, result.output
    [collected] = list((tmp_path / "ledger").glob("collected_results_*.json"))
    jobs = {j["experiment_type"]: j for j in json.loads(collected.read_text())["jobs"]}
    analysis = jobs["heavy_hex_code"]["analysis"]
    assert [p["rounds"] for p in analysis["per_round"]] == [1, 2]
    assert all(0 <= p["logical_error_rate"] <= 1 and p["shots"] == 300 for p in analysis["per_round"])
    assert analysis["fault_distance"] == 3
    noise = analysis["decoder_noise"]
    assert 0 < noise["median_2q_gate_infidelity"] < 0.05  # from the fake_fez snapshot
    heartbeat = jobs["deployment"]["analysis"]
    assert 0.9 < heartbeat["marginal_fidelity"] <= 1 and len(heartbeat["p1_measured"]) == 5


@pytest.mark.parametrize("state", ["0", "1", "+", "-"])
def test_noiseless_transpiled_surface_code_has_no_logical_errors(invoke, tmp_path: Path, monkeypatch, state):
    monkeypatch.setenv("QCOURIER_LOCAL_NOISE", "false")
    result = invoke(submit.main, ["-e", "surface_code", "-p", "rounds=2", "-p", f"logical_state={state}",
                                  "--shots", "200"])
    assert result.exit_code == 0, result.output
    invoke(collect.main, [])
    final = ledger_lines(tmp_path)[-1]
    payload = json.loads((tmp_path / "ledger" / final["result_path"]).read_text())
    for pub in payload["analysis"]["per_round"]:
        assert pub["detection_event_fraction"] == 0
        assert pub["raw_logical_flip_rate"] == 0 and pub["logical_error_rate"] == 0


def test_env_example_copied_to_dotenv_works(invoke, tmp_path: Path, monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    dotenv = tmp_path / ".env"
    dotenv.write_text((repo / ".env.example").read_text())
    dotenv.chmod(0o600)
    monkeypatch.delenv("QCOURIER_SERVICE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved qiskit account
    result = invoke(submit.main, ["-e", "bell", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Using the local Aer-backed service" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert warnings == [f"Warning: {tmp_path} is not in a git repository; git_commit not recorded"]


def test_status_shows_the_latest_jobs_and_counts_every_one(invoke, tmp_path: Path):
    from qcourier.cli.main import main as group

    invoke(submit.main, ["-e", "bell", "--shots", "10", "--repeat", "3", "--max-pending", "1"])
    result = invoke(group, ["status", "--limit", "2"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 2 + 2  # header, two jobs, the note, the counts
    assert lines[-2] == "(the 2 most recent shown; --limit 0 shows all 3)"
    assert lines[-1] == "3 job(s): 2 deferred, 1 submitted"
    every = invoke(group, ["status", "--limit", "0"]).stdout.splitlines()
    assert len(every) == 1 + 3 + 1
    assert len(json.loads(invoke(group, ["status", "--json", "--limit", "1"]).stdout)) == 3


@pytest.mark.parametrize("args, env, message", [
    (["--workers", "0"], {}, "Invalid value for '--workers'"),
    ([], {"QCOURIER_POLL_WORKERS": "0"}, "bad setting QCOURIER_POLL_WORKERS"),
])
def test_bad_worker_counts_are_one_line_errors(invoke, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = invoke(collect.main, args)
    assert result.exit_code == 2 and message in result.stderr


def test_quiet_prints_only_changes_and_nothing_when_nothing_changed(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "600")
    out = json.loads(invoke(submit.main, ["-e", "bell", "--shots", "10", "--json"]).stdout)
    job_id = out["jobs"][0]["job_id"]
    first = invoke(collect.main, ["--quiet"])
    assert first.exit_code == 0
    assert first.stdout.strip() == f"Job {job_id}: queued" and first.stderr == ""
    quiet_again = invoke(collect.main, ["--quiet"])  # still queued: nothing changed
    assert quiet_again.stdout == "" and quiet_again.stderr == ""
    finish_local_jobs(tmp_path)
    done = invoke(collect.main, ["--quiet", "--log-file", tmp_path / "logs" / "qcollect.log"])
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"Job {job_id}: completed — ") and lines[1].startswith("Collected results: ")
    assert len(lines) == 2
    assert invoke(collect.main, ["--quiet"]).stdout == ""
    log = (tmp_path / "logs" / "qcollect.log").read_text().splitlines()
    assert len(log) == 2 and f"Job {job_id}: completed — " in log[0]
    import re

    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in log)


def test_status_filters(invoke, tmp_path: Path, monkeypatch):
    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    invoke(collect.main, [])
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "3600")
    invoke(submit.main, ["-e", "ghz", "-p", "width=3", "--shots", "10"])
    out = json.loads(invoke(main.main, ["status", "--status", "completed", "--json"]).stdout)
    assert [r["experiment_type"] for r in out] == ["bell"]
    out = json.loads(invoke(main.main, ["status", "--experiment", "ghz", "--json"]).stdout)
    assert [r["status"] for r in out] == ["submitted"]
    assert json.loads(invoke(main.main, ["status", "--since", "2999-01-01", "--json"]).stdout) == []
    text = invoke(main.main, ["status", "--status", "submitted"]).stdout
    assert "1 of 2 job(s)" in text


def test_qcollect_writes_prometheus_metrics(invoke, tmp_path: Path):
    from prometheus_client.parser import text_string_to_metric_families

    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    prom = tmp_path / "textfile" / "qcourier.prom"
    prom.parent.mkdir()
    result = invoke(collect.main, ["--prometheus", prom])
    assert result.exit_code == 0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(prom.read_text()) for s in family.samples}
    assert samples[("qcourier_jobs", (("experiment", "bell"), ("status", "completed")))] == 1
    assert samples[("qcourier_qpu_seconds_limit", (("key", "-"), ("service", "local")))] == 600
    assert samples[("qcourier_last_successful_poll_timestamp_seconds", ())] > 0
