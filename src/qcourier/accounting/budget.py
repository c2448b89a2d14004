"""QPU-time accounting: the rolling-window budget of each key, the pace rule, and the model
that estimates a job's QPU seconds before it is submitted.

The budget (per key, over a rolling :data:`WINDOW` of 28 days, as on IBM's Open Plan)::

    used      = QPU seconds the ledger records for final jobs that finished in the window
                (a final job whose usage is not known yet counts its estimate), or the
                service's own usage figure for the key if that is larger
    reserved  = estimated QPU seconds of jobs still at the service (or being submitted)
    remaining = limit - used - reserved

The service's figure covers jobs this ledger directory does not know (submitted from
another directory or machine). A job the service has finished but the ledger has not yet
collected counts in both ``used`` and ``reserved``: the guard errs on the side of spending less.

A key is a ``(service, api_key_index)`` pair: each IBM API key has its own budget, and the
local service's jobs form one simulated budget of their own (key index ``None``). Limits
come from ``Settings.budget_limit`` (``QCOURIER_BUDGET_SECONDS``, ``..._<N>``).

The estimate (also what the local service reports as a job's usage) is::

    JOB_OVERHEAD_SECONDS
    + sum over circuits of (CIRCUIT_OVERHEAD_SECONDS + shots * (duration + rep_delay))

where ``duration`` is the circuit's scheduled duration on the backend
(``QuantumCircuit.estimate_duration`` from the target's gate lengths) and ``rep_delay`` the
backend's default repetition delay (250 us on IBM's Heron devices). The overheads are
fixed charges of the order IBM reports for small jobs on the Open Plan.
:func:`model_accuracy` reports how well this model did against the usage IBM reported.

This module imports neither click nor qiskit (qiskit only inside the estimate, lazily).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qcourier.ledger.status import JobStatus, as_utc

if TYPE_CHECKING:
    from qcourier.ledger.summary import RecordView


# -- the rolling-window budget ---------------------------------------------------------------

#: IBM's Open Plan budget window: usage counts for 28 days, then drops out.
WINDOW = timedelta(days=28)
#: A key's QPU seconds per window unless ``QCOURIER_BUDGET_SECONDS[_<N>]`` says otherwise.
DEFAULT_LIMIT_SECONDS = 600.0
#: How far ahead of an even spread ``qsubmit --pace`` may run (see :func:`pace_allowance`).
DEFAULT_PACE_BURST = timedelta(days=1)
# Float sums of seconds: a job that fits exactly must not be refused for a rounding error.
_TOLERANCE_SECONDS = 1e-9

BudgetKey = tuple[str, int | None]


def budget_key(service: str, key_index: int | None) -> BudgetKey:
    """The budget a job counts against: ``(service, key index)``; local jobs share one."""
    return (service, None) if service == "local" else (service, key_index)


def budget_keys(records: Iterable[RecordView]) -> list[BudgetKey]:
    """Every budget key the records use, sorted (local first, then IBM keys by index)."""
    keys = {budget_key(r.service, r.api_key_index) for r in records}
    return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))


def _of_key(records: Iterable[RecordView], service: str, key_index: int | None
            ) -> list[RecordView]:
    key = budget_key(service, key_index)
    return [r for r in records if budget_key(r.service, r.api_key_index) == key]




def is_reserving(status: JobStatus) -> bool:
    """Whether a job in ``status`` holds a reservation: at the service, being submitted, or
    deferred (committed to: qcollect will submit it). When qcollect checks a deferred job
    before submitting it, the deferred jobs (itself and those queued behind it) are left out.
    """
    return status.is_open


def _finished_at(record: RecordView) -> datetime:
    return as_utc(record.completion_time or record.updated_at)


def usage_pending(record: RecordView) -> bool:
    """Whether a record is a final job whose usage is not known yet (the service still
    reported it pending): the guard counts its estimate until a ``qcollect`` records the
    figure. A submission that never became a job (``submit_failed``, or cancelled while
    deferred) was never charged, so it has no usage to wait for."""
    if not record.status.is_final or record.usage_seconds is not None:
        return False
    never_a_job = record.status is JobStatus.SUBMIT_FAILED or (
        record.status is JobStatus.CANCELLED and record.job_id is None)
    return not never_a_job


def finished_in_window(record: RecordView, now: datetime) -> bool:
    """Whether a final record counts in the window ending at ``now`` (by its completion time,
    else the time of its last ledger line)."""
    now = as_utc(now)
    return now - WINDOW < _finished_at(record) <= now


@dataclass(frozen=True)
class BudgetState:
    """One key's QPU budget over the rolling window ``(window_start, now]``.

    Attributes:
        service: ``"local"`` or ``"ibm"``.
        key_index: the IBM API key's index (``None`` for the local service).
        limit_seconds: QPU seconds the key may use per window.
        used_seconds: recorded usage of final jobs that finished in the window.
        reserved_seconds: estimates of the jobs still pending or being submitted.
        window_start: ``now - WINDOW``.
        now: the time the state was computed for.
        jobs_used: final jobs finished in the window with a recorded usage above zero
            (or, usage unknown yet, an estimate).
        jobs_reserved: jobs pending or being submitted.
        ledger_used_seconds: what the ledger alone says was used.
        service_used_seconds: what the service says the key used, if it was asked.
        jobs_usage_pending: final jobs in the window whose usage is not known yet
            (:func:`usage_pending`); with ``estimate_unknown`` they are in ``jobs_used``.
        usage_pending_seconds: their estimates (in ``used_seconds`` with ``estimate_unknown``).
    """

    service: str
    key_index: int | None
    limit_seconds: float
    used_seconds: float
    reserved_seconds: float
    window_start: datetime
    now: datetime
    jobs_used: int
    jobs_reserved: int
    # Where ``used_seconds`` came from: not part of a state's value.
    ledger_used_seconds: float | None = field(default=None, compare=False)
    service_used_seconds: float | None = field(default=None, compare=False)
    jobs_usage_pending: int = 0
    usage_pending_seconds: float = 0.0

    @property
    def remaining_seconds(self) -> float:
        """``limit - used - reserved`` (negative when overspent)."""
        return self.limit_seconds - self.used_seconds - self.reserved_seconds

    @property
    def label(self) -> str:
        """``local`` or ``ibm key N``: how messages name the key."""
        return self.service if self.key_index is None else f"{self.service} key {self.key_index}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the figures, plus ``remaining_seconds`` (not the sources of
        ``used`` nor the pending-usage counts); times in ISO 8601."""
        return {
            "service": self.service, "key_index": self.key_index,
            "limit_seconds": self.limit_seconds, "used_seconds": self.used_seconds,
            "reserved_seconds": self.reserved_seconds,
            "remaining_seconds": self.remaining_seconds,
            "jobs_used": self.jobs_used, "jobs_reserved": self.jobs_reserved,
            "window_start": self.window_start.isoformat(), "now": self.now.isoformat(),
        }


