"""``qcollect``: poll pending jobs, download and analyse results, record what changed."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from qcourier import __version__
from qcourier.cli._common import (
    Command,
    exit_codes_help,
    exit_with,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
    service_option,
)

HELP = f"""Poll the ledger's pending jobs; download, analyse and record finished ones.

Folds the ledger (every submitted_jobs_*.jsonl in the ledger directory, or only
--jobs-file), skips jobs already final, polls the rest and prints one line per job and a
summary. Each newly finished job gets its result file jobs/<job_id>.json (counts and
analysis) and a new ledger line; a collected_results_YYYYMMDD_HHMMSS.json lists what this
run collected. Safe to run again and again (by hand, from cron, or with --watch): a second
run with nothing new changes nothing, and a second collector started while one runs exits
at once. Each job is polled with the service and API key that submitted it; a job that
cannot be polled this time (service unreachable, key rejected) is reported, left as it is,
and polled again next time. A finished job whose usage the service still reported as
pending is asked about again (up to 20 a run, in the 28-day window) until its figure is
recorded; until then the budget guard counts its estimate.

\b
Examples:
  qcollect
  qcollect --watch --interval 10
  qcollect --jobs-file results/ibm_experiments/submitted_jobs_20261121_101500.jsonl
  qcollect --job-id d4k2v9x0abcd1234efgh --json
  qcollect --watch --html study.html --plan qcourier-plan.toml
{exit_codes_help(
    "every job was polled (also: another qcollect was busy, so nothing was done)",
    "a job could not be polled or collected, an I/O error")}"""


@click.command("collect", cls=Command, help=HELP)
@click.version_option(__version__, prog_name="qcollect")
@click.option("--jobs-file", type=click.Path(path_type=Path), default=None,
              help="Collect only the jobs of this ledger file.")
@click.option("--poll-all", is_flag=True, help="Collect every ledger file's jobs (the default).")
@click.option("--job-id", default=None,
              help="Check one job, recorded in the ledger or not (if not: on --service).")
@click.option("--watch", is_flag=True,
              help="Repeat until no job is pending (submitted, queued, running); Ctrl-C stops.")
@click.option("--interval", type=float, default=300.0, show_default=True,
              help="Seconds between polls with --watch.")
@click.option("--resubmit-failed", is_flag=True,
              help="Resubmit failed jobs whose failure was the system's (not charged) and "
              "partial ones, as new linked jobs; never those that failed through the circuit or "
              "options.")
@click.option("--max-retries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="With --resubmit-failed: retries allowed per original job.")
@click.option("--max-pending", type=click.IntRange(1, 1000), default=None,
              help="Pending jobs allowed per key when submitting deferred jobs "
              "[default: $QCOURIER_MAX_PENDING or 3].")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Jobs polled and collected at once (states of many jobs come from one "
              "listing where the service has one) [default: $QCOURIER_POLL_WORKERS or 8].")
@click.option("--verify-results", is_flag=True,
              help="Re-hash every completed job's result file against the ledger now (each "
              "run checks that they all exist and re-hashes 100 of them, in turns).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print only changes of status, new results and errors (for cron): a run "
              "with nothing new prints nothing.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append what each run reports to this file, with timestamps.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="After each run, write metrics in the Prometheus text format to this file "
              "(atomically), e.g. for node_exporter's textfile collector.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="After each run, refresh the study page (qcourier report "
              "--html) in this file, atomically.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="With --html: the study plan (TOML) the page shows progress "
              "against [default: ./qcourier-plan.toml if present].")
@ledger_dir_option
@service_option
@json_option
@handle_errors
def main(jobs_file: Path | None, poll_all: bool, job_id: str | None, watch: bool, interval: float,
         resubmit_failed: bool, max_retries: int, max_pending: int | None,
         workers: int | None, verify_results: bool, quiet: bool,
         log_file: Path | None, prometheus: Path | None, html_file: Path | None,
         plan_file: Path | None, ledger_dir: Path | None, service: str | None,
         as_json: bool) -> None:
    from qcourier.collect.run import (
        RESULT_CHECK_BATCH,
        CollectOptions,
        CollectorBusy,
        collect_pending,
    )
    from qcourier.ledger.store import Ledger, check_ledger_file
    from qcourier.store.lease import TeamLease
    from qcourier.submit.dispatch import queue_policy

    _check_options(jobs_file, job_id, poll_all, interval, html_file, plan_file)
    state = get_state()
    state.quiet = quiet
    if jobs_file is not None:
        ledger, paths = Ledger(check_ledger_file(jobs_file).parent), [jobs_file]
    else:
        ledger, paths = Ledger(state.ledger_dir(ledger_dir)), None
    pool, settings = state.get_pool(), state.get_settings()
    output = _Output(state, ledger, paths, as_json=as_json, quiet=quiet, watch=watch,
                     log_file=log_file)

    options = CollectOptions(
        paths=paths, job_id=job_id, default_service=service or state.default_service_name(),
        policy=queue_policy(settings, max_pending),
        resubmit_failed=resubmit_failed, max_retries=max_retries,
        admit=_budget_admission(settings, pool),
        verify_batch=None if verify_results else RESULT_CHECK_BATCH,
        workers=workers or settings.poll_workers,
        team=TeamLease.from_settings(settings, "qcollect"))

    def one_round(progress):
        return collect_pending(pool, ledger, dataclasses.replace(options, progress=progress))

    state.sync_edge(ledger, "pull")  # other machines' jobs and results, when a store is set
    with output:
        while True:
            try:
                report = output.run(one_round)
                state.sync_edge(ledger, "push")  # publish what this round recorded
            except CollectorBusy as exc:
                if not watch:  # not a failure: the collector that holds the ledger collects
                    state.info(str(exc))
                    return
                output.busy(str(exc), interval)  # e.g. the cron collector: skip this round
                time.sleep(interval)
                continue
            if job_id is not None and not report.outcomes and report.unrecorded is None:
                state.info(f"Job {job_id} is already final; its record, history and result: "
                           f"qcourier show {job_id}")
            _after_run(ledger, settings, report, prometheus, html_file, plan_file)
            if not watch or report.pending == 0 or report.unrecorded is not None:
                break
            time.sleep(interval)
    exit_with(report.exit_code)


def _check_options(jobs_file: Path | None, job_id: str | None, poll_all: bool, interval: float,
                   html_file: Path | None, plan_file: Path | None) -> None:
    """Bad usage that click's types cannot see, before anything is collected."""
    from qcourier.errors import UsageError

    if sum(x is not None and x is not False for x in (jobs_file, job_id, poll_all or None)) > 1:
        raise UsageError("give at most one of --jobs-file, --poll-all and --job-id")
    if interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {interval:g}")
    if plan_file is not None:
        if html_file is None:
            raise UsageError("--plan is for the page: give it with --html FILE")
        from qcourier.accounting.plan import load_plan

        load_plan(plan_file)  # a missing or bad plan given by name: an error before collecting


