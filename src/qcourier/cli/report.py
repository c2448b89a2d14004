"""``qcourier report``: the study's service-level indicators, results over time, plots."""

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
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Also write PNG plots into this directory (created if needed).")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics qcollect --prometheus writes to this file (keeping "
              "its last-successful-poll time).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the study as one self-contained HTML page to "
              "this file (atomically), e.g. --html study.html.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The study plan (TOML) to show progress against "
              "[default: ./qcourier-plan.toml if present].")
@ledger_dir_option
@json_option
@handle_errors
def main(plots_dir: Path | None, prometheus: Path | None, html_file: Path | None,
         plan_file: Path | None, ledger_dir: Path | None,
         as_json: bool) -> None:
    """Report the study: job SLIs, QPU budget per key, each experiment over time.

    \b
    Indicators (over every job in the ledger):
      success rate  completed / finished, where finished = completed + partial
                    + failed + cancelled + submit_failed (retries count per attempt)
      queue time    the service's queue seconds: median and p95
      turnaround    completion - submission time: median and p95
                    (p95: linear interpolation between order statistics; with 20 or
                    fewer jobs it lies between the two largest values)
      budget        QPU seconds used per key in the rolling 28-day window vs its limit
      failures      failed, partial and cancelled jobs by class (system, user,
                    unknown); submit_failed and error counts
    Then, from the result files of completed jobs: the latest heavy-hex code logical
    error per round of each logical state (or why its fit is withheld), Lambda =
    eps(d=3)/eps(d=5) per basis when both distances ran, and the heartbeat's latest
    fidelity with its min and max over sessions and its drift check.

    \b
    --plots DIR writes (skipping, and saying so, any plot without data):
      counts_<job_id>.png                        top 20 outcomes of each completed job
      heavy_hex_code_logical_error_vs_rounds.png with 95% intervals and the fit
      surface_code_logical_error_vs_rounds.png   (only if the routed code ran)
      heartbeat_p1_vs_ideal.png                  latest heartbeat's per-qubit P(1)
      heartbeat_fidelity_over_time.png           fidelity by submission time
      budget_<service>[_<key>].png               burn-down against the limit

    \b
    --json prints:
      {"now", "ledger_dir",
       "jobs": {"total", "finished", "by_status": {<status>: n, ...}},
       "success_rate": float | null,
       "queue_seconds": {"count", "median", "p95"},
       "turnaround_seconds": {"count", "median", "p95"},
       "budget": [{"service", "key_index", "limit_seconds", "used_seconds",
                   "reserved_seconds", "remaining_seconds", "jobs_used", "jobs_reserved",
                   "window_start", "now", "burn_down": [{"time", "used_seconds"}]}],
       "failures": {"by_class": {"system", "user", "unknown"}, "submit_failed", "error"},
       "experiments": {
         "heavy_hex_code": [{"job_id", "record_id", "submission_time", "logical_state",
                           "distance", "logical_error_per_round",
                           "logical_error_per_round_stderr", "fault_distance",
                           "fit_intercept_eps0", "fit_chi2_per_dof", "fit_withheld",
                           "per_round": [{"rounds", "shots", "logical_error_rate",
                                          "logical_error_ci95": [lo, hi]}]}],
         "surface_code": [...as heavy_hex_code],
         "deployment": [{"job_id", "record_id", "submission_time", "backend", "width", "shots",
                         "marginal_fidelity", "marginal_fidelity_stderr",
                         "mean_absolute_deviation",
                         "p1_measured", "p1_ideal"}],
         "bell": [{"job_id", "record_id", "submission_time", "shots",
                   "hellinger_fidelity"}],
         "ghz": [...as bell]},
       "summary": {"heavy_hex_code_latest": {<state>: {"job_id", "submission_time",
                     "distance", "logical_error_per_round",
                     "logical_error_per_round_stderr"}},
                   "surface_code_latest": {...as heavy_hex_code_latest},
                   "lambda": [{"basis", "lambda", "lambda_stderr", "eps_d3", "eps_d5",
                               "job_id_d3", "job_id_d5"}],
                   "heartbeat": null | {"sessions", "latest", "latest_job_id",
                                        "latest_submission_time", "min", "max",
                                        "drift": {"earlier_sessions", "shots", "backend",
                                                  "baseline_mean", "baseline_sd", "z",
                                                  "drifted", "reason"}}},
       "skipped_results": [{"job_id", "result_path", "reason"}],
       "plots": null | {"written": [path, ...], "skipped": [{"plot", "reason"}]}}
    Times are ISO 8601 (UTC); durations in seconds; null where there is no data.

    \b
    Examples:
      qcourier report
      qcourier report --plots out/
      qcourier report --html study.html
      qcourier report --plan qcourier-plan.toml
      qcourier report --json | jq '.success_rate, .turnaround_seconds.p95'
    """
    from qcourier.accounting.plots import write_plots
    from qcourier.accounting.report import study_report
    from qcourier.ledger.status import utc_now
    from qcourier.ledger.store import Ledger

    state = get_state()
    directory = state.ledger_dir(ledger_dir)
    state.sync_edge(Ledger(directory), "pull")
    fold = Ledger(directory).fold()
    for problem in fold.problems:
        state.warn(str(problem))
    report = study_report(fold.records, directory, state.get_settings().budget_limit, utc_now())
    for skipped in report.skipped_results:
        state.warn(f"result of job {skipped['job_id']} skipped: {skipped['reason']}")
    plots = write_plots(report, fold.records, directory, plots_dir) if plots_dir else None
    if prometheus is not None:
        from qcourier.accounting.metrics import write_prometheus

        write_prometheus(prometheus, fold.records, state.get_settings().budget_limit, utc_now(),
                         last_poll=None)
    from qcourier.accounting.plan import lines as plan_lines
    from qcourier.accounting.plan import load_plan
    from qcourier.accounting.plan import progress as plan_progress

    plan = load_plan(plan_file)
    planned = (None if plan is None else
               plan_progress(plan, fold.records, state.get_settings().budget_limit, utc_now()))
    if html_file is not None:
        from qcourier.accounting.page import write_html

        write_html(html_file, report, fold.records, directory,
                   plan_lines(planned) if planned else None)
    if as_json:
        state.emit_json({**report.to_dict(), "plots": plots.to_dict() if plots else None,
                         **({"plan": planned} if planned is not None else {})})
        return
    if planned is not None:
        click.echo("Plan:")
        for line in plan_lines(planned):
            click.echo(f"  {line}")
    _print_slis(state, report)
    _print_budget(state, report)
    _print_experiments(report)
    if plots is not None:
        _print_plots(plots)