def budget_state(records: Iterable[RecordView], service: str, key_index: int | None,
                 limit_seconds: float, now: datetime,
                 service_used_seconds: float | None = None,
                 estimate_unknown: bool = False) -> BudgetState:
    """The budget of key ``(service, key_index)`` at ``now``, from the folded ledger records.

    Args:
        records: latest state of every record (``Ledger.fold().records``); records of other
            keys are ignored.
        service: ``"local"`` or ``"ibm"``; for ``"local"`` the key index is ignored.
        key_index: the IBM API key's index.
        limit_seconds: the key's limit per window (``Settings.budget_limit``).
        now: the end of the window (timezone-aware; a naive time is taken as UTC).
        service_used_seconds: the service's own usage figure for the key, if known.
        estimate_unknown: count a final job whose usage is not known by its estimate (the
            guard does; a report of what was used does not).

    Returns:
        ``used``: the ``usage_seconds`` of every final job (failed and cancelled ones
        included: whatever usage is recorded was charged) whose completion time (else the
        time of its last ledger line) lies in ``(now - WINDOW, now]``; with
        ``estimate_unknown``, a final job whose usage is not known yet (the service still reports it pending) counts its
        ``estimated_qpu_seconds`` until a later run records the real figure; a submission
        that never became a job counts nothing. If ``service_used_seconds`` is larger,
        ``used`` is that.
        ``reserved``: the ``estimated_qpu_seconds`` (``None`` = 0) of every job pending or
        being submitted, whenever submitted.
    """
    now = as_utc(now)
    start = now - WINDOW
    service, key_index = budget_key(service, key_index)
    used = reserved = pending_seconds = 0.0
    jobs_used = jobs_reserved = jobs_pending = 0
    for record in _of_key(records, service, key_index):
        if record.status.is_final:
            if not start < _finished_at(record) <= now:
                continue
            seconds = record.usage_seconds
            if usage_pending(record):
                jobs_pending += 1
                pending_seconds += record.estimated_qpu_seconds or 0.0
                if estimate_unknown:
                    seconds = record.estimated_qpu_seconds
            if seconds:
                used += seconds
                jobs_used += 1
        elif is_reserving(record.status):
            reserved += record.estimated_qpu_seconds or 0.0
            jobs_reserved += 1
    ledger_used = used
    if service_used_seconds is not None:
        used = max(used, float(service_used_seconds))
    return BudgetState(service=service, key_index=key_index, limit_seconds=float(limit_seconds),
                       used_seconds=used, reserved_seconds=reserved, window_start=start, now=now,
                       jobs_used=jobs_used, jobs_reserved=jobs_reserved,
                       ledger_used_seconds=ledger_used,
                       service_used_seconds=service_used_seconds,
                       jobs_usage_pending=jobs_pending, usage_pending_seconds=pending_seconds)


