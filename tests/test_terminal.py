"""Every command on a real pseudo-terminal: what a person sees, not what a pipe gets.

Each test runs the installed console script as a subprocess whose stdin, stdout and stderr
are a pty of 80 x 40 (see ``terminal.py``), so rich draws what it draws for a person:
colours, spinners, live tables, wrapped tables.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from conftest import submit_process as submit
from terminal import run_on_pty

WIDTH = 80


def tty_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The subprocess environment of the suite, but with colours allowed (as for a person)."""
    env = cli_env(tmp_path, **extra)
    if "NO_COLOR" not in extra:
        del env["NO_COLOR"]
    return env


def on_tty(tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kwargs):
    return run_on_pty([script(args[0]), *args[1:]], env=env or tty_env(tmp_path), cwd=tmp_path,
                      columns=WIDTH, **kwargs)


def assert_clean(screen, code: int = 0) -> None:
    assert "Traceback" not in screen.text, screen.text
    assert screen.returncode == code, screen.text


def table_lines(text: str, header_start: str, rows: int) -> list[str]:
    """The header, rule and ``rows`` rows of the table whose header starts so."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1].strip()) == {"─"}, lines[start:start + 2]
    return lines[start:start + 2 + rows]


def test_qsubmit_dry_run_on_a_terminal(tmp_path: Path):
    screen = on_tty(tmp_path, "qsubmit", "--experiment", "bell", "--dry-run", "--service",
                    "local")
    assert_clean(screen)
    assert "Dry run: 1 job(s) planned; nothing submitted or written." in screen.text
    table = table_lines(screen.text, "status", 1)  # the all-empty job id column is left out
    assert "planned" in table[2] and "bell" in table[2]
    assert max(map(len, table)) <= WIDTH
    assert screen.has_colour
    assert "transpiling bell" in screen.stream_text  # the spinner said what it was doing
    assert "transpiling" not in screen.text  # and was cleared when done


def test_qsubmit_then_qcollect_on_a_terminal(tmp_path: Path):
    screen = on_tty(tmp_path, "qsubmit", "-e", "ghz", "-p", "width=3", "--shots", "200")
    assert_clean(screen)
    [record] = ledger_records(tmp_path / "ledger")
    table = table_lines(screen.text, "job id", 1)
    assert record["job_id"] in table[2] and "submitted" in table[2]
    assert max(map(len, table)) <= WIDTH
    assert "Recorded 1 job(s) (1 submitted, 0 deferred)" in screen.text

    collected = on_tty(tmp_path, "qcollect")
    assert_clean(collected)
    assert "polling 1 job(s); finished ones are downloaded" in collected.stream_text
    # the ledger's word for the state, and the result in one line
    assert f"Job {record['job_id']}: completed — Hellinger fidelity" in collected.text
    assert "DONE" not in collected.text
    assert "Completed: 1/1  Pending: 0/1" in collected.text


def test_no_colour_with_no_color_set(tmp_path: Path):
    submit(tmp_path, "-e", "bell", "--shots", "10")
    for command in (["qcourier", "status"], ["qcollect"]):
        screen = on_tty(tmp_path, *command, env=tty_env(tmp_path, NO_COLOR="1"))
        assert_clean(screen)
        assert not screen.has_colour, screen.raw[:500]
        coloured = on_tty(tmp_path, *command)
        assert coloured.has_colour


def test_status_fits_80_columns_and_says_what_it_left_out(tmp_path: Path):
    submit(tmp_path, "-e", "bell", "--shots", "10", "--repeat", "2")
    screen = on_tty(tmp_path, "qcourier", "status")
    assert_clean(screen)
    table = table_lines(screen.text, "job id", 2)
    assert max(map(len, table)) <= WIDTH
    for record in ledger_records(tmp_path / "ledger"):  # job ids are never cut
        assert any(record["job_id"] in line for line in table)
    assert "not shown, to fit 80 columns" in screen.text
    assert "2 job(s): 2 submitted" in screen.text


def test_watch_live_table_ends_on_ctrl_c_with_130_and_nothing_lost(tmp_path: Path):
    [before] = submit(tmp_path, "-e", "bell", "--shots", "10", QCOURIER_LOCAL_QUEUE_SECONDS="600")
    screen = on_tty(tmp_path, "qcollect", "--watch", "--interval", "0.5",
                    env=tty_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600"),
                    interrupt_after="Ctrl-C stops", interrupt_delay=0.5)
    assert_clean(screen, 130)
    assert before["job_id"] in screen.text and "queued" in screen.text
    assert "Interrupted. Every ledger line and result file written so far is whole." in screen.text
    [after] = ledger_records(tmp_path / "ledger")
    assert after["status"] == "queued"
    # the ledger still folds whole, and a plain run picks up where the watch stopped
    status = subprocess.run([script("qcourier"), "status", "--json"], env=cli_env(tmp_path),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert [r["status"] for r in json.loads(status.stdout)] == ["queued"]


def test_watch_live_table_runs_to_the_end(tmp_path: Path):
    submit(tmp_path, "-e", "bell", "--shots", "10", QCOURIER_LOCAL_QUEUE_SECONDS="1")
    screen = on_tty(tmp_path, "qcollect", "--watch", "--interval", "0.3")
    assert_clean(screen)
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "completed"
    assert f"Job {record['job_id']}: completed — Hellinger fidelity" in screen.text
    assert "Completed: 1/1  Pending: 0/1" in screen.text


@pytest.mark.parametrize("command", [
    ["qcourier", "budget"],
    ["qcourier", "report"],
    ["qcourier", "recover"],
    ["qcourier", "experiments"],
    ["qcourier", "ledger", "check"],
])
def test_other_commands_on_a_terminal(tmp_path: Path, command: list[str]):
    submit(tmp_path, "-e", "bell", "--shots", "10")
    subprocess.run([script("qcollect")], env=cli_env(tmp_path), cwd=tmp_path,
                   capture_output=True, timeout=300, check=True)
    screen = on_tty(tmp_path, *command)
    assert_clean(screen)
    expected = {"budget": "Window:", "report": "success rate", "recover": "Nothing to recover",
                "experiments": "surface_code:", "ledger": "Nothing is damaged."}[command[1]]
    assert expected in screen.text
    for line in screen.text.splitlines():
        if "   " in line.strip():  # a table row: it fits
            assert len(line) <= WIDTH, line


def test_show_on_a_terminal(tmp_path: Path):
    [record] = submit(tmp_path, "-e", "bell", "--shots", "10")
    subprocess.run([script("qcollect")], env=cli_env(tmp_path), cwd=tmp_path,
                   capture_output=True, timeout=300, check=True)
    screen = on_tty(tmp_path, "qcourier", "show", record["job_id"][:8])
    assert_clean(screen)
    assert f"job id         {record['job_id']}" in screen.text
    assert "Analysis: Hellinger fidelity" in screen.text
    history = table_lines(screen.text, "time (UTC)", 3)
    assert [line.split()[2] for line in history[2:]] == ["submitting", "submitted", "completed"]


def damage_local_service(tmp_path: Path) -> None:
    """Make the local service's job file unreadable as JSON (a bug's stand-in: an error
    that is no QcourierError)."""
    [spec] = [p for p in (tmp_path / "service").glob("*.json") if "." not in p.stem]
    spec.write_text("{not json")


@pytest.mark.parametrize("terminal", [True, False])
def test_an_unexpected_error_is_one_line_with_a_hint_never_a_traceback(tmp_path: Path,
                                                                       terminal: bool):
    submit(tmp_path, "-e", "bell", "--shots", "10")
    damage_local_service(tmp_path)
    if terminal:
        screen = on_tty(tmp_path, "qcollect")
        assert "Error: unexpected JSONDecodeError" in screen.text  # what the person sees
        text, code = screen.stream_text, screen.returncode  # its lines, before wrapping
    else:
        done = subprocess.run([script("qcollect")], env=cli_env(tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.stdout == ""
        text, code = done.stderr, done.returncode
    assert code == 1
    assert "Traceback" not in text
    [line] = [line for line in text.splitlines() if line.strip() and "polling" not in line]
    assert line.startswith("Error: unexpected JSONDecodeError: ")
    assert line.endswith("(rerun with --debug for the traceback)")

    debug = subprocess.run([script("qcollect"), "--debug"], env=cli_env(tmp_path), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "JSONDecodeError" in debug.stderr
