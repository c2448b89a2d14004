"""``qcourier report --html``: the study as one self-contained HTML page.

Inline CSS, plots as base64 PNG (``data:`` URLs): the page opens with no network. Every value
from the ledger or a server (job ids, errors, backends) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcourier.ledger.store import Ledger

_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#eee}h2{margin-top:1.5em;border-bottom:1px solid #ccc}.ind{display:inline-block;
margin:0 1.5em 1em 0}.ind b{font-size:1.6em;display:block}img{max-width:100%;margin:.5em 0}
.muted{color:#777}"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else _e(fmt.format(value))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _plots(report, records, ledger_dir: Path) -> list[tuple[str, str]] | None:
    """(name, base64 PNG) of the study's plots (no per-job counts plots); None without
    matplotlib (the page is written without them)."""
    from qcourier.accounting.plots import have_matplotlib, write_plots

    if not have_matplotlib():
        return None
    with tempfile.TemporaryDirectory(prefix="qcourier-html-") as tmp:
        written = write_plots(report, records, ledger_dir, Path(tmp)).written
        return [(p.stem, base64.b64encode(p.read_bytes()).decode("ascii"))
                for p in sorted(written) if not p.name.startswith("counts_")]


def render(report, records, ledger_dir: Path, plan_lines: list[str] | None = None) -> str:
    """The page's HTML text for a :class:`qcourier.accounting.report.StudyReport`."""
    d = report.to_dict()
    exp = d.get("experiments", {})
    summary = d.get("summary", {})
    parts = [_head(report), _indicators(report)]
    if plan_lines:
        parts.append("<h2>Plan</h2><ul id='plan'>" + "".join(
            f"<li>{_e(line)}</li>" for line in plan_lines) + "</ul>")
    parts += [_jobs(records), *_codes(exp, summary.get("lambda") or []), _heartbeat(exp, summary),
              _budget(d["budget"]), _plots_section(_plots(report, records, ledger_dir)),
              "</body></html>"]
    return "\n".join(part for part in parts if part)


def _head(report) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qcourier study</title>"
            f"<style>{_CSS}</style></head><body><h1>qcourier study</h1>"
            f"<p class='muted'>Generated {_e(report.now.strftime('%Y-%m-%d %H:%M:%S UTC'))} "
            f"from {_e(report.ledger_dir)}</p>")


def _indicators(report) -> str:
    indicators = [("jobs", _e(report.total_jobs)),
                  ("success rate", "-" if report.success_rate is None
                   else _e(f"{100 * report.success_rate:.0f}%")),
                  ("queue median", _num(report.queue.median, "{:.0f} s")),
                  ("turnaround p95", _num(report.turnaround.p95, "{:.0f} s"))]
    return "<h2>Indicators</h2><div id='indicators'>" + "".join(
        f"<span class='ind'><b>{v}</b>{_e(k)}</span>" for k, v in indicators) + "</div>"


def _jobs(records) -> str:
    rows = []
    for r in sorted(records, key=lambda r: str(r.submission_time or r.updated_at)):
        rows.append([f"<code>{_e(r.job_id)}</code>", _e(r.experiment_type), _e(r.backend),
                     _e(r.status.value), _num(r.queue_seconds, "{:.0f}"),
                     _num(r.usage_seconds, "{:.1f}"),
                     _e(r.submission_time.strftime("%Y-%m-%d %H:%M") if r.submission_time
                        else None),
                     _e(getattr(r, "error", None) or "")])
    return "<h2>Jobs</h2>" + _table(
        ["job id", "experiment", "backend", "status", "queue s", "QPU s", "submitted", "error"],
        rows).replace("<table>", "<table id='jobs'>", 1)