# -- the pace rule ----------------------------------------------------------------------------

def pace_allowance(records: Iterable[RecordView], service: str, key_index: int | None,
                   limit_seconds: float, now: datetime, estimate: float,
                   burst: timedelta = DEFAULT_PACE_BURST) -> tuple[bool, str]:
    """Whether a job of ``estimate`` QPU seconds keeps the key on an even spread of its budget.

    The rule (``qsubmit --pace``, for a heartbeat submitted from cron): spending the budget
    ``L`` evenly over the window ``W`` (28 days), allowing a lead of ``burst`` (``b``), never
    spends more than::

        A(d) = min(L, L * (d + b) / W)

    in any trailing interval of length ``d`` (0 <= d <= W). The job is allowed iff, for every
    such ``d``::

        S(d) + estimate <= A(d)

    where ``S(d)`` is the QPU time of the key's jobs submitted within the last ``d`` (that
    is, ``now - submission_time <= d``): the recorded usage of final jobs (``None`` = 0), and
    the estimate of jobs pending or being submitted. Deferred jobs and jobs in status
    ``error`` count nothing. A final job submitted ``W`` or more ago has left the window; a
    job still pending counts at ``d = W`` at the latest, whenever submitted. A record without
    a submission time (an intent) is placed at the time of its last ledger line.

    ``S`` only steps up at the jobs' ages and ``A`` only grows between them, so checking
    ``d = 0`` and ``d`` = each job's age is checking every ``d``. ``d = 0`` says one job may
    never exceed ``L * b / W`` (21.4 s for 600 s and one day); ``d = W`` that the window's
    total stays within ``L``; in between, usage may not run ahead of the even spread by more
    than ``b`` worth of budget. The rule is a pacing aid, judged by submission time: the
    hard limit is :func:`budget_state`'s ``remaining_seconds``, which the caller checks too.

    Returns:
        ``(allowed, reason)``: ``reason`` is one line with the numbers of the tightest
        interval and, when refused, when a submission would next be allowed if nothing else
        is submitted and pending jobs keep their reservation.
    """
    now = as_utc(now)
    charges = _pace_charges(_of_key(records, service, key_index))
    allowed, used, horizon, allowance = _pace_check(charges, limit_seconds, now, estimate, burst)
    if horizon > timedelta(0):
        spent = (f"{used:.1f} s used or reserved in the last {_format_duration(horizon)}"
                 f" + {estimate:.1f} s")
    else:
        spent = f"{used:.1f} s just submitted + {estimate:.1f} s" if used else f"{estimate:.1f} s"
    if allowed:
        return True, f"pace: {spent} is within the even-spread allowance of {allowance:.1f} s"
    reason = f"pace: {spent} would exceed the even-spread allowance of {allowance:.1f} s"
    single = min(limit_seconds, limit_seconds * (burst / WINDOW))
    wait = _pace_wait(charges, limit_seconds, now, estimate, burst)
    if estimate > single + _TOLERANCE_SECONDS:
        reason += f"; a job above {single:.1f} s never fits the pace"
    elif wait is None:
        reason += "; it fits only once pending jobs finish"
    else:
        reason += f"; next submission possible in about {_format_duration(wait)}"
    return False, reason


