"""``qcourier ledger check``: what in the ledger directory is damaged, and where."""

from __future__ import annotations

from pathlib import Path

import click

from qcourier.cli._common import get_state, handle_errors, json_option, ledger_dir_option


@click.group("ledger")
def group() -> None:
    """Look after the ledger directory (its JSONL files and result files)."""


@group.command("check")
@ledger_dir_option
@json_option
@handle_errors
def check(ledger_dir: Path | None, as_json: bool) -> None:
    """Read every ledger line and re-hash every result file; report what is damaged.

    Nothing is changed: a damaged line stays where it is (the ledger is append-only; the
    fold skips it and keeps every other line), and a missing or altered result file is
    downloaded again by the next qcollect. Exit 0 when nothing is damaged, 1 when anything
    is.

    \b
    Examples:
      qcourier ledger check
      qcourier ledger check --ledger-dir /data/study/results/ibm_experiments --json
    """
    from qcourier.ledger.check import check_ledger
    from qcourier.ledger.store import Ledger

    state = get_state()
    with state.progress() as progress:
        report = check_ledger(Ledger(state.ledger_dir(ledger_dir)), progress)
    if as_json:
        state.emit_json(report.as_json())
        raise SystemExit(report.exit_code)
    lines = sum(f.lines for f in report.files)
    click.echo(f"{len(report.files)} ledger file(s), {lines} line(s); "
               f"{report.results_checked} result file(s) re-hashed.")
    for item in report.files:
        for problem in item.problems:
            click.echo(f"Damaged: {problem}")
    for result_problem in report.result_problems:
        click.echo(f"Damaged: {result_problem}")
    if report.problems:
        click.echo(f"{report.problems} problem(s). Damaged lines are skipped by every command "
                   "(the ledger is never rewritten); fix a file by hand only with a backup.")
    else:
        click.echo("Nothing is damaged.")
    raise SystemExit(report.exit_code)
