"""``qcollect``: poll pending jobs, download and analyse results, record what changed."""

from __future__ import annotations

import time
from pathlib import Path

import click

from qcourier.cli._common import (
    EXIT_CODES_HELP,
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
and polled again next time.

\b
Examples:
  qcollect
  qcollect --watch --interval 10
  qcollect --jobs-file results/ibm_experiments/submitted_jobs_20261121_101500.jsonl
  qcollect --job-id d4k2v9x0abcd1234efgh --json
{EXIT_CODES_HELP}"""


@click.command("collect", help=HELP)
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
@ledger_dir_option
@service_option
@json_option
@handle_errors
def main(jobs_file: Path | None, poll_all: bool, job_id: str | None, watch: bool, interval: float,
         resubmit_failed: bool, max_retries: int, max_pending: int | None,
         workers: int | None, verify_results: bool, quiet: bool,
         log_file: Path | None, prometheus: Path | None,
         ledger_dir: Path | None, service: str | None, as_json: bool) -> None:
    from contextlib import nullcontext

    from qcourier.collection import RESULT_CHECK_BATCH, collect_pending
    from qcourier.config import queue_policy
    from qcourier.errors import UsageError
    from qcourier.ledger import Ledger, check_ledger_file

    if sum(x is not None and x is not False for x in (jobs_file, job_id, poll_all or None)) > 1:
        raise UsageError("give at most one of --jobs-file, --poll-all and --job-id")
    if interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {interval:g}")
    state = get_state()
    state.quiet = quiet
    if jobs_file is not None:
        ledger, paths = Ledger(check_ledger_file(jobs_file).parent), [jobs_file]
    else:
        ledger, paths = Ledger(state.ledger_dir(ledger_dir)), None
    pool, settings = state.get_pool(), state.get_settings()
    live = watch and not (as_json or quiet) and state.is_terminal()
    try:
        with _LiveView(state.stdout) if live else nullcontext() as view:
            while True:
                report = collect_pending(
                    pool, ledger, paths=paths, job_id=job_id,
                    default_service=service or state.default_service_name(),
                    policy=queue_policy(settings, max_pending),
                    resubmit_failed=resubmit_failed, max_retries=max_retries,
                    admit=_budget_admission(settings),
                    verify_batch=None if verify_results else RESULT_CHECK_BATCH,
                    workers=workers or settings.poll_workers)
                out, err = report_lines(report, quiet)
                if log_file is not None:
                    _append_log(log_file, out + err)
                if prometheus is not None:
                    _write_metrics(prometheus, ledger, settings, report)
                if as_json:
                    state.emit_json(_report_json(report))
                elif view is not None:
                    view.show(ledger.fold(paths).summaries, out[-1] if out else "")
                else:
                    for line in err:
                        click.echo(line, err=True)
                    for line in out:
                        click.echo(line)
                if not watch or report.pending == 0 or report.unrecorded is not None:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        state.info("Stopped. Every ledger line and result file written so far is whole.")
        raise SystemExit(130) from None
    raise SystemExit(report.exit_code)


def _budget_admission(settings):
    """The budget guard's check for deferred jobs (imported only when one is to be submitted)."""

    def admit(record, records):
        from qcourier.budget import BudgetGuard
        from qcourier.ledger import utc_now

        return BudgetGuard(settings.budget_limit).admit_deferred(record, records, utc_now())

    return admit


def report_lines(report, quiet: bool) -> tuple[list[str], list[str]]:
    """What a run reports: (stdout lines, stderr lines). Quiet keeps changes and errors only."""
    err = [f"Warning: {p}" for p in report.problems]
    err += [] if quiet else [f"Skipped: {reason}" for reason in report.skipped]
    if report.unrecorded is not None:
        u = report.unrecorded
        return [f"Job {u.job_id}: {u.state.value} (not in the ledger)"], err
    out = []
    for o in report.outcomes:
        if quiet and not (o.changed or o.failed):
            continue
        if o.failed:
            shown = "NOT POLLED"
        elif o.state is not None:
            shown = o.state.value
        else:
            shown = o.record.status.value.upper()
        name = o.record.job_id or f"({o.record.experiment_type}, not submitted)"
        out.append(f"Job {name}: {shown}" + (f" — {o.message}" if o.message else ""))
    if report.collected_path is not None:
        out.append(f"Collected results: {report.collected_path}")
    if not quiet:
        summary = (f"Completed: {report.completed}/{report.total}  "
                   f"Pending: {report.pending}/{report.total}")
        if report.deferred:
            summary += f"  (of which deferred: {report.deferred})"
        if report.errors:
            summary += f"  Errors: {report.errors}/{report.total}"
        out.append(summary)
    return out, err


def _append_log(path: Path, lines: list[str]) -> None:
    from qcourier.ledger import utc_now

    if not lines:
        return
    stamp = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(f"{stamp} {line}\n" for line in lines)


def _write_metrics(path: Path, ledger, settings, report) -> None:
    from qcourier.ledger import utc_now
    from qcourier.metrics import write_prometheus

    polled_ok = report.exit_code == 0
    write_prometheus(path, ledger.fold().summaries, settings.budget_limit, utc_now(),
                     last_poll=utc_now() if polled_ok else None)


class _LiveView:
    """A live-updating table of the ledger's jobs, for --watch on a terminal."""

    def __init__(self, console):
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False)

    def __enter__(self):
        self._live.__enter__()
        return self

    def __exit__(self, *exc):
        return self._live.__exit__(*exc)

    #: Finished jobs shown below the open ones (the most recent): a study can have thousands.
    FINISHED_SHOWN = 20

    def show(self, records, caption: str) -> None:
        from rich import box
        from rich.table import Table

        from qcourier.ledger import utc_now

        table = Table(box=box.SIMPLE, caption=caption,
                      title=f"qcollect --watch · {utc_now():%H:%M:%S} UTC · Ctrl-C stops")
        for column in ("job id", "experiment", "key", "status", "queue s", "QPU s"):
            table.add_column(column)
        open_ = [r for r in records if not r.status.is_final]
        finished = sorted((r for r in records if r.status.is_final), key=lambda r: r.updated_at)
        shown = open_ + finished[-self.FINISHED_SHOWN:]
        if len(shown) < len(records):
            table.caption = f"{caption} · {len(records) - len(shown)} older finished jobs not shown"
        for r in shown:
            table.add_row(r.job_id or "-", r.experiment_type,
                          "-" if r.api_key_index is None else str(r.api_key_index), r.status.value,
                          "-" if r.queue_seconds is None else f"{r.queue_seconds:.0f}",
                          "-" if r.usage_seconds is None else f"{r.usage_seconds:.1f}")
        self._live.update(table, refresh=True)


def _report_json(report) -> dict:
    return {
        "jobs": [
            {"job_id": o.record.job_id, "record_id": o.record.record_id,
             "state": None if o.state is None else o.state.value, "status": o.record.status.value,
             "failed": o.failed,
             "changed": o.changed, "message": o.message, "result_path": o.record.result_path}
            for o in report.outcomes
        ],
        "unrecorded": None if report.unrecorded is None else {
            "job_id": report.unrecorded.job_id, "state": report.unrecorded.state.value},
        "completed": report.completed,
        "pending": report.pending,
        "errors": report.errors,
        "deferred": report.deferred,
        "total": report.total,
        "already_final": report.already_final,
        "collected_results": None if report.collected_path is None else str(report.collected_path),
        "skipped": report.skipped,
        "problems": [str(p) for p in report.problems],
    }
