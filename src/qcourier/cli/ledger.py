"""``qcourier ledger check``: what in the ledger directory is damaged, and where."""

from __future__ import annotations

from pathlib import Path

import click

from qcourier.cli._common import (
    exit_codes_help,
    exit_with,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
)


@click.group("ledger")
def group() -> None:
    """Look after the ledger directory (its JSONL files and result files)."""


CHECK_HELP = f"""Read every ledger line and re-hash every result file; report what is damaged.

Nothing is changed: a damaged line stays where it is (the ledger is append-only; the
fold skips it and keeps every other line), and a missing or altered result file is
downloaded again by the next qcollect.

\b
Examples:
  qcourier ledger check
  qcourier ledger check --ledger-dir /data/study/results/ibm_experiments --json
{exit_codes_help("nothing is damaged", "something is damaged, or the ledger cannot be read")}"""


@group.command("check", help=CHECK_HELP)
@ledger_dir_option
@json_option
@handle_errors
def check(ledger_dir: Path | None, as_json: bool) -> None:
    from qcourier.ledger.check import check_ledger
    from qcourier.ledger.store import Ledger

    state = get_state()
    with state.progress() as progress:
        report = check_ledger(Ledger(state.ledger_dir(ledger_dir)), progress)
    if as_json:
        state.emit_json(report.as_json())
        exit_with(report.exit_code)
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
    exit_with(report.exit_code)
