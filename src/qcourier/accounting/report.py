"""The study report: service-level indicators, each experiment's results over time, plots.

:func:`study_report` reads the folded ledger records (and the result file of each completed
job) and returns a :class:`StudyReport`; :meth:`StudyReport.to_dict` is the stable shape that
``qcourier report --json`` prints. :func:`write_plots` draws the report as PNG files.

Definitions (all over every record in the ledger, whatever its age, unless said otherwise):

- **finished**: status ``completed``, ``partial``, ``failed``, ``cancelled`` or
  ``submit_failed`` (the final statuses). Each attempt is one record, so a job retried
  after a failure counts once per attempt.
- **success rate** = completed / finished; ``None`` when nothing has finished. A partial
  result (fewer shots than asked for) is not a success. Jobs still open (deferred,
  submitting, submitted, queued, running) and jobs in status ``error`` (could not be
  polled: their fate is unknown) are in neither count.
- **queue time**: the ``queue_seconds`` the service reported, over records that have one.
- **turnaround** = ``completion_time - submission_time`` in seconds, over records that have
  both (final jobs, failed ones included: they waited too).
- **median** and **p95** are :func:`quantile` at 0.5 and 0.95 (also what the Prometheus
  summaries use): linear interpolation between order statistics at position ``q (n - 1)``,
  the same as numpy's default ``"linear"`` method and ``statistics.quantiles(...,
  method="inclusive")``. It never extrapolates: with ``n <= 20`` samples it lies between the two
  largest values (with one sample it is that sample), so with few jobs read it as "about the
  worst", not as a tail estimate.
- **budget**: per key ``(service, api_key_index)`` seen in the ledger,
  :func:`qcourier.accounting.budget.budget_state` over the rolling 28-day window ending at ``now``,
  plus the burn-down: the cumulative usage of the jobs it counts, in order of finishing.
- **failures**: ``by_class`` counts the records in status ``failed``, ``partial`` or
  ``cancelled`` by ``failure_class`` (``system``, ``user``, ``None`` -> ``unknown``);
  ``submit_failed`` and ``error`` count the records in those statuses.

Experiment series come from the result files (``<ledger>/<result_path>``, key
``"analysis"``) of ``completed`` jobs, oldest submission first. A file that is missing,
unreadable, not JSON, or without an analysis is skipped and listed in ``skipped_results``.

This module imports neither click nor (outside :func:`write_plots`) matplotlib.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from qcourier.errors import QcourierError
from qcourier.accounting.budget import (
    WINDOW,
    BudgetState,
    budget_keys,
    budget_state,
)
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.results import read_result
from qcourier.ledger.status import FINAL_STATUSES, JobStatus, as_utc

#: Experiments whose results the report follows over time.
SERIES_EXPERIMENTS = ("heavy_hex_code", "surface_code", "deployment", "bell", "ghz")
#: Memory experiments (logical error per round against rounds), plotted alike.
QEC_EXPERIMENTS = ("heavy_hex_code", "surface_code")
_QEC_TITLES = {"heavy_hex_code": "Heavy-hex code", "surface_code": "Surface code (routed)"}
#: Bitstrings shown in a counts histogram (the most frequent ones).
TOP_OUTCOMES = 20
_FAILURE_STATUSES = (JobStatus.FAILED, JobStatus.PARTIAL, JobStatus.CANCELLED)


# -- the report -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distribution:
    """Count, median and p95 of a list of durations in seconds (``None`` when empty)."""

    count: int
    median: float | None
    p95: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """The distribution of ``values`` (see the module doc for the percentile method)."""
        values = sorted(values)
        if not values:
            return cls(0, None, None)
        if len(values) == 1:
            return cls(1, values[0], values[0])
        return cls(len(values), quantile(values, 0.5), quantile(values, 0.95))

    def to_dict(self) -> dict[str, Any]:
        """``{"count", "median", "p95"}``."""
        return {"count": self.count, "median": self.median, "p95": self.p95}


@dataclass(frozen=True)
class KeyBudget:
    """One key's budget state and its burn-down: ``(finished_at, cumulative used s)``."""

    state: BudgetState
    burn_down: list[tuple[datetime, float]]

    def to_dict(self) -> dict[str, Any]:
        """``BudgetState.to_dict()`` plus ``burn_down: [{"time", "used_seconds"}]``."""
        return {**self.state.to_dict(),
                "burn_down": [{"time": t.isoformat(), "used_seconds": used}
                              for t, used in self.burn_down]}


