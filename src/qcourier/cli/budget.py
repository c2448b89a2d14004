"""``qcourier budget``: the QPU budget of each key over the rolling window; the estimate model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qcourier.cli._common import (
    EMPTY,
    AppState,
    cell,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
    print_table,
)


@click.command()
@click.option("--no-service", is_flag=True,
              help="Do not ask the services for their own usage figures (ledger only, offline).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The study plan (TOML) whose remaining cost to show "
              "[default: ./qcourier-plan.toml if present].")
@ledger_dir_option
@json_option
@handle_errors
def main(no_service: bool, plan_file: Path | None, ledger_dir: Path | None,
         as_json: bool) -> None:
    """Show each key's QPU budget over the rolling 28-day window, from the ledger.

    \b
    One row per key: each IBM API key in the ledger or configured, and the local
    service's simulated budget.
      limit      QCOURIER_BUDGET_SECONDS_<N>, else QCOURIER_BUDGET_SECONDS (600)
      used       QPU seconds recorded for jobs that finished in the window
      reserved   estimated seconds of jobs pending or being submitted
      remaining  limit - used - reserved
    A finished job whose usage the service still reports as pending is not in
    used; a line below the table says how many there are, and that the budget
    guard counts their estimates until qcollect records the figures.
    Unless --no-service, each service's own usage figure is shown beside the
    ledger's used, with the difference (service - ledger); a service that cannot
    answer shows "unavailable: <reason>". Then the QPU-time estimate model's
    record over finished jobs: actual / estimate, and the mean absolute error.

    \b
    --json prints:
      {"now": ISO time, "window_days": 28,
       "keys": [{"service", "key_index", "limit_seconds", "used_seconds",
                 "reserved_seconds", "remaining_seconds", "jobs_used",
                 "jobs_reserved", "jobs_usage_pending", "usage_pending_seconds",
                 "window_start", "now",
                 "service_usage": null (--no-service)
                   | {"usage_seconds", "limit_seconds", "difference_seconds"}
                   | {"error": "<reason>"}}, ...],
       "model_accuracy": {"<service>": {"count", "mean_ratio", "median_ratio",
                          "mean_abs_error_seconds", "by_experiment": {...}}}}

    \b
    Examples:
      qcourier budget
      qcourier budget --no-service
      qcourier budget --plan qcourier-plan.toml
      qcourier budget --json | jq '.keys[] | {service, key_index, remaining_seconds}'
    """
    from qcourier.accounting.budget import budget_report, report_keys
    from qcourier.ledger.status import utc_now
    from qcourier.ledger.store import Ledger

    state = get_state()
    ledger = Ledger(state.ledger_dir(ledger_dir))
    state.sync_edge(ledger, "pull")
    fold = ledger.fold()
    for problem in fold.problems:
        state.warn(str(problem))
    settings, records = state.get_settings(), fold.summaries
    keys = report_keys(records, [key.index for key in settings.api_keys()],
                       state.default_service_name())
    report = budget_report(
        records, utc_now(), keys, settings.budget_limit,
        None if no_service else lambda service, index: state.get_pool().get(service, index).usage())
    from qcourier.accounting.plan import lines as plan_lines
    from qcourier.accounting.plan import load_plan, progress

    plan = load_plan(plan_file)
    if plan is not None:
        report["plan"] = progress(plan, fold.summaries, state.get_settings().budget_limit,
                                  utc_now())
    if as_json:
        state.emit_json(report)
        return
    _print_keys(state, report["keys"], with_service=not no_service)
    _print_accuracy(state, report["model_accuracy"])
    if plan is not None:
        click.echo("Plan:")
        for line in plan_lines(report["plan"]):
            click.echo(f"  {line}")


def _print_keys(state: AppState, keys: list[dict[str, Any]], with_service: bool) -> None:
    columns = ["service", "key", "limit s", "used s", "reserved s", "remaining s", "jobs done",
               "jobs open"]
    if with_service:
        columns += ["service used s", "difference s"]
    rows = []
    for k in keys:
        row = [k["service"], cell(k["key_index"]), cell(k["limit_seconds"], ".1f"),
               cell(k["used_seconds"], ".1f"), cell(k["reserved_seconds"], ".1f"),
               cell(k["remaining_seconds"], ".1f"), str(k["jobs_used"]), str(k["jobs_reserved"])]
        if with_service:
            usage = k["service_usage"]
            if "error" in usage:
                row += [f"unavailable: {usage['error']}", EMPTY]
            else:
                row += [cell(usage["usage_seconds"], ".1f"),
                        cell(usage["difference_seconds"], "+.1f")]
        rows.append(row)
    print_table(state, columns, rows, optional=["key", "jobs open", "jobs done", "difference s"])
    for k in keys:
        if k["jobs_usage_pending"]:
            label = k["service"] if k["key_index"] is None else f"{k['service']} key {k['key_index']}"
            click.echo(f"{label}: usage pending at the service for {k['jobs_usage_pending']} "
                       f"finished job(s), not in used; the budget guard counts their estimates "
                       f"({k['usage_pending_seconds']:.1f} s) until qcollect gets the figures")
    if keys:
        start, end = (keys[0][k][:16].replace("T", " ") for k in ("window_start", "now"))
        click.echo(f"Window: {start} to {end} UTC (28 days, rolling)")


def _print_accuracy(state: AppState, accuracy: dict[str, dict[str, Any]]) -> None:
    if not accuracy:
        click.echo("Estimate model: no finished job has both an estimate and a recorded usage yet.")
        return
    click.echo("Estimate model (actual / estimate, over finished jobs):")
    rows = []
    for service, overall in accuracy.items():
        groups = [("all", overall), *overall.get("by_experiment", {}).items()]
        for experiment, f in groups:
            rows.append([service, experiment, str(f["count"]), f"{f['mean_ratio']:.3f}",
                         f"{f['median_ratio']:.3f}", f"{f['mean_abs_error_seconds']:.2f}"])
    print_table(state, ["service", "experiment", "jobs", "mean ratio", "median ratio",
                               "mean abs error s"], rows)
