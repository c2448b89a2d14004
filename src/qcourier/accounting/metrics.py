"""Prometheus metrics for node_exporter's textfile collector.

:func:`write_prometheus` writes the ledger's state in the Prometheus text exposition format
(``prometheus_client.generate_latest`` over a private registry), atomically: a temp file in
the same directory, then a rename, so the collector never reads a half-written file. Point
``node_exporter --collector.textfile.directory=DIR`` at the directory and name the file
``*.prom``.

Metrics (every time in seconds; a key's ``service`` is ``local`` or ``ibm`` and its ``key``
the API key's index, ``-`` for the local service):

``qcourier_jobs{status, experiment}`` (gauge)
    Jobs whose latest ledger line has this status, per experiment type. Every status is
    written for every experiment (0 when there is none), so a series does not vanish when
    its last job moves on.
``qcourier_qpu_seconds_limit{service, key}`` (gauge)
    The key's QPU budget per rolling 28-day window.
``qcourier_qpu_seconds_used{service, key}`` (gauge)
    QPU seconds recorded for final jobs that finished within the window.
``qcourier_qpu_seconds_reserved{service, key}`` (gauge)
    Estimated QPU seconds of jobs not yet final (pending, being submitted, deferred).
``qcourier_qpu_seconds_remaining{service, key}`` (gauge)
    ``limit - used - reserved``; negative when overspent. The same figures as
    ``qcourier budget`` (:func:`qcourier.accounting.budget.budget_state`).
``qcourier_last_successful_poll_timestamp_seconds`` (gauge)
    Unix time of the last poll that had no failure. When a run passes ``last_poll=None``
    (its poll failed, or it did not poll), the value already in the file is kept, so a
    failed poll does not erase it; with no earlier value the metric is left out (alert with
    ``absent()`` or on ``time() - ...``).
``qcourier_queue_seconds{service, backend, quantile}`` (summary)
    Time from submission to start of execution of the jobs that ran to the end
    (``completed`` and ``partial``) with a recorded queue time, over the whole ledger:
    quantiles 0.5 and 0.95 (linear interpolation between the closest ranks) plus
    ``qcourier_queue_seconds_count`` and ``qcourier_queue_seconds_sum``.

This module imports neither click nor qiskit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from qcourier.accounting.budget import BudgetKey, budget_key, budget_keys, budget_state
from qcourier.accounting.report import quantile
from qcourier.files import atomic_write_bytes
from qcourier.ledger.record import JobStatus, RecordView, as_utc

PREFIX = "qcourier_"
LAST_POLL_METRIC = "qcourier_last_successful_poll_timestamp_seconds"
QUEUE_QUANTILES = (0.5, 0.95)
#: Statuses of jobs that ran to the end, whose queue time the summary counts.
QUEUE_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL})
LOCAL_KEY_LABEL = "-"


def write_prometheus(path: Path, records: Iterable[RecordView],
                     limits: Callable[[int | None], float], now: datetime,
                     last_poll: datetime | None, *, experiments: Iterable[str] = (),
                     keys: Iterable[BudgetKey] = ()) -> None:
    """Write the ledger's metrics to ``path`` in the Prometheus text format, atomically.

    Args:
        path: the ``.prom`` file (its directory is created if missing).
        records: the latest state of every record (``Ledger.fold().records``).
        limits: a key index's QPU seconds per window (``Settings.budget_limit``).
        now: the end of the budget window (timezone-aware; naive is taken as UTC).
        last_poll: when the last poll without a failure ended; ``None`` keeps the value
            already in ``path``, if any.
        experiments: experiment types to report job counts for even with no jobs.
        keys: budget keys ``(service, key_index)`` to report even with no jobs (e.g. every
            configured API key).

    Raises:
        OSError: the file cannot be written.
        QcourierError: a limit setting is malformed (from ``limits``).
    """
    path = Path(path)
    records = list(records)
    if last_poll is None:
        last_poll_seconds = read_last_poll(path)
    else:
        last_poll_seconds = as_utc(last_poll).timestamp()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LedgerCollector(records, limits, as_utc(now), last_poll_seconds,
                                       list(experiments), list(keys)))
    atomic_write_bytes(path, generate_latest(registry))


def read_last_poll(path: Path) -> float | None:
    """The last-successful-poll timestamp in an existing metrics file, or ``None``.

    A missing, unreadable or malformed file counts as having none.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_POLL_METRIC:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None