@dataclass
class StudyReport:
    """What ``qcourier report`` shows; ``to_dict()`` is its ``--json`` shape.

    Attributes:
        now: when the report was made (the end of the budget window).
        ledger_dir: the ledger directory read.
        by_status: records per status (every status present, zeros included).
        queue: queue seconds (median, p95).
        turnaround: completion - submission seconds (median, p95).
        budget: per key, its window's budget and burn-down.
        failures_by_class: ``{"system", "user", "unknown"}`` counts (see the module doc).
        series: per experiment in :data:`SERIES_EXPERIMENTS`, one dict per completed job.
        skipped_results: ``{"job_id", "result_path", "reason"}`` of each result file skipped.
    """

    now: datetime
    ledger_dir: Path
    by_status: dict[str, int]
    queue: Distribution
    turnaround: Distribution
    budget: list[KeyBudget]
    failures_by_class: dict[str, int]
    series: dict[str, list[dict[str, Any]]]
    skipped_results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_jobs(self) -> int:
        """Every record in the ledger."""
        return sum(self.by_status.values())

    @property
    def finished_jobs(self) -> int:
        """Records in a final status: the success rate's denominator."""
        return sum(self.by_status[s.value] for s in FINAL_STATUSES)

    @property
    def success_rate(self) -> float | None:
        """completed / finished, ``None`` when nothing has finished."""
        finished = self.finished_jobs
        return self.by_status[JobStatus.COMPLETED.value] / finished if finished else None

    def surface_code_latest(self, experiment: str = "surface_code") -> dict[str, dict[str, Any]]:
        """The latest job of a memory experiment for each logical state, by state (sorted)."""
        latest: dict[str, dict[str, Any]] = {}
        for point in self.series[experiment]:
            latest[str(point["logical_state"])] = point
        return dict(sorted(latest.items()))

    def lambda_factors(self) -> list[dict[str, Any]]:
        """Lambda = eps(d=3) / eps(d=5) of the heavy-hex code, per basis, from the latest
        reported (not withheld) fit at each distance; a first-order error propagation gives
        its standard error. Empty without both distances in one basis."""
        out = []
        for basis, states in (("z", ("0", "1")), ("x", ("+", "-"))):
            latest: dict[int, dict[str, Any]] = {}
            for point in self.series["heavy_hex_code"]:
                if (str(point["logical_state"]) in states
                        and point["logical_error_per_round"] and point["distance"] in (3, 5)):
                    latest[point["distance"]] = point
            if 3 not in latest or 5 not in latest:
                continue
            e3, e5 = latest[3], latest[5]
            value = e3["logical_error_per_round"] / e5["logical_error_per_round"]
            rel = [p["logical_error_per_round_stderr"] / p["logical_error_per_round"]
                   for p in (e3, e5) if p["logical_error_per_round_stderr"] is not None]
            stderr = value * math.sqrt(sum(r * r for r in rel)) if len(rel) == 2 else None
            out.append({"basis": basis, "lambda": value, "lambda_stderr": stderr,
                        "eps_d3": e3["logical_error_per_round"],
                        "eps_d5": e5["logical_error_per_round"],
                        "job_id_d3": e3["job_id"], "job_id_d5": e5["job_id"]})
        return out

    def heartbeat_summary(self) -> dict[str, Any] | None:
        """Latest heartbeat fidelity, its min/max over sessions and the drift check of the
        latest session (:func:`heartbeat_drift`); ``None`` without any session."""
        points = [p for p in self.series["deployment"] if p["marginal_fidelity"] is not None]
        if not points:
            return None
        fidelities = [p["marginal_fidelity"] for p in points]
        return {"sessions": len(points), "latest": fidelities[-1],
                "latest_job_id": points[-1]["job_id"],
                "latest_submission_time": _iso(points[-1]["submission_time"]),
                "min": min(fidelities), "max": max(fidelities),
                "drift": heartbeat_drift(points)}

    def to_dict(self) -> dict[str, Any]:
        """The ``qcourier report --json`` shape (times in ISO 8601, durations in seconds)::

            {"now", "ledger_dir",
             "jobs": {"total", "finished", "by_status": {<every status>: n}},
             "success_rate": float | null,
             "queue_seconds": {"count", "median", "p95"},
             "turnaround_seconds": {"count", "median", "p95"},
             "budget": [{"service", "key_index", "limit_seconds", "used_seconds",
                         "reserved_seconds", "remaining_seconds", "jobs_used",
                         "jobs_reserved", "window_start", "now",
                         "burn_down": [{"time", "used_seconds"}]}],
             "failures": {"by_class": {"system", "user", "unknown"},
                          "submit_failed", "error"},
             "experiments": {
               "heavy_hex_code": [{"job_id", "record_id", "submission_time",
                                 "logical_state", "distance", "logical_error_per_round",
                                 "logical_error_per_round_stderr", "fault_distance",
                                 "fit_intercept_eps0", "fit_chi2_per_dof", "fit_withheld",
                                 "per_round": [{"rounds", "shots", "logical_error_rate",
                                                "logical_error_ci95": [lo, hi]}]}],
               "surface_code": [same as heavy_hex_code; the fit fields are null],
               "deployment": [{"job_id", "record_id", "submission_time", "width",
                               "shots", "marginal_fidelity", "marginal_fidelity_stderr",
                               "mean_absolute_deviation",
                               "p1_measured": [...], "p1_ideal": [...]}],
               "bell": [{"job_id", "record_id", "submission_time", "shots",
                         "hellinger_fidelity", "width"}],
               "ghz": [same as bell]},
             "summary": {"heavy_hex_code_latest": {<state>: {"job_id", "submission_time",
                                                          "distance",
                                                          "logical_error_per_round",
                                                          "logical_error_per_round_stderr"}},
                         "surface_code_latest": {same},
                         "lambda": [{"basis", "lambda", "lambda_stderr", "eps_d3",
                                     "eps_d5", "job_id_d3", "job_id_d5"}],
                         "heartbeat": null | {"sessions", "latest", "latest_job_id",
                                              "latest_submission_time", "min", "max",
                                              "drift": {"earlier_sessions", "shots",
                                                        "backend", "baseline_mean",
                                                        "baseline_sd", "z", "drifted",
                                                        "reason"}}},
             "skipped_results": [{"job_id", "result_path", "reason"}]}
        """
        def latest(experiment: str) -> dict[str, Any]:
            return {state: {"job_id": p["job_id"], "submission_time": _iso(p["submission_time"]),
                            "distance": p["distance"],
                            "logical_error_per_round": p["logical_error_per_round"],
                            "logical_error_per_round_stderr": p["logical_error_per_round_stderr"]}
                    for state, p in self.surface_code_latest(experiment).items()}
        return {
            "now": self.now.isoformat(),
            "ledger_dir": str(self.ledger_dir),
            "jobs": {"total": self.total_jobs, "finished": self.finished_jobs,
                     "by_status": dict(self.by_status)},
            "success_rate": self.success_rate,
            "queue_seconds": self.queue.to_dict(),
            "turnaround_seconds": self.turnaround.to_dict(),
            "budget": [k.to_dict() for k in self.budget],
            "failures": {"by_class": dict(self.failures_by_class),
                         "submit_failed": self.by_status[JobStatus.SUBMIT_FAILED.value],
                         "error": self.by_status[JobStatus.ERROR.value]},
            "experiments": {name: [{k: _iso(v) for k, v in point.items()} for point in points]
                            for name, points in self.series.items()},
            "summary": {"heavy_hex_code_latest": latest("heavy_hex_code"),
                        "surface_code_latest": latest("surface_code"),
                        "lambda": self.lambda_factors(),
                        "heartbeat": self.heartbeat_summary()},
            "skipped_results": list(self.skipped_results),
        }


