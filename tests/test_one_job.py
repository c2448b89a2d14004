"""qcourier show, cancel and ledger check; qcollect --quiet on a damaged ledger; what a
new user meets first (--version, --help, git provenance inside their own repository)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli_env, collect_jobs, ledger_records, script, submit_jobs

from qcourier.cli._common import AppState
from qcourier.cli.collect import main as qcollect
from qcourier.cli.main import main as qcourier
from qcourier.cli.submit import main as qsubmit
from qcourier.services.local import LocalService, LocalServiceConfig


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=cli_env(tmp_path, **env), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def test_show_a_completed_job(invoke, service, tmp_path: Path):
    state = AppState(service=service)
    invoke(qsubmit, ["-e", "bell", "--shots", "20"], state)
    invoke(qcollect, [], AppState(service=service))
    [record] = ledger_records(tmp_path / "ledger")
    result = invoke(qcourier, ["show", record["job_id"], "--json"], AppState(service=service))
    shown = json.loads(result.stdout)
    assert shown["record"]["job_id"] == record["job_id"]
    assert [h["status"] for h in shown["history"]] == ["submitting", "submitted", "completed"]
    assert shown["result"]["problem"] is None
    assert shown["result"]["headline"].startswith("Hellinger fidelity ")
    assert shown["result"]["analysis"]["shots"] == 20

    text = invoke(qcourier, ["show", record["job_id"][:6]], AppState(service=service)).stdout
    assert f"job id         {record['job_id']}" in text
    assert "Analysis: Hellinger fidelity" in text


def test_collect_job_id_of_a_final_job_points_to_show(runner, service, tmp_path: Path):
    runner.invoke(qsubmit, ["-e", "bell", "--shots", "20"], obj=AppState(service=service))
    runner.invoke(qcollect, [], obj=AppState(service=service))
    [record] = ledger_records(tmp_path / "ledger")
    again = runner.invoke(qcollect, ["--job-id", record["job_id"]], obj=AppState(service=service))
    assert again.exit_code == 0
    assert f"qcourier show {record['job_id']}" in again.stderr


def test_show_says_when_a_result_file_was_altered(invoke, service, tmp_path: Path):
    invoke(qsubmit, ["-e", "bell", "--shots", "20"], AppState(service=service))
    invoke(qcollect, [], AppState(service=service))
    [record] = ledger_records(tmp_path / "ledger")
    (tmp_path / "ledger" / record["result_path"]).write_text("{}")
    text = invoke(qcourier, ["show", record["job_id"]], AppState(service=service)).stdout
    assert "does not match the sha256 in the ledger" in text


def test_show_unknown_or_ambiguous_ids_are_usage_errors(runner, service, tmp_path: Path):
    runner.invoke(qsubmit, ["-e", "bell", "--shots", "5", "--repeat", "2"],
                  obj=AppState(service=service))
    result = runner.invoke(qcourier, ["show", "zzzzzzzzzz"], obj=AppState(service=service))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: no job 'zzzzzzzzzz' in the ledger")
    assert "qcourier status" in result.stderr


def test_cancel_a_queued_job_records_it_and_the_service_agrees(invoke, tmp_path: Path):
    slow = LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=600,
                                           run_seconds=0, seed=3))
    invoke(qsubmit, ["-e", "bell", "--shots", "10"], AppState(service=slow))
    [record] = ledger_records(tmp_path / "ledger")
    result = invoke(qcourier, ["cancel", record["job_id"]], AppState(service=slow))
    assert result.stdout.strip() == f"Job {record['job_id']}: cancelled"
    [after] = ledger_records(tmp_path / "ledger")
    assert after["status"] == "cancelled" and after["usage_seconds"] == 0.0
    assert slow.job_status(record["job_id"]).state.value == "CANCELLED"
    again = invoke_exit(qcourier, ["cancel", record["job_id"]], slow)
    assert again.exit_code == 2 and "already cancelled" in again.stderr
    collected = invoke(qcollect, [], AppState(service=slow))  # final: nothing more to do
    assert "Completed: 0/1  Pending: 0/1" in collected.stdout


def invoke_exit(command, args, service):
    from click.testing import CliRunner

    return CliRunner().invoke(command, args, obj=AppState(service=service))


def test_cancel_a_deferred_job_keeps_qcollect_from_submitting_it(invoke, tmp_path: Path):
    slow = LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=600,
                                           run_seconds=0, seed=3))
    invoke(qsubmit, ["-e", "bell", "--shots", "10", "--repeat", "2", "--max-pending", "1"],
           AppState(service=slow))
    deferred = [r for r in ledger_records(tmp_path / "ledger") if r["status"] == "deferred"]
    [record] = deferred
    result = invoke(qcourier, ["cancel", record["record_id"]], AppState(service=slow))
    assert "cancelled before it was submitted" in result.stdout
    invoke_exit(qcollect, ["--max-pending", "5"], slow)
    statuses = sorted(r["status"] for r in ledger_records(tmp_path / "ledger"))
    assert statuses == ["cancelled", "queued"]
    assert len(slow.find_jobs(["qcourier"])) == 1  # the deferred one never reached it


def test_cancel_on_a_real_process(tmp_path: Path):
    [record] = submit_jobs(tmp_path, "-e", "bell", "--shots", "10",
                           QCOURIER_LOCAL_QUEUE_SECONDS="600")
    done = run([script("qcourier"), "cancel", record["job_id"]], tmp_path)
    assert done.returncode == 0, done.stderr
    assert ledger_records(tmp_path / "ledger")[0]["status"] == "cancelled"


def damaged_ledger(tmp_path: Path) -> Path:
    submit_jobs(tmp_path, "-e", "bell", "--shots", "10")
    [path] = (tmp_path / "ledger").glob("submitted_jobs_*.jsonl")
    with open(path, "a") as fh:
        fh.write('{"this is": "not a record"}\n')
    return path


def test_ledger_check_names_the_damaged_line_and_exits_1(tmp_path: Path):
    path = damaged_ledger(tmp_path)
    done = run([script("qcourier"), "ledger", "check"], tmp_path)
    assert done.returncode == 1
    assert f"Damaged: {path}:3: malformed line skipped" in done.stdout
    report = json.loads(run([script("qcourier"), "ledger", "check", "--json"], tmp_path).stdout)
    [item] = report["files"]
    assert (item["lines"], item["records"], item["problems"][0]["line"]) == (3, 2, 3)


def test_ledger_check_re_hashes_result_files(tmp_path: Path):
    submit_jobs(tmp_path, "-e", "bell", "--shots", "10")
    collect_jobs()
    clean = run([script("qcourier"), "ledger", "check"], tmp_path)
    assert clean.returncode == 0 and "Nothing is damaged." in clean.stdout
    [record] = ledger_records(tmp_path / "ledger")
    (tmp_path / "ledger" / record["result_path"]).write_text("altered")
    altered = run([script("qcourier"), "ledger", "check"], tmp_path)
    assert altered.returncode == 1
    assert f"job {record['job_id']}: its result file does not match" in altered.stdout


def test_quiet_warns_of_a_damaged_line_once_per_state_of_its_file(tmp_path: Path):
    path = damaged_ledger(tmp_path)
    first = run([script("qcollect"), "--quiet"], tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    assert f"{path}:3: malformed line skipped" in first.stderr
    assert "qcourier ledger check" in first.stderr
    second = run([script("qcollect"), "--quiet"], tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    assert second.stderr == "" and second.stdout == ""
    loud = run([script("qcollect")], tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    assert f"{path}:3: malformed line skipped" in loud.stderr  # not quiet: every time
    with open(path, "a") as fh:  # the file changes: the warning is due again
        fh.write("garbage\n")
    last = len(path.read_text().splitlines())
    third = run([script("qcollect"), "--quiet"], tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    assert f"{path}:3: malformed" in third.stderr and f"{path}:{last}: malformed" in third.stderr


@pytest.mark.parametrize("command", ["qsubmit", "qcollect", "qcourier"])
def test_every_command_has_version(tmp_path: Path, command: str):
    done = run([script(command), "--version"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"{command}, version 0.1.0"


def test_each_command_documents_its_own_exit_codes(tmp_path: Path):
    submit_help = run([script("qsubmit"), "--help"], tmp_path).stdout
    assert "--pace" in submit_help.split("Exit codes:")[1]
    assert "could not be polled" not in submit_help
    collect_help = run([script("qcollect"), "--help"], tmp_path).stdout
    assert "could not be polled" in collect_help.split("Exit codes:")[1]
    for text in (submit_help, collect_help):
        assert "130  interrupted" in text and "--debug" in text


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.org",
                           "-c", "user.name=t", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
def test_inside_a_users_repository_results_stay_untracked_and_clean(tmp_path: Path):
    repo = tmp_path / "study"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "experiment.py").write_text("print('hi')\n")
    git(repo, "add", "experiment.py")
    git(repo, "commit", "-qm", "start")
    env = dict(QCOURIER_LEDGER_DIR=str(repo / "results" / "ibm_experiments"),
               QCOURIER_LOCAL_SERVICE_DIR=str(repo / "results" / "local_service"))
    for _ in range(2):  # the second qsubmit runs with the first one's output in the tree
        done = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "10", "--force"],
                              env=cli_env(tmp_path, **env), cwd=repo, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "uncommitted changes" not in done.stderr
    assert git(repo, "status", "--porcelain") == ""  # qcourier's output is ignored
    records = ledger_records(repo / "results" / "ibm_experiments")
    assert [r["git_dirty"] for r in records] == [False, False]

    # Even a user who commits the ledger does not make the next record dirty by appending.
    (repo / "results" / "ibm_experiments" / ".gitignore").unlink()
    git(repo, "add", "-A", "results/ibm_experiments")
    git(repo, "commit", "-qm", "ledger")
    done = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "10", "--force",
                           "--jobs-file", str(sorted((repo / "results" / "ibm_experiments")
                                                     .glob("*.jsonl"))[0])],
                          env=cli_env(tmp_path, **env), cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ledger_records(repo / "results" / "ibm_experiments")[-1]["git_dirty"] is False

    (repo / "experiment.py").write_text("print('changed')\n")  # a real change is recorded
    done = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "10", "--force"],
                          env=cli_env(tmp_path, **env), cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0
    assert "has uncommitted changes; the record says git_dirty=true" in done.stderr
    assert ledger_records(repo / "results" / "ibm_experiments")[-1]["git_dirty"] is True


def test_a_deferred_job_cancelled_before_submission_costs_nothing_in_the_guard(invoke,
                                                                              tmp_path: Path):
    from qcourier.accounting.budget import budget_state
    from qcourier.ledger.status import utc_now
    from qcourier.ledger.store import Ledger

    slow = LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=600,
                                           run_seconds=0, seed=3))
    invoke(qsubmit, ["-e", "bell", "--shots", "10", "--repeat", "2", "--max-pending", "1"],
           AppState(service=slow))
    [deferred] = [r for r in ledger_records(tmp_path / "ledger") if r["status"] == "deferred"]
    records = Ledger(tmp_path / "ledger").fold().summaries
    before = budget_state(records, "local", None, 600, utc_now(), estimate_unknown=True)
    invoke(qcourier, ["cancel", deferred["record_id"]], AppState(service=slow))
    records = Ledger(tmp_path / "ledger").fold().summaries
    after = budget_state(records, "local", None, 600, utc_now(), estimate_unknown=True)
    assert after.used_seconds == before.used_seconds == 0.0
    assert after.reserved_seconds < before.reserved_seconds  # its reservation is released