def _pace_charges(records: list[RecordView]) -> list[tuple[datetime, float, bool]]:
    """``(time, seconds, open)`` of each job the pace rule counts."""
    charges = []
    for record in records:
        if record.status.is_final:
            seconds, is_open = record.usage_seconds or 0.0, False
        elif is_reserving(record.status):
            seconds, is_open = record.estimated_qpu_seconds or 0.0, True
        else:
            continue
        if seconds > 0:
            charges.append((as_utc(record.submission_time or record.updated_at), seconds, is_open))
    return charges


def _aged(charges: list[tuple[datetime, float, bool]], now: datetime
          ) -> list[tuple[timedelta, float, bool]]:
    """``(age, seconds, open)`` of the jobs in the window at ``now``, youngest first.

    A final job ``WINDOW`` or more old has left; an open job never leaves, but counts at
    ``WINDOW`` at most. A job dated after ``now`` (clock skew) counts as just submitted.
    """
    aged = []
    for moment, seconds, is_open in charges:
        age = max(now - moment, timedelta(0))
        if age >= WINDOW:
            if not is_open:
                continue
            age = WINDOW
        aged.append((age, seconds, is_open))
    return sorted(aged, key=lambda a: a[0])


def _pace_check(charges: list[tuple[datetime, float, bool]], limit: float, now: datetime,
                estimate: float, burst: timedelta) -> tuple[bool, float, timedelta, float]:
    """``(allowed, S, d, A)`` at the tightest interval ``d`` (most over, else least slack)."""
    horizons = [(timedelta(0), 0.0), *((age, seconds) for age, seconds, _o in _aged(charges, now))]
    tightest: tuple[float, float, timedelta, float] | None = None
    total = 0.0
    for i, (age, seconds) in enumerate(horizons):
        total += seconds
        if i + 1 < len(horizons) and horizons[i + 1][0] == age:
            continue  # jobs of the same age: check once, with all of them
        allowance = min(limit, limit * ((age + burst) / WINDOW))
        slack = allowance - total - estimate
        if tightest is None or slack < tightest[0]:
            tightest = (slack, total, age, allowance)
    if tightest is None:  # horizons starts with the empty interval: never the case
        raise RuntimeError("pace check without any interval")
    slack, total, age, allowance = tightest
    return slack >= -_TOLERANCE_SECONDS, total, age, allowance


def _pace_wait(charges: list[tuple[datetime, float, bool]], limit: float, now: datetime,
               estimate: float, burst: timedelta) -> timedelta | None:
    """How long until the job fits the pace if nothing changes; ``None``: never.

    Waiting only helps (intervals slide past old jobs), so the answer is the first of the
    moments where some constraint turns true: an interval's allowance grows to its usage,
    or a final job leaves the window.
    """
    if limit <= 0:
        return None
    candidates = set()
    total = 0.0
    for age, seconds, is_open in _aged(charges, now):
        total += seconds
        if not is_open:
            candidates.add(WINDOW - age)
        candidates.add(WINDOW * ((total + estimate) / limit) - burst - age)
    for wait in sorted(c for c in candidates if c > timedelta(0)):
        if _pace_check(charges, limit, now + wait, estimate, burst)[0]:
            return wait
    return None


