"""One way out (issue 16): every command leaves through qcourier.cli._common (``abort``,
``exit_with``, ``interrupted``, the error handler) with the exit codes its --help documents:
0 ok, 1 a runtime failure, 2 bad usage (a bad setting value as a bad option value), 130
interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcourier.cli import collect, submit
from qcourier.cli._common import INTERRUPTED, LazyChoice
from qcourier.cli.main import main as group
from qcourier.collect.run import collector_lock
from qcourier.ledger.store import Ledger

#: Every command, with arguments that make it do its work.
COMMANDS = [
    (submit.main, ["-e", "bell", "--shots", "10"]),
    (collect.main, []),
    (group, ["status"]),
    (group, ["budget"]),
    (group, ["report"]),
    (group, ["show", "x"]),
    (group, ["cancel", "x"]),
    (group, ["recover"]),
    (group, ["ledger", "check"]),
    (group, ["notify", "--test"]),
    (group, ["experiments"]),
]


@pytest.mark.parametrize("command, args", COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else None)
def test_ctrl_c_in_any_command_exits_130_with_one_line(invoke, monkeypatch, command, args):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    from qcourier.cli._common import AppState

    monkeypatch.setattr(AppState, "get_settings", interrupt)
    monkeypatch.setattr(AppState, "ledger_dir", interrupt)
    monkeypatch.setattr("qcourier.experiments.available", interrupt)
    monkeypatch.setattr("qcourier.experiments.get_experiment", interrupt)
    result = invoke(command, args)
    assert (result.exit_code, result.stderr) == (130, INTERRUPTED + "\n")


def test_ctrl_c_while_the_options_are_parsed_exits_130(invoke, monkeypatch):
    """Finding the experiments for ``-e`` happens before the command runs."""
    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(LazyChoice, "choices", property(interrupt))
    for command in (submit.main, group):
        args = ["-e", "bell"] if command is submit.main else ["submit", "-e", "bell"]
        result = invoke(command, args)
        assert (result.exit_code, result.stderr) == (130, INTERRUPTED + "\n")


@pytest.mark.parametrize("command, args", [
    (collect.main, []),
    (submit.main, ["-e", "bell", "--shots", "10"]),
    (group, ["status"]),
])
def test_a_bad_setting_is_bad_usage_like_the_same_bad_option(invoke, monkeypatch, command, args):
    monkeypatch.setenv("QCOURIER_POLL_WORKERS", "0")
    result = invoke(command, args)
    assert result.exit_code == 2
    assert result.stderr == ("Error: bad setting QCOURIER_POLL_WORKERS: '0' is not valid "
                             "(input should be greater than or equal to 1)\n")
    monkeypatch.delenv("QCOURIER_POLL_WORKERS")
    assert invoke(collect.main, ["--workers", "0"]).exit_code == 2


@pytest.mark.parametrize("quiet", [False, True])
def test_a_busy_collector_is_not_a_failure(invoke, tmp_path: Path, quiet):
    ledger = Ledger(tmp_path / "ledger")
    ledger.directory.mkdir(parents=True)
    with collector_lock(ledger):
        result = invoke(collect.main, ["--quiet"] if quiet else [])
    assert result.exit_code == 0 and result.stdout == ""
    expected = f"another qcollect is already collecting {ledger.directory}; nothing done\n"
    assert result.stderr == ("" if quiet else expected)


def test_a_runtime_failure_is_one_error_line_and_exit_1(invoke, tmp_path: Path):
    (tmp_path / "ledger").write_text("not a directory")
    result = invoke(collect.main, [])
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: cannot create ledger directory {tmp_path / 'ledger'}: File exists; choose "
        "another with --ledger-dir\n"))


@pytest.mark.parametrize("command, args", COMMANDS[:1] + COMMANDS[2:], ids=lambda c: " ".join(c) if isinstance(c, list) else None)
def test_every_command_documents_its_exit_codes(invoke, command, args):
    sub = args[:2] if args[:1] == ["ledger"] else args[:1]
    text = invoke(command, ([] if command is submit.main else sub) + ["--help"]).stdout
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n    {code}" in text, (args, code)
    assert "bad value of an option or a setting" in text
