"""``qcourier``: the command group (submit, collect, status, experiments)."""

from __future__ import annotations

from pathlib import Path

import click

from qcourier import __version__
from qcourier.cli import collect, submit
from qcourier.cli._common import get_state, handle_errors, json_option, ledger_dir_option, print_table


@click.group(help="qcourier: submit quantum jobs now, collect and analyse their results later.\n\n"
             "\b\nExamples:\n  qcourier submit --experiment bell\n  qcourier collect --watch\n"
             "  qcourier status --json")
@click.version_option(__version__, prog_name="qcourier")
def main() -> None:
    pass


main.add_command(submit.main, "submit")
main.add_command(collect.main, "collect")


@main.command("status")
@ledger_dir_option
@json_option
@handle_errors
def status(ledger_dir: Path | None, as_json: bool) -> None:
    """Show the latest state of every job in the ledger.

    \b
    Examples:
      qcourier status
      qcourier status --json
    """
    from qcourier.ledger import Ledger

    state = get_state()
    fold = Ledger(state.ledger_dir(ledger_dir)).fold()
    for problem in fold.problems:
        state.warn(str(problem))
    records = fold.records
    if as_json:
        state.emit_json([r.model_dump(mode="json") for r in records])
        return
    columns = ["job id", "experiment", "state", "backend", "service", "status", "submitted", "updated"]
    rows = [[r.job_id or "-", r.experiment_type, r.logical_state or "-", r.backend, r.service,
             r.status.value,
             r.submission_time.strftime("%Y-%m-%d %H:%M:%S") if r.submission_time else "-",
             r.updated_at.strftime("%Y-%m-%d %H:%M:%S")] for r in records]
    print_table(state.stdout, columns, rows)
    click.echo(f"{len(records)} job(s)")