def _format_duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- how well the estimate model does ---------------------------------------------------------

@dataclass(frozen=True)
class ModelAccuracy:
    """The estimate model against recorded usage, over finished jobs that have both.

    Attributes:
        count: jobs compared.
        mean_ratio: mean of actual / estimate (``None`` when ``count`` is 0).
        median_ratio: median of actual / estimate.
        mean_abs_error_seconds: mean of |actual - estimate| in seconds.
        by_experiment: the same figures per ``experiment_type`` (empty at that level).
    """

    count: int = 0
    mean_ratio: float | None = None
    median_ratio: float | None = None
    mean_abs_error_seconds: float | None = None
    by_experiment: dict[str, ModelAccuracy] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the figures, ``by_experiment`` nested."""
        data: dict[str, Any] = {
            "count": self.count, "mean_ratio": self.mean_ratio,
            "median_ratio": self.median_ratio,
            "mean_abs_error_seconds": self.mean_abs_error_seconds,
        }
        if self.by_experiment:
            data["by_experiment"] = {k: v.to_dict() for k, v in self.by_experiment.items()}
        return data


def model_accuracy(records: Iterable[RecordView], *, service: str | None = None
                   ) -> ModelAccuracy:
    """How the QPU-time estimates compare with the usage recorded for the same jobs.

    Args:
        records: ledger records; only final ones with ``estimated_qpu_seconds`` and
            ``usage_seconds`` both above zero are compared.
        service: only records of this service (the local service reports the estimate as
            its usage, so mixing it in would flatter the model).
    """
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if service is not None and r.service != service:
            continue
        estimate, usage = r.estimated_qpu_seconds or 0.0, r.usage_seconds or 0.0
        if r.status.is_final and estimate > 0 and usage > 0:
            pairs.setdefault(r.experiment_type, []).append((estimate, usage))
    every = [p for group in pairs.values() for p in group]
    by_experiment = {name: _accuracy(group) for name, group in sorted(pairs.items())}
    overall = _accuracy(every)
    return ModelAccuracy(overall.count, overall.mean_ratio, overall.median_ratio,
                         overall.mean_abs_error_seconds, by_experiment)


def _accuracy(pairs: list[tuple[float, float]]) -> ModelAccuracy:
    if not pairs:
        return ModelAccuracy()
    ratios = [actual / estimate for estimate, actual in pairs]
    errors = [abs(actual - estimate) for estimate, actual in pairs]
    return ModelAccuracy(len(pairs), statistics.fmean(ratios), statistics.median(ratios),
                         statistics.fmean(errors))


@dataclass(frozen=True)
class BudgetGuard:
    """What ``qsubmit`` and ``qcollect`` check before a job spends QPU time.

    Attributes:
        limit_for: the window's limit in seconds for a key index (``None``: local).
        allow_over_budget: submit even when the estimate exceeds what remains.
        pace: also hold submissions to an even spread of the budget (``pace_allowance``).
    """

    limit_for: Callable[[int | None], float]
    allow_over_budget: bool = False
    pace: bool = False

    def refusal(self, records: Iterable[RecordView], service: str, key_index: int | None,
                estimate: float, now: datetime,
                service_used_seconds: float | None = None) -> tuple[str | None, bool]:
        """Why ``estimate`` more seconds may not be spent now, and whether that is only pace.

        Args:
            service_used_seconds: the service's usage figure for the key, if known (the
                larger of it and the ledger's is counted).

        Returns ``(None, False)`` when the spending is allowed.
        """
        records = list(records)
        limit = self.limit_for(key_index)
        state = budget_state(records, service, key_index, limit, now, service_used_seconds,
                             estimate_unknown=True)
        if estimate > state.remaining_seconds + _TOLERANCE_SECONDS and not self.allow_over_budget:
            source = (" (the service's figure)" if service_used_seconds is not None
                      and state.used_seconds > (state.ledger_used_seconds or 0.0) else "")
            return (f"{state.label}: these jobs need about {estimate:.1f} s of QPU time but only "
                    f"{max(state.remaining_seconds, 0.0):.1f} s of {limit:.0f} s remain in the "
                    f"28-day window (used {state.used_seconds:.1f} s{source}, reserved "
                    f"{state.reserved_seconds:.1f} s); nothing submitted "
                    "(--allow-over-budget overrides)", False)
        if self.pace:
            allowed, reason = pace_allowance(records, service, key_index, limit, now, estimate)
            if not allowed:
                return f"{state.label}: {reason}", True
        return None, False

    def admit_deferred(self, record: RecordView, records: Iterable[RecordView],
                       now: datetime, service_used_seconds: float | None = None) -> str | None:
        """Why a deferred job may not be submitted now, or ``None`` if it may.

        The other deferred jobs wait their turn behind it, so they do not count against it.
        """
        others = [r for r in records if r.status is not JobStatus.DEFERRED]
        reason, _ = self.refusal(others, record.service, record.api_key_index,
                                 record.estimated_qpu_seconds or 0.0, now, service_used_seconds)
        return reason

    def deferred_admission(self, usage_of: Callable[[str, int | None], float]
                           ) -> Callable[[RecordView, list[RecordView]], str | None]:
        """:meth:`admit_deferred` for a run that drains deferred queues: it counts the larger
        of the ledger's usage and the service's own figure, ``usage_of(service, key_index)``,
        asked once per key and run; a service that cannot say (a ``QcourierError``) leaves
        the ledger's figure."""
        from qcourier.errors import QcourierError
        from qcourier.ledger.status import utc_now

        service_used: dict[BudgetKey, float | None] = {}

        def admit(record: RecordView, records: list[RecordView]) -> str | None:
            key = (record.service, record.api_key_index)
            if key not in service_used:
                try:
                    service_used[key] = usage_of(*key)
                except QcourierError:
                    service_used[key] = None
            return self.admit_deferred(record, records, utc_now(), service_used[key])

        return admit