def _codes(exp: dict, lambdas: list) -> list[str]:
    """The QEC sections: heavy-hex code (always), surface code (if any), Lambda."""
    parts = []
    for key, title in (("heavy_hex_code", "Heavy-hex code"), ("surface_code", "Surface code (routed)")):
        sc = exp.get(key, [])
        if not sc and key == "surface_code":
            continue
        parts.append(f"<h2 id='{key}'>{title}</h2>" + (_table(
            ["job id", "state", "distance", "circuit distance", "logical error / round",
             "stderr", "fit"],
            [[f"<code>{_e(x.get('job_id'))}</code>", _e(x.get("logical_state")),
              _e(x.get("distance")), _e(x.get("fault_distance")),
              _num(x.get("logical_error_per_round"), "{:.4g}"),
              _num(x.get("logical_error_per_round_stderr"), "{:.2g}"),
              _e(x.get("fit_withheld") or (f"chi2/dof {x['fit_chi2_per_dof']:.2f}"
                                           if x.get("fit_chi2_per_dof") is not None else ""))]
             for x in sc])
            if sc else "<p class='muted'>No heavy-hex code results yet.</p>"))
    if lambdas:
        parts.append("<p id='lambda'>" + "; ".join(
            f"Lambda ({_e(x['basis'].upper())} basis) = {x['lambda']:.2f}"
            + (f" ± {x['lambda_stderr']:.2f}" if x.get("lambda_stderr") is not None else "")
            for x in lambdas) + "</p>")
    return parts


def _heartbeat(exp: dict, summary: dict) -> str:
    hb = exp.get("deployment", [])
    part = "<h2 id='heartbeat'>Heartbeat</h2>" + (_table(
        ["job id", "width", "shots", "marginal fidelity", "± stderr", "mean abs. deviation"],
        [[f"<code>{_e(x.get('job_id'))}</code>", _e(x.get("width")), _e(x.get("shots")),
          _num(x.get("marginal_fidelity"), "{:.5f}"),
          _num(x.get("marginal_fidelity_stderr"), "{:.1g}"),
          _num(x.get("mean_absolute_deviation"), "{:.4f}")] for x in hb])
        if hb else "<p class='muted'>No heartbeat results yet.</p>")
    drift = (summary.get("heartbeat") or {}).get("drift")
    if drift:
        part += "\n<p id='drift'>" + _e(
            f"Drift check: not made ({drift['reason']})" if drift["z"] is None else
            f"Drift check: z = {drift['z']:+.1f} against {drift['earlier_sessions']} earlier "
            f"sessions at {drift['shots']} shots: "
            + ("DRIFTED" if drift["drifted"] else "within the study's baseline")) + "</p>"
    return part


def _budget(budget: list[dict]) -> str:
    return "<h2>Budget</h2>" + _table(
        ["key", "limit s", "used s", "reserved s", "remaining s"],
        [[_e(b["service"] if b["key_index"] is None else f"{b['service']} key {b['key_index']}"),
          _num(b["limit_seconds"], "{:.0f}"), _num(b["used_seconds"]),
          _num(b["reserved_seconds"]), _num(b["remaining_seconds"])] for b in budget])


def _plots_section(plots: list[tuple[str, str]] | None) -> str:
    if plots is None:
        from qcourier.accounting.plots import PLOTS_EXTRA

        return f"<h2>Plots</h2><p class='muted'>Plots need matplotlib: {_e(PLOTS_EXTRA)}</p>"
    return "<h2>Plots</h2>" + ("".join(
        f"<figure><img class='plot' alt='{_e(name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(name)}</figcaption></figure>" for name, data in plots)
        or "<p class='muted'>No plots yet.</p>")


def write_html(path: Path, report, records, ledger_dir: Path,
               plan_lines: list[str] | None = None) -> None:
    """Write the page atomically (a reader never sees half a page)."""
    from qcourier.files import atomic_write_bytes

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), render(report, records, ledger_dir, plan_lines).encode())


def write_study_page(path: Path, ledger: Ledger, limit_for: Callable[[int | None], float],
                     plan_file: Path | None = None) -> list[str]:
    """Write ``qcollect --html``'s page of ``ledger`` now (budgets from ``limit_for``), with
    the study plan's progress (``plan_file``, else ``./qcourier-plan.toml`` when present).

    Returns:
        Warnings: a plan that cannot be read (the page is still written, without it).
    """
    from qcourier.accounting.plan import lines, load_plan, progress
    from qcourier.accounting.report import study_report
    from qcourier.errors import QcourierError
    from qcourier.ledger.status import utc_now

    fold = ledger.fold()
    report = study_report(fold.records, ledger.directory, limit_for, utc_now())
    warnings = []
    try:
        plan = load_plan(plan_file)
    except QcourierError as exc:
        warnings.append(str(exc))
        plan = None
    plan_lines = (None if plan is None else
                  lines(progress(plan, fold.records, limit_for, utc_now())))
    write_html(path, report, fold.records, ledger.directory, plan_lines)
    return warnings