def _after_run(ledger, settings, report, prometheus: Path | None, html_file: Path | None,
               plan_file: Path | None) -> None:
    """What follows each run: notifications, the metrics file, the study page."""
    state = get_state()
    if settings.notify:
        from qcourier.collect.notify import notify_after_run, urls_of

        problem = notify_after_run(ledger, report, urls_of(settings.notify), settings.budget_limit,
                                   settings.notify_stuck_hours)
        if problem is not None:
            state.warn(problem)
    if prometheus is not None:
        _write_metrics(prometheus, ledger, settings, report)
    if html_file is not None:
        from qcourier.accounting.page import write_study_page

        for warning in write_study_page(html_file, ledger, settings.budget_limit, plan_file):
            state.warn(warning)


class _Output:
    """What qcollect shows of each run: JSON (one line per run under --watch), a live table
    (--watch on a terminal), or lines (under --watch, only what changed after the first run);
    and the log file."""

    def __init__(self, state, ledger, paths, *, as_json: bool, quiet: bool, watch: bool,
                 log_file: Path | None):
        self.state, self.ledger, self.paths = state, ledger, paths
        self.as_json, self.quiet, self.watch, self.log_file = as_json, quiet, watch, log_file
        self.live = (_LiveView(state.stdout) if watch and not (as_json or quiet)
                     and state.is_terminal() else None)
        self.rounds = 0
        self.last_summary: str | None = None

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
            self.live.show(self.ledger.fold(self.paths).summaries, "collecting…")
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def run(self, one_round):
        """One collection run, with progress shown while it works, then its report shown."""
        if self.live is not None:
            report = one_round(self.live.progress)
        elif self.as_json or self.quiet or not self.state.is_terminal("stderr"):
            report = one_round(lambda _message: None)  # progress is for a person watching
        else:
            with self.state.progress() as progress:
                report = one_round(progress)
        self.rounds += 1
        self.show(report)
        return report

    def show(self, report) -> None:
        if self.quiet:  # cron mail: each damaged line once per state of its file
            from qcourier.ledger.check import not_yet_warned

            report.problems = not_yet_warned(self.ledger, report.problems)
        changes, err = report_lines(report, self.quiet or (self.watch and self.rounds > 1))
        summary = summary_line(report)
        new_summary = [summary] if not self.quiet and summary != self.last_summary else []
        self.last_summary = summary
        if self.log_file is not None:
            _append_log(self.log_file, changes + new_summary + err)
        if self.as_json:
            body = report.as_json()
            click.echo(json.dumps(body, default=str) if self.watch
                       else json.dumps(body, indent=2, default=str))
        elif self.live is not None:  # the summary is the live table's caption
            self.live.print_above(err + changes)
            self.live.show(self.ledger.fold(self.paths).summaries, summary)
        else:
            for line in err:
                click.echo(line, err=True)
            for line in changes + new_summary:
                click.echo(line)

    def busy(self, message: str, interval: float) -> None:
        text = f"{message}; trying again in {interval:g} s"
        if self.live is not None:
            self.live.progress(text)
        elif not self.as_json:
            self.state.info(text)


def _budget_admission(settings, pool):
    """The budget guard's check of a deferred job (``BudgetGuard.deferred_admission``), made
    when the first one is to be submitted: an idle run imports no accounting."""
    made = []

    def admit(record, records):
        if not made:
            from qcourier.accounting.budget import BudgetGuard

            made.append(BudgetGuard(settings.budget_limit).deferred_admission(
                lambda service, index: pool.get(service, index).usage().usage_seconds))
        return made[0](record, records)

    return admit


def report_lines(report, quiet: bool) -> tuple[list[str], list[str]]:
    """What a run reports, but its summary: (stdout lines, stderr lines). Quiet keeps
    changes and errors only. A job is named by its ledger status (the word ``status``
    shows), followed by what is new: the headline result of a finished job, or an error."""
    err = [f"Warning: {p}" for p in report.problems]
    if err:
        err.append("Warning: damaged ledger lines are skipped; see qcourier ledger check")
    err += [] if quiet else [f"Skipped: {reason}" for reason in report.skipped]
    if report.unrecorded is not None:
        from qcourier.collect.decide import STATUS_FOR_STATE

        u = report.unrecorded
        shown = STATUS_FOR_STATE[u.state].value
        return [f"Job {u.job_id}: {shown} (not in the ledger)"], err
    out = []
    for o in report.outcomes:
        if quiet and not (o.changed or o.failed):
            continue
        shown = o.record.status.value
        name = o.record.job_id or f"({o.record.experiment_type}, not submitted)"
        out.append(f"Job {name}: {shown}" + (f" — {o.message}" if o.message else ""))
    for u in report.usage:  # final jobs whose usage was pending: quiet shows the new figures
        if u.recorded or not quiet:
            out.append(f"Job {u.record.job_id}: {u.record.status.value} — {u.message}")
    if report.collected_path is not None:
        out.append(f"Collected results: {report.collected_path}")
    return out, err


def summary_line(report) -> str:
    """The closing line of a run: how many jobs are completed and pending."""
    summary = (f"Completed: {report.completed}/{report.total}  "
               f"Pending: {report.pending}/{report.total}")
    if report.deferred:
        summary += f"  (of which deferred: {report.deferred})"
    if report.errors:
        summary += f"  Errors: {report.errors}/{report.total}"
    return summary


def _append_log(path: Path, lines: list[str]) -> None:
    from qcourier.ledger.status import utc_now

    if not lines:
        return
    stamp = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(f"{stamp} {line}\n" for line in lines)


def _write_metrics(path: Path, ledger, settings, report) -> None:
    from qcourier.accounting.metrics import write_prometheus
    from qcourier.ledger.status import utc_now

    polled_ok = report.exit_code == 0
    write_prometheus(path, ledger.fold().summaries, settings.budget_limit, utc_now(),
                     last_poll=utc_now() if polled_ok else None)


class _LiveView:
    """A live-updating table of the ledger's jobs, for --watch on a terminal."""

    def __init__(self, console):
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False)
        self._records: list = []

    def __enter__(self):
        self._live.__enter__()
        return self

    def __exit__(self, *exc):
        return self._live.__exit__(*exc)

    #: Finished jobs shown below the open ones (the most recent): a study can have thousands.
    FINISHED_SHOWN = 20

    def print_above(self, lines: list[str]) -> None:
        """Lines that stay on the screen above the live table (what changed)."""
        for line in lines:
            self._live.console.print(line, markup=False, highlight=False)

    def progress(self, message: str) -> None:
        """Show what the run is doing now under the table of the last run."""
        self.show(self._records, message)

    def show(self, records, caption: str) -> None:
        self._records = records
        from rich import box
        from rich.table import Table

        from qcourier.ledger.status import utc_now

        table = Table(box=box.SIMPLE, caption=caption,
                      title=f"qcollect --watch · {utc_now():%H:%M:%S} UTC · Ctrl-C stops")
        for column in ("job id", "experiment", "key", "status", "queue s", "QPU s"):
            table.add_column(column)
        open_ = [r for r in records if not r.status.is_final]
        finished = sorted((r for r in records if r.status.is_final), key=lambda r: r.updated_at)
        shown = open_ + finished[-self.FINISHED_SHOWN:]
        if len(shown) < len(records):
            table.caption = f"{caption} · {len(records) - len(shown)} older finished jobs not shown"
        from rich.text import Text

        from qcourier.cli._common import STATUS_STYLES, cell, qpu_cell

        for r in shown:
            table.add_row(cell(r.job_id), r.experiment_type, cell(r.api_key_index),
                          Text(r.status.value, style=STATUS_STYLES.get(r.status.value, "")),
                          cell(r.queue_seconds, ".0f"), qpu_cell(r))
        self._live.update(table, refresh=True)