# -- the budget report -----------------------------------------------------------------------

def report_keys(records: Iterable[RecordView], ibm_key_indexes: Iterable[int],
                default_service: str) -> list[BudgetKey]:
    """The keys ``qcourier budget`` shows: those in the ledger and every configured IBM key,
    or else the default service's."""
    keys = set(budget_keys(records)) | {("ibm", index) for index in ibm_key_indexes}
    if not keys:
        keys.add(budget_key(default_service, None if default_service == "local" else 0))
    return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))


def budget_report(records: Sequence[RecordView], now: datetime, keys: Iterable[BudgetKey],
                  limit_for: Callable[[int | None], float],
                  usage_of: Callable[[str, int | None], Any] | None) -> dict[str, Any]:
    """What ``qcourier budget --json`` prints: each key's budget and, with ``usage_of``
    (``(service, key_index) -> ServiceUsage``, raising ``QcourierError`` when the service
    cannot say), the service's own figure beside the ledger's; the estimate model's record."""
    entries = []
    for service, key_index in keys:
        budget = budget_state(records, service, key_index, limit_for(key_index), now)
        entry = budget.to_dict()
        entry.update(jobs_usage_pending=budget.jobs_usage_pending,
                     usage_pending_seconds=budget.usage_pending_seconds)
        entry["service_usage"] = (_service_usage(budget, usage_of) if usage_of is not None
                                  else None)
        entries.append(entry)
    accuracy = {}
    for service in sorted({r.service for r in records}):
        figures = model_accuracy(records, service=service)
        if figures.count:
            accuracy[service] = figures.to_dict()
    return {"now": now.isoformat(), "window_days": WINDOW.days, "keys": entries,
            "model_accuracy": accuracy}


def _service_usage(budget: BudgetState, usage_of: Callable[[str, int | None], Any]
                   ) -> dict[str, Any]:
    from qcourier.errors import QcourierError

    try:
        usage = usage_of(budget.service, budget.key_index)
    except QcourierError as exc:
        return {"error": str(exc)}
    return {"usage_seconds": usage.usage_seconds, "limit_seconds": usage.limit_seconds,
            "difference_seconds": usage.usage_seconds - budget.used_seconds}
