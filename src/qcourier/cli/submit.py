"""``qsubmit``: build, transpile and submit an experiment's jobs, record them, exit."""

from __future__ import annotations

from pathlib import Path

import click

from qcourier import __version__
from qcourier.cli._common import (
    Command,
    LazyChoice,
    api_key_option,
    cell,
    exit_codes_help,
    exit_with,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
    print_table,
    service_option,
)

HELP = f"""Submit an experiment's jobs and record them in the ledger; exit at once.

Builds the experiment's circuits, transpiles them for the backend, submits one job per
job unit (all circuits of a unit as PUBs of one job) and appends one ledger line per job to
a new file results/ibm_experiments/submitted_jobs_YYYYMMDD_HHMMSS.jsonl (or to --jobs-file).
Collect the results later with qcollect.

\b
Examples:
  qsubmit --experiment both
  qsubmit --experiment heavy_hex_code --param distance=5 --param logical_state=+
  qsubmit --experiment deployment --repeat 4
  qsubmit --experiment ghz --param width=8 --shots 2000 --repeat 3
  qsubmit --experiment bell --dry-run --json
  qsubmit --experiment both --service ibm --submit-all
  qsubmit --experiment deployment --pace --force     # hourly heartbeat from cron
{exit_codes_help(
    "every job was submitted, deferred, skipped as a duplicate, or held back by --pace",
    "a submission failed, or the budget guard refused it")}"""


def _experiment_names() -> list[str]:
    from qcourier.experiments import choices

    return choices()


@click.command("submit", cls=Command, help=HELP)
@click.version_option(__version__, prog_name="qsubmit")
@click.option("--experiment", "-e", required=True, type=LazyChoice(_experiment_names, "NAME"),
              help="Experiment or group to submit: heavy_hex_code, deployment, both "
              "(heavy_hex_code + deployment), bell, ghz, surface_code (routed; legacy), or any "
              "installed one (`qcourier experiments`).")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Set an experiment parameter (repeatable); see `qcourier experiments`.")
@click.option("--backend", default=None, help="Backend name [default: least busy that fits].")
@click.option("--shots", type=click.IntRange(1, 1_000_000), default=None,
              help="Shots per circuit [default: the experiment's].")