def _seconds(value: float | None) -> str:
    """A duration cell in the unit that reads best, or :data:`EMPTY`."""
    if value is None:
        return EMPTY
    if value < 90:
        return f"{value:.1f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _print_slis(state: AppState, report: Any) -> None:
    data = report.to_dict()
    statuses = ", ".join(f"{k} {n}" for k, n in data["jobs"]["by_status"].items() if n)
    rate = data["success_rate"]
    completed = data["jobs"]["by_status"]["completed"]
    failures = data["failures"]
    rows = [["jobs", str(data["jobs"]["total"]), statuses or "none"],
            ["success rate", cell(rate, ".1%"),
             f"{completed} completed of {data['jobs']['finished']} finished"]]
    for label, key in (("queue time", "queue_seconds"), ("turnaround", "turnaround_seconds")):
        dist = data[key]
        rows.append([f"{label} median", _seconds(dist["median"]), f"over {dist['count']} jobs"])
        rows.append([f"{label} p95", _seconds(dist["p95"]), f"over {dist['count']} jobs"])
    by_class = failures["by_class"]
    rows.append(["failures", str(sum(by_class.values())), "failed, partial, cancelled by class: "
                 + ", ".join(f"{k} {n}" for k, n in by_class.items())])
    rows.append(["submit_failed / error", f"{failures['submit_failed']} / {failures['error']}",
                 "never became a job / could not be polled"])
    print_table(state, ["indicator", "value", "detail"], rows)


