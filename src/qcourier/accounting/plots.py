"""The study report drawn as PNG files: :func:`write_plots`.

The numbers come from :mod:`qcourier.accounting.report`; this module only draws them. It is
the only accounting module that imports matplotlib (the ``plots`` extra), and only inside
functions, so importing it works without matplotlib: :func:`require_matplotlib` then says
which extra to install.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from qcourier.accounting.budget import WINDOW
from qcourier.accounting.report import (
    QEC_EXPERIMENTS,
    KeyBudget,
    StudyReport,
    completed_records,
    submitted_at,
)
from qcourier.errors import QcourierError
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.results import read_result

#: Bitstrings shown in a counts histogram (the most frequent ones).
TOP_OUTCOMES = 20
_QEC_TITLES = {"heavy_hex_code": "Heavy-hex code", "surface_code": "Surface code (routed)"}


@dataclass
class PlotFiles:
    """What :func:`write_plots` did: the files written, and each plot skipped with why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"written": [path, ...], "skipped": [{"plot", "reason"}]}``."""
        return {"written": [str(p) for p in self.written], "skipped": list(self.skipped)}


#: What to do when matplotlib is missing.
PLOTS_EXTRA = "pip install 'qcourier[plots]'"


def have_matplotlib() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    """Raises QcourierError, naming the extra to install, when matplotlib is missing."""
    if not have_matplotlib():
        raise QcourierError(f"plots need matplotlib, which is not installed: {PLOTS_EXTRA}")


def write_plots(report: StudyReport, records: Iterable[LedgerRecord], ledger_dir: Path,
                out_dir: Path) -> PlotFiles:
    """Draw the report as PNG files in ``out_dir`` (created if needed; files overwritten).

    Files (names are deterministic; characters other than letters, digits, ``._-`` in a job
    id become ``_``):

    - ``counts_<job_id>.png``, one per completed job with a readable result file: a
      horizontal bar chart of its :data:`TOP_OUTCOMES` most frequent bitstrings (the title
      says when there are more). A job of several circuits (PUBs) shows its last one only,
      which for ``surface_code`` is the one with the most rounds.
    - ``surface_code_logical_error_vs_rounds.png``: logical error rate against rounds, one
      line per surface-code job with its 95% (Wilson) interval, and dashed the fitted
      ``(1 - (1 - 2 eps)^r) / 2`` of each job.
    - ``heartbeat_p1_vs_ideal.png``: per-qubit P(1) of the latest heartbeat against the
      ideal; earlier heartbeats of the same width faint behind it.
    - ``heartbeat_fidelity_over_time.png``: each heartbeat's Hellinger fidelity against its
      submission time, one line per width.
    - ``budget_<service>[_<key>].png`` (``budget_local.png``, ``budget_ibm_0.png``): the
      cumulative QPU seconds used in the 28-day window against the limit, with the even
      spread of the limit over the window for comparison.

    A plot without data is not written; ``PlotFiles.skipped`` says which and why.

    Raises:
        QcourierError: matplotlib is not installed (the ``plots`` extra).
    Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas, never pyplot: no
    GUI backend, no global figure registry and no change to the caller's backend; each
    figure is cleared once saved.
    """
    require_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = PlotFiles()
    _plot_counts(result, report, list(records), Path(ledger_dir), out_dir)
    for experiment in QEC_EXPERIMENTS:
        # the routed surface code is legacy: its plot is only made (or missed) where it ran
        if experiment == "heavy_hex_code" or report.series[experiment]:
            _plot_surface_code(result, report, out_dir, experiment)
    _plot_heartbeat_p1(result, report, out_dir)
    _plot_heartbeat_fidelity(result, report, out_dir)
    _plot_budgets(result, report, out_dir)
    return result


def _figure(width: float = 8.0, height: float = 5.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without touching the global (pyplot) backend
    return fig


def _save(result: PlotFiles, fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")
    fig.clear()
    result.written.append(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _short_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _plot_counts(result: PlotFiles, report: StudyReport, records: list[LedgerRecord],
                 ledger_dir: Path, out_dir: Path) -> None:
    done = sorted(completed_records(records), key=submitted_at)
    if not done:
        result.skipped.append({"plot": "counts_<job_id>.png", "reason": "no completed job"})
        return
    for r in done:
        name = f"counts_{_safe(r.job_id or r.record_id)}.png"
        payload, reason = read_result(ledger_dir, r)
        counts = payload.get("counts") if payload else None
        if reason is None and not (isinstance(counts, list) and counts
                                   and isinstance(counts[-1], dict) and counts[-1]):
            reason = "the result file has no counts"
        if reason is not None or not isinstance(counts, list):
            result.skipped.append({"plot": name, "reason": reason or "no counts"})
            continue
        _save(result, _counts_figure(r, counts), out_dir / name)


def _counts_figure(record: LedgerRecord, counts: list[dict[str, int]]) -> Any:
    from matplotlib.ticker import MaxNLocator

    pub = counts[-1]
    shots = sum(pub.values())
    top = sorted(pub.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_OUTCOMES]
    bits = max(len(k) for k, _ in top)
    fig = _figure(8.0 if bits <= 24 else 8.0 + (bits - 24) * 0.12, 1.6 + 0.28 * len(top))
    ax = fig.add_subplot()
    labels = [k for k, _ in top][::-1]  # most frequent at the top
    values = [n for _, n in top][::-1]
    bars = ax.barh(range(len(top)), values, color="tab:blue")
    ax.set_yticks(range(len(top)), labels, fontfamily="monospace", fontsize=8)
    ax.bar_label(bars, [f"{n / shots:.1%}" if n / shots >= 0.01 else f"{n / shots:.2%}"
                        for n in values], padding=2, fontsize=7)
    ax.set_xlim(0, max(values) * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"counts (shots; {shots} in total)")
    ax.set_ylabel("outcome (bitstring, qubit 0 rightmost)")
    what = record.experiment_type
    if record.experiment_type in QEC_EXPERIMENTS:
        rounds = record.metadata.get("rounds") or []
        what += f" |{record.logical_state}>" if record.logical_state else ""
        if rounds:
            what += f", {rounds[-1]} rounds"
    if len(counts) > 1:
        what += f", circuit {len(counts)} of {len(counts)}"
    shown = (f"top {len(top)} of {len(pub)} distinct outcomes ({sum(values) / shots:.1%} of "
             "shots)" if len(pub) > len(top) else f"all {len(pub)} distinct outcomes")
    when = f", submitted {_short_time(submitted_at(record))}"
    ax.set_title(f"Counts of job {record.job_id} ({what})\n{shown}{when}", fontsize=10)
    return fig


_STATE_COLOURS = {"0": "tab:blue", "1": "tab:orange", "+": "tab:green", "-": "tab:red"}
_MANY_JOBS = 8  # above this, one legend entry per logical state instead of per job


def _plot_surface_code(result: PlotFiles, report: StudyReport, out_dir: Path,
                       experiment: str = "surface_code") -> None:
    name = f"{experiment}_logical_error_vs_rounds.png"
    jobs = []
    for p in report.series[experiment]:
        rows = [q for q in p["per_round"]
                if q["logical_error_rate"] is not None and q["rounds"] is not None]
        if rows:
            jobs.append((p, rows))
    if not jobs:
        result.skipped.append({"plot": name, "reason": f"no completed {experiment} job with "
                                                       "decoded rates"})
        return
    fig = _figure()
    ax = fig.add_subplot()
    per_job = len(jobs) <= _MANY_JOBS
    max_rounds = max(q["rounds"] for _p, rows in jobs for q in rows)
    fit_x = [0.5 + k * max_rounds / 100 for k in range(101)]
    labelled: set[str] = set()
    for i, (p, rows) in enumerate(jobs):
        state = str(p["logical_state"])
        colour = f"C{i % 10}" if per_job else _STATE_COLOURS.get(state, "tab:gray")
        if per_job:
            eps = p["logical_error_per_round"]
            label: str | None = (f"|{state}> d={p['distance']}, job {str(p['job_id'])[:10]}, "
                     f"{p['submission_time']:%m-%d %H:%M}"
                     + (f": eps = {eps:.4f}" if eps is not None else ": no fit"))
        else:
            label = None if state in labelled else f"|{state}> jobs"
            labelled.add(state)
        # Jobs share their x values: a small offset keeps their error bars apart.
        shift = (i - (len(jobs) - 1) / 2) * min(0.3 / len(jobs), 0.06)
        rates = [q["logical_error_rate"] for q in rows]
        ci = [q["logical_error_ci95"] or [r, r] for q, r in zip(rows, rates, strict=True)]
        yerr = [[max(r - lo, 0) for r, (lo, _hi) in zip(rates, ci, strict=True)],
                [max(hi - r, 0) for r, (_lo, hi) in zip(rates, ci, strict=True)]]
        ax.errorbar([q["rounds"] + shift for q in rows], rates, yerr=yerr, fmt="o",
                    color=colour, capsize=3, markersize=5, label=label,
                    alpha=1.0 if per_job else 0.6)
        eps = p["logical_error_per_round"]
        if eps is not None:
            spam = 1 - 2 * (p.get("fit_intercept_eps0") or 0.0)
            ax.plot(fit_x, [(1 - spam * (1 - 2 * eps) ** x) / 2 for x in fit_x], "--", color=colour,
                    linewidth=1, alpha=0.8 if per_job else 0.4)
    ax.plot([], [], "--", color="gray", label=(
        "fit (1 - (1 - 2 eps0)(1 - 2 eps)^r) / 2, per job" if experiment == "heavy_hex_code"
        else "fit (1 - (1 - 2 eps)^r) / 2, per job"))
    ax.set_xticks(range(1, max_rounds + 1))
    ax.set_xlim(0.5, max_rounds + 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("syndrome-extraction rounds r")
    ax.set_ylabel("logical error rate (fraction of shots, after decoding)")
    ax.set_title(f"{_QEC_TITLES[experiment]}: logical error rate against rounds, {len(jobs)} job"
                 f"{'s' if len(jobs) != 1 else ''}\n(bars: 95% Wilson interval; "
                 "eps: fitted logical error per round)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(result, fig, out_dir / name)


def _heartbeats(report: StudyReport) -> list[dict[str, Any]]:
    return [p for p in report.series["deployment"]
            if p["p1_measured"] and p["p1_ideal"] and p["marginal_fidelity"] is not None]


def _plot_heartbeat_p1(result: PlotFiles, report: StudyReport, out_dir: Path) -> None:
    name = "heartbeat_p1_vs_ideal.png"
    points = _heartbeats(report)
    if not points:
        result.skipped.append({"plot": name, "reason": "no completed heartbeat (deployment) job"})
        return
    latest = points[-1]
    ideal = latest["p1_ideal"]
    width = len(ideal)
    earlier = [p for p in points[:-1] if len(p["p1_measured"]) == width]
    faint = max(0.12, min(0.45, 1.5 / max(len(earlier), 1)))
    qubits = list(range(width))
    fig = _figure(max(8.0, 0.3 * width), 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    for k, p in enumerate(earlier):
        top.plot(qubits, p["p1_measured"], "o-", color="tab:blue", alpha=faint, markersize=3,
                 linewidth=0.8, label=f"earlier sessions ({len(earlier)})" if k == 0 else None)
        bottom.plot(qubits, [m - i for m, i in zip(p["p1_measured"], ideal, strict=True)],
                    "o-", color="tab:blue", alpha=faint, markersize=3, linewidth=0.8)
    top.plot(qubits, ideal, "s--", color="black", markersize=4, linewidth=1,
             label="ideal sin²(step·i/2)")
    top.plot(qubits, latest["p1_measured"], "o-", color="tab:red", markersize=5, linewidth=1.8,
             label=f"latest: job {latest['job_id']}, {_short_time(latest['submission_time'])}")
    deviation = [m - i for m, i in zip(latest["p1_measured"], ideal, strict=True)]
    bottom.plot(qubits, deviation, "o-", color="tab:red", markersize=5, linewidth=1.8)
    bottom.axhline(0, color="black", linestyle="--", linewidth=1)
    highest = max([*ideal, *latest["p1_measured"], *(max(p["p1_measured"]) for p in earlier)])
    top.set_ylim(0, min(1.02, highest * 1.15 + 0.01))
    top.set_ylabel("P(measured 1)")
    top.set_title(f"Heartbeat, {width} qubits: per-qubit P(1), measured against ideal\n"
                  f"latest session: mean marginal fidelity {latest['marginal_fidelity']:.4f}, "
                  f"mean |deviation| {latest['mean_absolute_deviation']:.3f}", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_ylabel("measured − ideal")
    bottom.set_xlabel("qubit index i (position in the CX chain)")
    bottom.set_xticks(qubits if width <= 32 else qubits[::width // 32 + 1])
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    _save(result, fig, out_dir / name)


def _time_axis(ax: Any, times: Sequence[datetime] = ()) -> None:
    """Dates on the x axis; ``times`` (if given) spread over at least two minutes."""
    import matplotlib.dates as mdates

    if times:
        first, last = min(times), max(times)
        if (last - first) < timedelta(minutes=2):  # e.g. a local study, seconds apart
            middle = first + (last - first) / 2
            ax.set_xlim(middle - timedelta(minutes=1), middle + timedelta(minutes=1))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)
    formatter.formats[5] = "%H:%M:%S"  # seconds ticks: say which minute, not "21.5"
    formatter.zero_formats[5] = "%H:%M:%S"
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)


def _plot_heartbeat_fidelity(result: PlotFiles, report: StudyReport, out_dir: Path) -> None:
    name = "heartbeat_fidelity_over_time.png"
    points = _heartbeats(report)
    if not points:
        result.skipped.append({"plot": name, "reason": "no completed heartbeat (deployment) job"})
        return
    fig = _figure()
    ax = fig.add_subplot()
    widths = sorted({len(p["p1_ideal"]) for p in points})
    for w in widths:
        mine = [p for p in points if len(p["p1_ideal"]) == w]
        ax.plot([p["submission_time"] for p in mine], [p["marginal_fidelity"] for p in mine],
                "o-", markersize=5, label=f"{w} qubits ({len(mine)} session"
                                          f"{'s' if len(mine) != 1 else ''})")
    _time_axis(ax, [p["submission_time"] for p in points])
    fidelities = [p["marginal_fidelity"] for p in points]
    # Fit the axis to the data (drift is what this plot is for); the ticks give the scale.
    pad = max(0.01, 0.2 * (max(fidelities) - min(fidelities)))
    ax.set_ylim(max(0.0, min(fidelities) - pad), min(1.005, max(fidelities) + pad))
    ax.set_xlabel("submission time (UTC)")
    ax.set_ylabel("mean per-qubit marginal fidelity to the ideal")
    ax.set_title(f"Heartbeat fidelity over time: {len(points)} session"
                 f"{'s' if len(points) != 1 else ''}, min {min(fidelities):.4f}, "
                 f"max {max(fidelities):.4f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(result, fig, out_dir / name)


def _plot_budgets(result: PlotFiles, report: StudyReport, out_dir: Path) -> None:
    if not report.budget:
        result.skipped.append({"plot": "budget_<service>_<key>.png",
                               "reason": "no job in the ledger"})
        return
    for key in report.budget:
        state = key.state
        suffix = state.service if state.key_index is None else f"{state.service}_{state.key_index}"
        _save(result, _budget_figure(key), out_dir / f"budget_{_safe(suffix)}.png")


def _budget_figure(key: KeyBudget) -> Any:
    state = key.state
    limit = state.limit_seconds
    fig = _figure()
    ax = fig.add_subplot()
    times = [state.window_start, *(t for t, _ in key.burn_down), state.now]
    used = [0.0, *(u for _, u in key.burn_down), state.used_seconds]
    ax.step(times, used, where="post", color="tab:blue", linewidth=2, zorder=3, clip_on=False,
            label=f"used: {state.used_seconds:.1f} s ({state.jobs_used} jobs)")
    if key.burn_down:  # a dot per job: visible even when usage is a sliver of the limit
        ax.plot([t for t, _ in key.burn_down], [u for _, u in key.burn_down], "o",
                color="tab:blue", markersize=3, zorder=4, clip_on=False)
    note = f"{state.used_seconds:.1f} s used" + (f" + {state.reserved_seconds:.1f} s reserved"
                                                  if state.reserved_seconds else "")
    ax.annotate(note, (state.now, state.used_seconds),
                xytext=(-10, 18), textcoords="offset points", ha="right", fontsize=8,
                color="tab:blue", arrowprops={"arrowstyle": "->", "color": "tab:blue"})
    if state.reserved_seconds:
        ax.plot([state.now, state.now], [state.used_seconds,
                                         state.used_seconds + state.reserved_seconds],
                color="tab:orange", linewidth=5, solid_capstyle="butt", clip_on=False, zorder=5,
                label=f"reserved by open jobs: {state.reserved_seconds:.1f} s")
    ax.axhline(limit, color="tab:red", linestyle="-", linewidth=1.2,
               label=f"limit: {limit:.0f} s per {WINDOW.days} days")
    ax.plot([state.window_start, state.now], [0, limit], linestyle=":", color="gray",
            label="even spread of the limit over the window")
    _time_axis(ax)
    top = max(limit, state.used_seconds + state.reserved_seconds, 1.0)
    ax.set_ylim(0, top * 1.08)
    ax.set_xlim(state.window_start, state.now)
    ax.set_xlabel(f"time (UTC), rolling {WINDOW.days}-day window ending now")
    ax.set_ylabel("cumulative QPU seconds used in the window")
    share = state.used_seconds / limit if limit else math.inf
    ax.set_title(f"QPU budget burn-down: {state.label}\n{state.used_seconds:.1f} s used "
                 f"({share:.1%} of {limit:.0f} s), {max(state.remaining_seconds, 0.0):.1f} s "
                 "remaining", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig
