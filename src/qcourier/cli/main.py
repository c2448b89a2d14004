"""``qcourier``: the command group (submit, collect, status, experiments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qcourier import __version__
from qcourier.cli import budget, collect, jobs, ledger, notify, report, store, submit
from qcourier.cli._common import (
    EXIT_CODES_HELP,
    Group,
    api_key_option,
    cell,
    exit_with,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
    print_table,
    qpu_cell,
    service_option,
    time_cell,
)
from qcourier.ledger.status import STATUS_NAMES


@click.group(cls=Group,
             help="qcourier: submit quantum jobs now, collect and analyse their results later.\n\n"
             "\b\nExamples:\n  qcourier submit --experiment bell\n  qcourier collect --watch\n"
             "  qcourier status --json\n" + EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="qcourier")
def main() -> None:
    pass


main.add_command(submit.main, "submit")
main.add_command(collect.main, "collect")
main.add_command(budget.main, "budget")
main.add_command(report.main, "report")
main.add_command(jobs.show, "show")
main.add_command(jobs.cancel, "cancel")
main.add_command(ledger.group, "ledger")
main.add_command(notify.main, "notify")
main.add_command(store.sync, "sync")
main.add_command(store.group, "store")


@main.command("status")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(STATUS_NAMES),
              help="Only jobs in this status (repeatable).")
@click.option("--experiment", "experiments_", multiple=True, metavar="NAME",
              help="Only jobs of this experiment (repeatable).")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="Only jobs submitted (or deferred) since this date, UTC.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Show at most this many jobs in the table, the most recent (0: all). "
                   "--json always lists every matching job.")
@ledger_dir_option
@json_option
@handle_errors
def status(statuses: tuple[str, ...], experiments_: tuple[str, ...], since, limit: int,
           ledger_dir: Path | None, as_json: bool) -> None:
    """Show the latest state of every job in the ledger: a table, then counts per status.

    With --json: a list with one object per job, each the job's latest ledger line (the
    LedgerRecord fields, see the README).

    \b
    Examples:
      qcourier status
      qcourier status --status deferred --status submitting
      qcourier status --limit 0 > all-jobs.txt
      qcourier status --experiment heavy_hex_code --since 2026-11-01 --json
    """
    from collections import Counter

    from qcourier.ledger.store import Ledger

    state = get_state()
    ledger = Ledger(state.ledger_dir(ledger_dir))
    state.sync_edge(ledger, "pull")
    fold = ledger.fold()
    for problem in fold.problems:
        state.warn(str(problem))
    chosen = fold.select(statuses, experiments_, since, in_time_order=bool(ledger.pulled_files()))
    if as_json:
        state.emit_json_lines(fold.lines(chosen))
        return
    records = [e.summary for e in chosen]
    shown = records[-limit:] if limit else records
    columns = ["job id", "experiment", "state", "backend", "service", "key", "status", "submitted",
               "queue s", "QPU s"]
    rows = [[cell(r.job_id), r.experiment_type, cell(r.logical_state), r.backend, r.service,
             cell(r.api_key_index), r.status.value, time_cell(r.submission_time),
             cell(r.queue_seconds, ".0f"), qpu_cell(r)] for r in shown]
    if rows:
        print_table(state, columns, rows,
                    optional=["key", "service", "state", "queue s", "QPU s", "submitted"])
    if len(shown) < len(records):
        click.echo(f"(the {len(shown)} most recent shown; --limit 0 shows all {len(records)})")
    counts = Counter(r.status.value for r in records)
    by_status = ", ".join(f"{counts[name]} {name}" for name in STATUS_NAMES if counts[name])
    total = (f"{len(records)} of {len(fold.entries)} job(s)" if len(records) != len(fold.entries)
             else f"{len(records)} job(s)")
    click.echo(f"{total}: {by_status}" if by_status else total)


@main.command("experiments")
@json_option
@handle_errors
def experiments(as_json: bool) -> None:
    """List the experiments and their parameters (set them with qsubmit --param KEY=VALUE).

    \b
    Examples:
      qcourier experiments
      qsubmit --experiment heavy_hex_code --param distance=5 --param logical_state=+
    """
    from qcourier.experiments import GROUPS, available

    listing: list[dict[str, Any]] = []
    for name, cls in sorted(available().items()):
        params = []
        for field_name, info in cls.Params.model_fields.items():
            params.append({"name": field_name, "type": _type_name(info.annotation),
                           "default": info.default, "description": info.description})
        listing.append({"name": name, "description": cls.description, "parameters": params})
    if as_json:
        get_state().emit_json({"experiments": listing,
                               "groups": {k: list(v) for k, v in GROUPS.items()}})
        return
    for item in listing:
        click.echo(f"{item['name']}: {item['description']}")
        for p in item["parameters"]:
            note = f" — {p['description']}" if p["description"] else ""
            click.echo(f"    {p['name']} ({p['type']}, default {p['default']!r}){note}")
    for group, members in GROUPS.items():
        click.echo(f"{group}: {' + '.join(members)}")


def _type_name(annotation: object) -> str:
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


@main.command("recover")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="Only jobs created after this date (UTC).")
@click.option("--dry-run", is_flag=True, help="List what would be recovered; write nothing.")
@click.option("--from-store", is_flag=True,
              help="Rebuild a lost ledger directory from the team store (QCOURIER_STORE) "
              "instead of asking the service.")
@click.option("--writer", default=None, metavar="ID",
              help="With --from-store: the lost directory's writer id (w + 16 hex digits) "
              "[default: the store's only writer].")
@api_key_option
@service_option
@ledger_dir_option
@json_option
@handle_errors
def recover(since, dry_run: bool, from_store: bool, writer: str | None,
            api_key_index: int | None, service: str | None,
            ledger_dir: Path | None, as_json: bool) -> None:
    """Rebuild ledger records for qcourier jobs that no ledger file knows.

    Asks the service (every configured IBM key, or the one given) for the jobs tagged
    `qcourier`, and writes a record, marked recovered, for each one missing from the
    ledger (a deleted or lost JSONL), in a new ledger file. Then `qcollect` collects them.

    With --from-store: rebuilds a lost ledger directory from the team store instead. The
    machine's own ledger files are written again, byte for byte, from its segments, with the
    result, circuit and snapshot files they refer to; then the other machines' are pulled.
    An existing ledger with lines in it is never overwritten (give an empty --ledger-dir).
    Exit 1 if a segment or file could not be recovered (each named in one line).

    \b
    Examples:
      qcourier recover
      qcourier recover --since 2026-11-01 --api-key-index 1
      qcourier recover --service local --dry-run
      qcourier recover --from-store --ledger-dir results/ibm_experiments
      qcourier recover --from-store --writer w3f9a0c2b7d41e658
    """
    from qcourier.errors import UsageError

    if not from_store and writer is not None:
        raise UsageError("--writer is for --from-store")
    if from_store:
        if since or dry_run or api_key_index is not None or service:
            raise UsageError("--from-store takes only --writer, --ledger-dir and --json")
        store.recover_from_store(get_state(), ledger_dir, writer, as_json)
        return

    from qcourier.ledger.store import Ledger
    from qcourier.submit.recovery import recover as run_recovery

    state = get_state()
    keys = state.get_settings().api_keys() if state.service is None else []
    if (service or state.default_service_name()) == "ibm" and api_key_index is None and keys:
        services = [state.get_pool().get("ibm", key.index) for key in keys]  # every key
    else:
        services = [state.get_service(service, api_key_index)]
    report = run_recovery(services, Ledger(state.ledger_dir(ledger_dir)), since, dry_run)
    if as_json:
        state.emit_json({"recovered": [r.as_json() for r in report.recovered],
                         "already_known": report.known, "ledger_path": report.ledger_path
                         and str(report.ledger_path), "failures": report.failures})
    else:
        rows = [[cell(r.job_id), r.experiment_type, r.backend, r.service, cell(r.api_key_index),
                 time_cell(r.submission_time)] for r in report.recovered]
        if rows:
            print_table(state, ["job id", "experiment", "backend", "service", "key", "created"],
                        rows, optional=["key", "service"])
        where = "(dry run: nothing written)" if dry_run else f"into {report.ledger_path}"
        click.echo(f"Recovered {len(report.recovered)} job(s) {where}; "
                   f"{report.known} already in the ledger."
                   if report.recovered else f"Nothing to recover; {report.known} job(s) already in the ledger.")
    exit_with(report.exit_code, report.failures)
