"""``qcourier show`` and ``qcourier cancel``: one job at a time."""

from __future__ import annotations

from pathlib import Path

import click

from qcourier.cli._common import (
    EMPTY,
    cell,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
    print_table,
    time_cell,
)


@click.command("show")
@click.argument("job_id")
@ledger_dir_option
@json_option
@handle_errors
def show(job_id: str, ledger_dir: Path | None, as_json: bool) -> None:
    """Show one job: its record, every state it went through, its result and analysis.

    JOB_ID is a job id or a record id (a deferred job has only that), or an unambiguous
    prefix of at least 6 characters.

    \b
    Examples:
      qcourier show d4k2v9x0abcd1234efgh
      qcourier show d4k2v9 --json
    """
    from qcourier.collect.analysis import headline
    from qcourier.collect.jobs import find_entry, history, read_result
    from qcourier.ledger.store import Ledger

    state = get_state()
    ledger = Ledger(state.ledger_dir(ledger_dir))
    state.sync_edge(ledger, "pull")
    entry = find_entry(ledger, job_id)
    record, lines = entry.record, history(entry)
    result = read_result(ledger, record)
    summary = None if result is None else headline(record.experiment_type, result.analysis)
    if as_json:
        state.emit_json({
            "record": record.as_json(), "ledger_file": str(entry.path),
            "history": [{"status": r.status.value, "at": r.updated_at.isoformat(),
                         "error": r.error} for r in lines],
            "result": None if result is None else {
                "path": str(result.path), "problem": result.problem,
                "headline": summary, "analysis": result.analysis,
                "analysis_error": result.analysis_error}})
        return
    facts = [("job id", record.job_id or "(not submitted yet)"), ("record id", record.record_id),
             ("status", record.status.value), ("experiment", _experiment(record)),
             ("service", f"{record.service}" + ("" if record.api_key_index is None
                                                else f", key {record.api_key_index}")),
             ("backend", record.backend), ("shots", f"{record.shots} x {record.num_circuits} "
                                                    "circuit(s)"),
             ("circuit hash", record.circuit_hash), ("git commit", _commit(record)),
             ("QPU seconds", _seconds(record)),
             ("queue seconds", cell(record.queue_seconds, ".0f")),
             ("ledger file", str(entry.path))]
    if record.error:
        facts.append(("error", record.error))
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        click.echo(f"{name.ljust(width)}  {value}")
    click.echo("\nHistory:")
    print_table(state, ["time (UTC)", "status", "note"],
                [[time_cell(r.updated_at), r.status.value, _note(r, before)]
                 for before, r in zip([None, *lines], lines, strict=False)])
    if result is not None:
        click.echo(f"\nResult: {result.path}" + (f" — {result.problem}" if result.problem else ""))
        if summary:
            click.echo(f"Analysis: {summary}")
        elif result.analysis_error:
            click.echo(f"Analysis failed: {result.analysis_error}")


def _experiment(record) -> str:
    extra = [f"state {record.logical_state}"] if record.logical_state else []
    extra += [f"{k}={v}" for k, v in sorted(record.params.items())
              if k not in ("shots", "logical_state")]
    return record.experiment_type + (f" ({', '.join(extra)})" if extra else "")


def _commit(record) -> str:
    if record.git_commit is None:
        return "not recorded"
    return record.git_commit[:12] + (" (with uncommitted changes)" if record.git_dirty else "")


def _seconds(record) -> str:
    from qcourier.accounting.budget import usage_pending

    used, estimate = record.usage_seconds, record.estimated_qpu_seconds
    est = "" if estimate is None else f"estimated {estimate:.1f}"
    if usage_pending(record):
        return (f"usage pending ({est}, counted by the budget guard until qcollect gets the "
                "figure)" if est else "usage pending")
    if used is None:
        return est or EMPTY
    return f"{used:.1f}" + (f" ({est})" if est else "")


def _note(line, before) -> str:
    """What a history line says: its error, or that it recorded a pending usage figure."""
    if (before is not None and before.status is line.status and before.usage_seconds is None
            and line.usage_seconds is not None):
        return f"usage recorded: {line.usage_seconds:.1f} s"
    return line.error or ""


@click.command("cancel")
@click.argument("job_id")
@ledger_dir_option
@json_option
@handle_errors
def cancel(job_id: str, ledger_dir: Path | None, as_json: bool) -> None:
    """Cancel a job that has not finished, and record it in the ledger.

    The job is cancelled at its service with the API key that submitted it; the ledger
    gets a line with the final state (IBM charges a cancelled job for the time it ran). A
    deferred job, not yet submitted, is recorded as cancelled so qcollect never submits it.
    JOB_ID is a job id, a record id, or an unambiguous prefix of at least 6 characters.

    \b
    Examples:
      qcourier cancel d4k2v9x0abcd1234efgh
      qcourier cancel 3f9c1a0b7d2e      # a deferred job, by its record id
    """
    from qcourier.collect.jobs import cancel as cancel_job
    from qcourier.ledger.store import Ledger

    state = get_state()
    ledger = Ledger(state.ledger_dir(ledger_dir))
    state.sync_edge(ledger, "pull")
    outcome = cancel_job(state.get_pool(), ledger, job_id)
    state.sync_edge(ledger, "push")
    for note in outcome.notes:
        state.warn(note)
    if as_json:
        state.emit_json({"record": outcome.record.as_json(),
                         "message": outcome.message})
        return
    click.echo(f"Job {outcome.record.job_id or outcome.record.record_id}: {outcome.message}")