def _print_budget(state: AppState, report: Any) -> None:
    if not report.budget:
        return
    click.echo("")
    rows = []
    for key in report.budget:
        b = key.state
        share = cell(b.used_seconds / b.limit_seconds if b.limit_seconds else None, ".1%")
        rows.append([b.service, cell(b.key_index), cell(b.limit_seconds, ".1f"),
                     cell(b.used_seconds, ".1f"), share, cell(b.reserved_seconds, ".1f"),
                     cell(b.remaining_seconds, ".1f")])
    print_table(state, ["service", "key", "limit s", "used s", "used %", "reserved s",
                               "remaining s"], rows)
    click.echo("QPU budget over the rolling 28-day window.")


def _print_experiments(report: Any) -> None:
    click.echo("")
    for experiment, title in (("heavy_hex_code", "Heavy-hex code"),
                              ("surface_code", "Surface code (routed, not distance-d on heavy-hex)")):
        latest = report.surface_code_latest(experiment)
        if not latest:
            continue
        click.echo(f"{title}, latest logical error per round by logical state:")
        for logical_state, p in latest.items():
            eps, err = p["logical_error_per_round"], p["logical_error_per_round_stderr"]
            value = (f"withheld ({p.get('fit_withheld') or 'no fit'})" if eps is None
                     else f"{eps:.4f}" + (f" ± {err:.4f}" if err else ""))
            click.echo(f"  |{logical_state}> d={p['distance']}  {value}  (job {p['job_id']}, "
                       f"{p['submission_time']:%Y-%m-%d %H:%M} UTC)")
    for item in report.lambda_factors():
        err = f" ± {item['lambda_stderr']:.2f}" if item["lambda_stderr"] is not None else ""
        click.echo(f"Lambda ({item['basis'].upper()} basis) = eps(d=3) / eps(d=5) = "
                   f"{item['lambda']:.2f}{err}")
    heartbeat = report.heartbeat_summary()
    if heartbeat:
        click.echo(f"Heartbeat marginal fidelity: latest {heartbeat['latest']:.4f} (job "
                   f"{heartbeat['latest_job_id']}); min {heartbeat['min']:.4f}, max "
                   f"{heartbeat['max']:.4f} over {heartbeat['sessions']} session(s)")
        drift = heartbeat["drift"]
        if drift["z"] is None:
            click.echo(f"Heartbeat drift: not checked ({drift['reason']})")
        else:
            verdict = "DRIFTED" if drift["drifted"] else "within the study's baseline"
            click.echo(f"Heartbeat drift: z = {drift['z']:+.1f} against {drift['earlier_sessions']} "
                       f"earlier session(s) at {drift['shots']} shots (baseline "
                       f"{drift['baseline_mean']:.4f} ± {drift['baseline_sd']:.4f}): {verdict}")
    for name in ("bell", "ghz"):
        points = [p for p in report.series[name] if p["hellinger_fidelity"] is not None]
        for width in sorted({p.get("width") for p in points}, key=lambda w: (w is None, w)):
            same = [p for p in points if p.get("width") == width]  # one series per width
            label = name if name == "bell" or width is None else f"{name} width {width}"
            click.echo(f"{label}: latest fidelity {same[-1]['hellinger_fidelity']:.3f} "
                       f"over {len(same)} job(s)")
    if not any(report.series.values()):
        click.echo("No experiment results yet: collect completed jobs with qcollect.")


def _print_plots(plots: Any) -> None:
    click.echo("")
    click.echo(f"Wrote {len(plots.written)} plot(s):")
    for path in plots.written:
        click.echo(f"  {path}")
    for skipped in plots.skipped:
        click.echo(f"Skipped {skipped['plot']}: {skipped['reason']}")