def _key_label(key_index: int | None) -> str:
    return LOCAL_KEY_LABEL if key_index is None else str(key_index)


class _LedgerCollector:
    """A one-shot collector: the metric families of one set of records."""

    def __init__(self, records: list[RecordView], limits: Callable[[int | None], float],
                 now: datetime, last_poll_seconds: float | None, experiments: list[str],
                 keys: list[BudgetKey]) -> None:
        self.records = records
        self.limits = limits
        self.now = now
        self.last_poll_seconds = last_poll_seconds
        self.experiments = experiments
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        yield self._jobs()
        yield from self._budget()
        if self.last_poll_seconds is not None:
            last_poll = GaugeMetricFamily(
                LAST_POLL_METRIC, "Unix time of the last qcollect poll without a failure.")
            last_poll.add_metric([], self.last_poll_seconds)
            yield last_poll
        yield self._queue()

    def _jobs(self) -> Metric:
        counts: dict[tuple[str, str], int] = {}
        for record in self.records:
            label = (record.experiment_type, record.status.value)
            counts[label] = counts.get(label, 0) + 1
        names = sorted({*self.experiments, *(r.experiment_type for r in self.records)})
        family = GaugeMetricFamily(f"{PREFIX}jobs", "Jobs by latest status and experiment.",
                                   labels=["status", "experiment"])
        for experiment in names:
            for status in JobStatus:
                family.add_metric([status.value, experiment],
                                  counts.get((experiment, status.value), 0))
        return family

    def _budget(self) -> Iterator[Metric]:
        help_texts = {
            "limit": "QPU seconds the key may use per rolling 28-day window.",
            "used": "QPU seconds used by final jobs finished within the window.",
            "reserved": "Estimated QPU seconds of jobs not yet final.",
            "remaining": "QPU seconds left in the window: limit - used - reserved.",
        }
        families = {name: GaugeMetricFamily(f"{PREFIX}qpu_seconds_{name}", text,
                                            labels=["service", "key"])
                    for name, text in help_texts.items()}
        keys = {*budget_keys(self.records), *(budget_key(s, i) for s, i in self.keys)}
        for service, key_index in sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
            state = budget_state(self.records, service, key_index, self.limits(key_index),
                                 self.now)
            labels = [service, _key_label(key_index)]
            families["limit"].add_metric(labels, state.limit_seconds)
            families["used"].add_metric(labels, state.used_seconds)
            families["reserved"].add_metric(labels, state.reserved_seconds)
            families["remaining"].add_metric(labels, state.remaining_seconds)
        yield from families.values()

    def _queue(self) -> Metric:
        name = f"{PREFIX}queue_seconds"
        groups: dict[tuple[str, str], list[float]] = {}
        for record in self.records:
            if record.status in QUEUE_STATUSES and record.queue_seconds is not None:
                groups.setdefault((record.service, record.backend), []).append(
                    record.queue_seconds)
        family = SummaryMetricFamily(name, "Queue time of jobs that ran to the end.",
                                     labels=["service", "backend"])
        for (service, backend), values in sorted(groups.items()):
            labels = {"service": service, "backend": backend}
            for q in QUEUE_QUANTILES:
                family.samples.append(Sample(name, {**labels, "quantile": str(q)},
                                             quantile(values, q)))
            family.add_metric([service, backend], len(values), sum(values))
        return family