#: Earlier sessions (same backend, width and shots) needed before the drift check speaks.
DRIFT_MIN_SESSIONS = 3
#: |z| above this flags the latest heartbeat as drifted from the study's own baseline.
DRIFT_Z = 3.0


def heartbeat_drift(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Has the device moved? The latest heartbeat against the study's earlier sessions of
    the same backend, width and shot count (so shot-noise bias and circuit are identical).

    The baseline is the mean ``m`` and sample standard deviation ``s`` of the earlier
    sessions' marginal fidelity (``s`` holds shot noise and the device's normal
    session-to-session wander); the latest value ``F`` is scored as a new draw from it,
    ``z = (F - m) / (s sqrt(1 + 1/k))`` with ``k`` earlier sessions (the prediction
    interval), ``s`` floored at the latest session's own standard error. ``drifted``: ``|z| >
    DRIFT_Z``. With fewer than ``DRIFT_MIN_SESSIONS`` comparable sessions, ``z`` is ``None``
    and ``reason`` says why.
    """
    latest = points[-1]
    same = [p["marginal_fidelity"] for p in points[:-1]
            if (p.get("backend"), p.get("width"), p.get("shots"))
            == (latest.get("backend"), latest.get("width"), latest.get("shots"))]
    out: dict[str, Any] = {"earlier_sessions": len(same), "shots": latest.get("shots"),
                           "backend": latest.get("backend"), "baseline_mean": None,
                           "baseline_sd": None, "z": None, "drifted": None, "reason": None}
    if len(same) < DRIFT_MIN_SESSIONS:
        out["reason"] = (f"{len(same)} earlier session(s) on {latest.get('backend')} at "
                         f"{latest.get('shots')} shots and width {latest.get('width')}; the "
                         f"check needs {DRIFT_MIN_SESSIONS}")
        return out
    mean = statistics.fmean(same)
    sd = max(statistics.stdev(same), latest.get("marginal_fidelity_stderr") or 0.0)
    z = (latest["marginal_fidelity"] - mean) / (sd * math.sqrt(1 + 1 / len(same))) if sd > 0 else 0.0
    out.update({"baseline_mean": mean, "baseline_sd": sd, "z": z, "drifted": abs(z) > DRIFT_Z})
    return out


def study_report(records: Iterable[LedgerRecord], ledger_dir: Path,
                 limits: Callable[[int | None], float], now: datetime) -> StudyReport:
    """The study's SLIs and experiment series (definitions in the module doc).

    Args:
        records: the latest state of every record (``Ledger.fold().records``).
        ledger_dir: the ledger directory; result paths are relative to it.
        limits: a key's QPU-second limit per window by key index (``Settings.budget_limit``).
        now: the report's time (timezone-aware; a naive time is taken as UTC).
    """
    records = list(records)
    now = as_utc(now)
    by_status = {s.value: 0 for s in JobStatus}
    failures = {"system": 0, "user": 0, "unknown": 0}
    for r in records:
        by_status[r.status.value] += 1
        if r.status in _FAILURE_STATUSES:
            cls = r.failure_class if r.failure_class in ("system", "user") else "unknown"
            failures[cls] += 1
    queue = Distribution.of([r.queue_seconds for r in records if r.queue_seconds is not None])
    turnaround = Distribution.of([
        (as_utc(r.completion_time) - as_utc(r.submission_time)).total_seconds()
        for r in records if r.completion_time is not None and r.submission_time is not None])
    budget = [_key_budget(records, service, key, limits(key), now)
              for service, key in budget_keys(records)]
    series, skipped = _series(records, Path(ledger_dir))
    return StudyReport(now=now, ledger_dir=Path(ledger_dir), by_status=by_status, queue=queue,
                       turnaround=turnaround, budget=budget, failures_by_class=failures,
                       series=series, skipped_results=skipped)


def _key_budget(records: list[LedgerRecord], service: str, key: int | None, limit: float,
                now: datetime) -> KeyBudget:
    state = budget_state(records, service, key, limit, now)
    # Which jobs count, and for how much, is budget_state's rule: ask it job by job.
    charges = []
    for r in records:
        one = budget_state([r], service, key, limit, now)
        if one.jobs_used:
            charges.append((as_utc(r.completion_time or r.updated_at), one.used_seconds))
    burn_down, used = [], 0.0
    for moment, seconds in sorted(charges, key=lambda c: c[0]):
        used += seconds
        burn_down.append((moment, used))
    return KeyBudget(state, burn_down)


def _series(records: list[LedgerRecord], ledger_dir: Path
            ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in SERIES_EXPERIMENTS}
    skipped: list[dict[str, Any]] = []
    for r in sorted(_completed(records), key=_submitted_at):
        if r.experiment_type not in series:
            continue
        payload, reason = read_result(ledger_dir, r)
        analysis = payload.get("analysis") if payload else None
        if reason is None and not isinstance(analysis, dict):
            reason = f"no analysis ({(payload or {}).get('analysis_error') or 'none recorded'})"
        if reason is not None or not isinstance(analysis, dict):
            skipped.append({"job_id": r.job_id, "result_path": r.result_path, "reason": reason})
            continue
        base = {"job_id": r.job_id, "record_id": r.record_id, "submission_time": _submitted_at(r)}
        if r.experiment_type == "deployment":  # the drift check compares like with like
            base["backend"] = r.backend
        point = _point(r.experiment_type, analysis)
        if point.get("width") is None and "width" in point:  # canaries: the width is a param
            point["width"] = r.metadata.get("width", r.params.get("width"))
        series[r.experiment_type].append({**base, **point})
    return series, skipped


def _point(experiment: str, a: dict[str, Any]) -> dict[str, Any]:
    if experiment in QEC_EXPERIMENTS:
        fit = a.get("fit") or {}
        return {"logical_state": a.get("logical_state"), "distance": a.get("distance"),
                "logical_error_per_round": a.get("logical_error_per_round"),
                "logical_error_per_round_stderr": a.get("logical_error_per_round_stderr"),
                "fault_distance": a.get("fault_distance"),
                "fit_intercept_eps0": fit.get("eps0"),
                "fit_chi2_per_dof": fit.get("chi2_per_dof"),
                "fit_withheld": fit.get("withheld"),
                "per_round": [{"rounds": p.get("rounds"), "shots": p.get("shots"),
                               "logical_error_rate": p.get("logical_error_rate"),
                               "logical_error_ci95": p.get("logical_error_ci95")}
                              for p in a.get("per_round") or []]}
    if experiment == "deployment":
        marginal = a.get("marginal_fidelity")
        stderr = a.get("marginal_fidelity_stderr")
        if marginal is None and a.get("p1_measured") and a.get("p1_ideal") and a.get("shots"):
            # a result written before the marginal metric: it follows from the P(1) alone
            from qcourier.experiments.deployment import marginal_summary

            summary = marginal_summary(a["p1_measured"], a["p1_ideal"], int(a["shots"]))
            marginal, stderr = summary["marginal_fidelity"], summary["marginal_fidelity_stderr"]
        return {"width": a.get("width"), "shots": a.get("shots"),
                "marginal_fidelity": marginal, "marginal_fidelity_stderr": stderr,
                "mean_absolute_deviation": a.get("mean_absolute_deviation"),
                "p1_measured": a.get("p1_measured"), "p1_ideal": a.get("p1_ideal")}
    return {"shots": a.get("shots"), "hellinger_fidelity": a.get("hellinger_fidelity"),
            "width": a.get("width")}


def _completed(records: Iterable[LedgerRecord]) -> list[LedgerRecord]:
    return [r for r in records if r.status is JobStatus.COMPLETED]


def _submitted_at(record: LedgerRecord) -> datetime:
    return as_utc(record.submission_time or record.updated_at)




def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# -- plots ------------------------------------------------------------------------------------

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


def require_matplotlib() -> None:
    """Raises QcourierError, naming the extra to install, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise QcourierError(f"plots need matplotlib, which is not installed: {PLOTS_EXTRA}"
                            ) from None


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
    done = sorted(_completed(records), key=_submitted_at)
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
    when = f", submitted {_short_time(_submitted_at(record))}"
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


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of non-empty ``values``, interpolating linearly between ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)

