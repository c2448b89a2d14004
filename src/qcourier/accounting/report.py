"""The study report: service-level indicators, each experiment's results over time.

:func:`study_report` reads the folded ledger records (and the result file of each completed
job) and returns a :class:`StudyReport`; :meth:`StudyReport.to_dict` is the stable shape that
``qcourier report --json`` prints. :func:`qcourier.accounting.plots.write_plots` draws the
report as PNG files.

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

This module imports neither click nor matplotlib (the plots are
:mod:`qcourier.accounting.plots`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qcourier.accounting.budget import (
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
    for r in sorted(completed_records(records), key=submitted_at):
        if r.experiment_type not in series:
            continue
        payload, reason = read_result(ledger_dir, r)
        analysis = payload.get("analysis") if payload else None
        if reason is None and not isinstance(analysis, dict):
            reason = f"no analysis ({(payload or {}).get('analysis_error') or 'none recorded'})"
        if reason is not None or not isinstance(analysis, dict):
            skipped.append({"job_id": r.job_id, "result_path": r.result_path, "reason": reason})
            continue
        base = {"job_id": r.job_id, "record_id": r.record_id, "submission_time": submitted_at(r)}
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


def completed_records(records: Iterable[LedgerRecord]) -> list[LedgerRecord]:
    """The records in status ``completed``, in the order given."""
    return [r for r in records if r.status is JobStatus.COMPLETED]


def submitted_at(record: LedgerRecord) -> datetime:
    """When a record was submitted (UTC), its last update when it has no submission time."""
    return as_utc(record.submission_time or record.updated_at)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of non-empty ``values``, interpolating linearly between ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)