@click.option("--repeat", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Submit each job this many times (e.g. heartbeat sessions).")
@click.option("--jobs-file", type=click.Path(path_type=Path), default=None,
              help="Append to this existing ledger file instead of creating one.")
@click.option("--repo", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Git repository whose commit is recorded [default: the current directory's].")
@click.option("--dry-run", is_flag=True, help="Build and transpile, but submit and write nothing.")
@click.option("--force", is_flag=True,
              help="Submit even if an identical job (same circuits, backend, shots, options) "
              "is already pending or completed.")
@click.option("--max-pending", type=click.IntRange(1, 1000), default=None,
              help="Pending jobs allowed per key; more are recorded as deferred and submitted by "
              "qcollect as slots free [default: $QCOURIER_MAX_PENDING or 3].")
@click.option("--allow-over-budget", is_flag=True,
              help="Submit even if the estimated QPU time exceeds what remains of the key's "
              "28-day budget.")
@click.option("--pace", is_flag=True,
              help="For a heartbeat from cron: skip (exit 0, one line) a submission that would "
              "spend the budget faster than an even spread over the 28-day window.")
@click.option("--submit-all", is_flag=True,
              help="Submit the same jobs once per configured IBM API key.")
@click.option("--no-lease", is_flag=True,
              help="With a team store (QCOURIER_STORE): submit without the key's budget lease, "
              "e.g. while the store cannot be reached. The budget guard then sees only this "
              "machine's ledger: another machine may spend the same budget meanwhile.")
@click.option("--no-transpile-cache", is_flag=True,
              help="Transpile afresh instead of reusing transpiled circuits cached in the "
              "ledger directory (cache/transpiled/).")
@api_key_option
@ledger_dir_option
@service_option
@json_option
@handle_errors
def main(experiment: str, params: tuple[str, ...], backend: str | None, shots: int | None,
         repeat: int, jobs_file: Path | None, repo: Path | None, dry_run: bool, force: bool,
         max_pending: int | None, allow_over_budget: bool, pace: bool, submit_all: bool,
         no_lease: bool, no_transpile_cache: bool, api_key_index: int | None, ledger_dir: Path | None,
         service: str | None, as_json: bool) -> None:
    from qcourier.accounting.budget import BudgetGuard
    from qcourier.circuits.cache import CacheLimits, cache_directory
    from qcourier.experiments import resolve
    from qcourier.ledger.store import Ledger, check_ledger_file
    from qcourier.store.lease import TeamLease
    from qcourier.submit.dispatch import queue_policy
    from qcourier.submit.plan import ExecutionLimits, SubmitOptions
    from qcourier.submit.run import submit_everywhere

    state = get_state()
    resolved = resolve(experiment, list(params), shots)
    ledger = Ledger(state.ledger_dir(ledger_dir) if jobs_file is None
                    else check_ledger_file(jobs_file).parent)
    if not dry_run:
        ledger.ensure_writable()
        state.sync_edge(ledger, "pull")  # the team's jobs count for dedupe and the budget
    services = state.get_services(service, api_key_index, submit_all)
    settings = state.get_settings()
    team = None if dry_run or no_lease else TeamLease.from_settings(settings, "qsubmit")
    if no_lease and settings.store and not dry_run:
        state.warn("--no-lease: the budget guard sees only this machine's ledger; another "
                   "machine may spend the same budget meanwhile")
    with state.progress() as progress:
        report = submit_everywhere(services, ledger, resolved, SubmitOptions(
            backend=backend, repeat=repeat, repo_path=repo, jobs_file=jobs_file,
            dry_run=dry_run, progress=progress, force=force,
            limits=ExecutionLimits(settings.max_execution_margin, settings.max_execution_cap),
            policy=queue_policy(settings, max_pending),
            guard=BudgetGuard(settings.budget_limit, allow_over_budget, pace),
            transpile_cache=None if no_transpile_cache else cache_directory(ledger.directory),
            cache_limits=CacheLimits(settings.transpile_cache_max_age_days,
                                     int(settings.transpile_cache_max_mb * 1_000_000)),
            team=team))
    if not dry_run:
        state.sync_edge(ledger, "push")  # publish what this run wrote
    for line in report.skipped:
        state.info(f"Skipped: {line}")
    for line in report.paced:
        state.info(f"Not submitted: {line}")
    for line in report.budget_lines:
        state.info(f"Budget: {line}")
    for warning in dict.fromkeys(w for o in report.outcomes for w in o.plan.warnings):
        state.warn(warning)
    if as_json:
        state.emit_json({"dry_run": dry_run, "ledger_path": report.ledger_path and str(report.ledger_path),
                         "jobs": [{**r.as_json(), **({"status": "planned"} if dry_run else {})}
                                  for r in report.records],
                         "budget": report.budget_lines, "maybe_submitted": report.maybe_submitted,
                         "skipped": report.skipped, "paced": report.paced,
                         "failures": report.failures})
    else:
        _print_table(state, report.records, report.ledger_path, dry_run, report.maybe_submitted)
    exit_with(report.exit_code, report.failures)


def _print_table(state, records, path, dry_run: bool, maybe_submitted: int = 0) -> None:
    columns = ["job id", "status", "experiment", "state", "backend", "shots", "circuits", "depth",
               "circuit hash"]
    rows = [[cell(r.job_id), "planned" if dry_run else r.status.value, r.experiment_type,
             cell(r.logical_state), r.backend, str(r.shots), str(r.num_circuits),
             str(r.transpiled_depth), r.circuit_hash[:12]] for r in records]
    if rows:
        print_table(state, columns, rows,
                    optional=["circuit hash", "depth", "circuits", "state", "shots", "job id"])
    deferred = sum(r.status.value == "deferred" for r in records)
    if dry_run:
        click.echo(f"Dry run: {len(records)} job(s) planned; nothing submitted or written.")
    elif records:
        click.echo(f"Recorded {len(records)} job(s) ({len(records) - deferred} submitted, "
                   f"{deferred} deferred); ledger: {path}")
        click.echo("Collect the results (and submit deferred jobs) with: qcollect --watch")
    elif not maybe_submitted:
        click.echo("Nothing was submitted.")
    if maybe_submitted:
        click.echo(f"{maybe_submitted} job(s) may have been submitted — the next `qcollect` will "
                   "find out.")
