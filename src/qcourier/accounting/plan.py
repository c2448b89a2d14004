"""The study against its plan: targets per experiment, what the rest costs, who can pay.

The plan is a TOML file, ``qcourier-plan.toml`` in the current directory or ``--plan FILE``::

    end = 2027-02-28          # planned end date
    keys = [0, 1, 2]          # IBM key indices that pay for the study

    [targets.deployment]      # the heartbeat
    sessions = 42
    [targets.heavy_hex_code]
    sessions = 12

Instead of ``sessions`` a target may give ``effect_size`` (Cohen's d), ``power`` (default
0.8), ``alpha`` (default 0.05, two-sided) and ``method``: ``"paired"`` (a paired test: N =
((z_{1-a/2} + z_{power}) / d)^2) or ``"two-sample"`` (N per group = 2 ((z + z) / d)^2, total
2N). These are the normal approximation (stdlib ``statistics.NormalDist``, no scipy); the
t-test needs about one or two more, so one is added. d = 0.44, paired, power 0.8 gives 42.

Cost of the rest: remaining sessions x the median estimated QPU seconds (the estimate model's
figure recorded at submission, budget.py) of that experiment's jobs so far. Affordable: the
plan keys' remaining budget now, plus one full limit per key for each whole 28-day window
that starts before the end date, covers that cost.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from qcourier.errors import UsageError

DEFAULT_PLAN = "qcourier-plan.toml"
FINAL_OK = ("completed", "partial")


@dataclass
class Target:
    experiment: str
    sessions: int
    how: str  # "declared" or the method and its inputs


def sample_size(effect_size: float, power: float = 0.8, alpha: float = 0.05,
                method: str = "paired") -> int:
    """Sessions needed (normal approximation + 1 for the t-test), see the module doc."""
    if effect_size <= 0 or not 0 < power < 1 or not 0 < alpha < 1:
        raise UsageError("a plan's effect_size must be > 0, power and alpha between 0 and 1")
    z = statistics.NormalDist().inv_cdf
    base = ((z(1 - alpha / 2) + z(power)) / effect_size) ** 2
    if method == "paired":
        return math.ceil(base) + 1
    if method == "two-sample":
        return 2 * (math.ceil(2 * base) + 1)
    raise UsageError(f"a plan's method must be 'paired' or 'two-sample', got {method!r}")


@dataclass
class Plan:
    path: Path
    end: date | None
    keys: list[int]
    targets: list[Target]


def load_plan(path: Path | None) -> Plan | None:
    """The plan at ``path`` (an error if missing), else ./qcourier-plan.toml if present."""
    import tomllib

    if path is None:
        path = Path(DEFAULT_PLAN)
        if not path.is_file():
            return None
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"plan file {path} not found; see the README, 'The study plan'") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"plan file {path} cannot be read: {exc}") from None
    targets = []
    for name, t in (data.get("targets") or {}).items():
        if not isinstance(t, dict):
            raise UsageError(f"plan file {path}: [targets.{name}] must be a table")
        if "sessions" in t:
            targets.append(Target(name, int(t["sessions"]), "declared"))
        elif "effect_size" in t:
            method = str(t.get("method", "paired"))
            n = sample_size(float(t["effect_size"]), float(t.get("power", 0.8)),
                            float(t.get("alpha", 0.05)), method)
            targets.append(Target(name, n, f"{method} test, d={t['effect_size']}, "
                                  f"power={t.get('power', 0.8)}, normal approximation"))
        else:
            raise UsageError(f"plan file {path}: [targets.{name}] needs sessions or effect_size")
    end = data.get("end")
    if isinstance(end, datetime):
        end = end.date()
    if end is not None and not isinstance(end, date):
        raise UsageError(f"plan file {path}: end must be a date, e.g. end = 2027-02-28")
    return Plan(Path(path), end, [int(k) for k in data.get("keys", [])], targets)


def progress(plan: Plan, records, limit_of, now: datetime) -> dict[str, Any]:
    """Done / target per experiment, the QPU seconds the rest costs, whether keys can pay."""
    from qcourier.accounting.budget import WINDOW, budget_state

    rows, cost = [], 0.0
    for t in plan.targets:
        mine = [r for r in records if r.experiment_type == t.experiment]
        done = sum(r.status.value in FINAL_OK for r in mine)
        estimates = [r.estimated_qpu_seconds for r in mine if r.estimated_qpu_seconds]
        each = statistics.median(estimates) if estimates else None
        left = max(0, t.sessions - done)
        rest = None if each is None else left * each
        cost += rest or 0.0
        rows.append({"experiment": t.experiment, "done": done, "target": t.sessions,
                     "how": t.how, "remaining_sessions": left, "seconds_each": each,
                     "remaining_qpu_seconds": rest})
    remaining = sum(budget_state(records, "ibm", k, limit_of(k), now).remaining_seconds
                    for k in plan.keys)
    windows = 0
    if plan.end is not None:
        days = (plan.end - now.date()).days
        windows = max(0, days // WINDOW.days)
    available = remaining + windows * sum(limit_of(k) for k in plan.keys)
    unknown = any(r["seconds_each"] is None and r["remaining_sessions"] for r in rows)
    return {"plan": str(plan.path), "end": None if plan.end is None else plan.end.isoformat(),
            "keys": plan.keys, "targets": rows, "remaining_qpu_seconds": cost,
            "keys_remaining_seconds": remaining, "available_by_end_seconds": available,
            "affordable": None if unknown else available >= cost}


def lines(p: dict[str, Any]) -> list[str]:
    """Human lines of :func:`progress`."""
    out = []
    for r in p["targets"]:
        cost = ("cost unknown (no job yet)" if r["remaining_qpu_seconds"] is None
                else f"{r['remaining_qpu_seconds']:.0f} QPU s left")
        out.append(f"{r['experiment']}: {r['done']}/{r['target']} ({r['how']}); {cost}")
    verdict = {True: "yes", False: "NO", None: "unknown"}[p["affordable"]]
    out.append(f"rest costs {p['remaining_qpu_seconds']:.0f} s; keys {p['keys']} have "
               f"{p['keys_remaining_seconds']:.0f} s now, {p['available_by_end_seconds']:.0f} s "
               f"by {p['end'] or 'the end'}: affordable: {verdict}")
    return out
