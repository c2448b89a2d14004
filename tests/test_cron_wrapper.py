"""scripts/qcollect-cron.sh, run as cron would: a real subprocess, a bare PATH, no stdin.

The project under test is a temp directory whose ``.venv/bin/activate`` puts the directory
of this interpreter (where the console scripts are installed) on PATH, so the tests work
with whichever environment runs them (/root/venv here, the project's .venv in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script

WRAPPER = Path(__file__).resolve().parents[1] / "scripts" / "qcollect-cron.sh"
STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
CRON_PATH = "/usr/bin:/bin"  # cron's default: qcollect is found only through the venv


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a stand-in virtualenv and a .env naming its ledger."""
    home = tmp_path / "project"
    (home / ".venv" / "bin").mkdir(parents=True)
    bindir = Path(sys.executable).parent
    (home / ".venv" / "bin" / "activate").write_text(f'export PATH="{bindir}:$PATH"\n')
    # relative: resolves only if the wrapper runs qcollect from the project directory
    (home / ".env").write_text("QCOURIER_LEDGER_DIR=results/ledger\n")
    (home / ".env").chmod(0o600)
    return home


def cron_env(tmp_path: Path, project: Path, **extra: str) -> dict[str, str]:
    env = cli_env(tmp_path, PATH=CRON_PATH, QCOURIER_HOME=str(project), **extra)
    del env["QCOURIER_LEDGER_DIR"]  # from the project's .env
    return env


def run_wrapper(env: dict[str, str], cwd: Path, *args: str, wrapper: Path = WRAPPER
                ) -> subprocess.CompletedProcess:
    return subprocess.run([str(wrapper), *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def log_lines(project: Path) -> list[str]:
    return (project / "results" / "qcollect.log").read_text().splitlines()


def test_nothing_to_do_prints_nothing_and_logs_one_alive_line_an_hour(tmp_path: Path,
                                                                      project: Path):
    env = cron_env(tmp_path, project)
    done = run_wrapper(env, tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    [alive] = log_lines(project)
    assert STAMPED.match(alive) and "qcollect-cron: alive; nothing new" in alive
    again = run_wrapper(env, tmp_path)  # within the hour: nothing more
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert log_lines(project) == [alive]
    log = project / "results" / "qcollect.log"
    hour_ago = log.stat().st_mtime - 3601
    os.utime(log, (hour_ago, hour_ago))  # the log has been quiet for an hour
    assert run_wrapper(env, tmp_path).returncode == 0
    lines = log_lines(project)
    assert len(lines) == 2 and "alive" in lines[1]


def test_a_submitted_job_is_collected_silently_and_logged(tmp_path: Path, project: Path):
    env = cron_env(tmp_path, project)
    submitted = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "10"], env=env,
                               cwd=project, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    [job] = ledger_records(project / "results" / "ledger")
    assert job["status"] == "submitted"

    done = run_wrapper(env, tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    [job] = ledger_records(project / "results" / "ledger")
    assert job["status"] == "completed"
    lines = log_lines(project)
    assert lines and all(STAMPED.match(line) for line in lines)
    assert any(job["job_id"] in line for line in lines)

    again = run_wrapper(env, tmp_path)  # appends, never truncates
    assert again.returncode == 0
    assert log_lines(project)[:len(lines)] == lines


def test_a_failing_qcollect_exit_code_and_output_reach_cron(tmp_path: Path, project: Path):
    done = run_wrapper(cron_env(tmp_path, project), tmp_path, "--no-such-option")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Error: No such option" in done.stderr  # cron mails stderr
    assert "qcollect exited with 2" in done.stderr
    lines = log_lines(project)
    assert all(STAMPED.match(line) for line in lines)
    assert any("Error: No such option" in line for line in lines)
    assert lines[-1].endswith("qcollect-cron: qcollect exited with 2")


def test_a_missing_virtualenv_is_a_clear_error(tmp_path: Path, project: Path):
    env = cron_env(tmp_path, project, QCOURIER_VENV="no-such-venv")
    done = run_wrapper(env, tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"qcollect-cron: error: no virtualenv at {project}/no-such-venv")
    assert "QCOURIER_VENV" in done.stderr


def test_log_dash_writes_to_stdout_for_the_journal(tmp_path: Path, project: Path):
    env = cron_env(tmp_path, project, QCOURIER_LOG="-")
    done = run_wrapper(env, tmp_path, "--no-such-option")
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert all(STAMPED.match(line) for line in lines)
    assert any("Error: No such option" in line for line in lines)
    assert not (project / "results" / "qcollect.log").exists()


def test_the_study_is_the_current_directory_and_the_checkouts_venv_serves(tmp_path: Path,
                                                                          project: Path):
    """Run as the README's crontab line does: cd into the study, the wrapper from a
    qcourier checkout elsewhere whose .venv has qcourier (the study has no .venv)."""
    checkout = tmp_path / "qcourier-checkout"
    (checkout / "scripts").mkdir(parents=True)
    wrapper = Path(shutil.copy2(WRAPPER, checkout / "scripts" / WRAPPER.name))
    shutil.move(str(project / ".venv"), str(checkout / ".venv"))
    env = cron_env(tmp_path, project, QCOURIER_LOG="logs/cron.log")
    del env["QCOURIER_HOME"]
    submitted = subprocess.run([script("qsubmit"), "-e", "bell", "--shots", "10"], env=env,
                               cwd=project, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    done = run_wrapper(env, project, wrapper=wrapper)
    assert (done.returncode, done.stderr) == (0, "")
    [job] = ledger_records(project / "results" / "ledger")  # the study's own ledger
    assert job["status"] == "completed"
    assert job["job_id"] in (project / "logs" / "cron.log").read_text()
    assert not (checkout / "results").exists()


def test_a_directory_that_is_no_study_is_a_clear_error(tmp_path: Path, project: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = cron_env(tmp_path, project)
    del env["QCOURIER_HOME"]
    done = run_wrapper(env, elsewhere)
    assert done.returncode == 1
    assert done.stderr.startswith(f"qcollect-cron: error: {elsewhere} has no .env and no results/")
    assert not (elsewhere / "results").exists()
