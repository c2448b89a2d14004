"""qcollect polls many jobs at once: states in bulk, the rest on a bounded pool of workers,
behind a rate gate, with every ledger line whole."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from clocks import FakeTime, RecordingLimiter

import qcourier.collect.run
from qcourier.collect.run import CollectOptions, collect_pending
from qcourier.experiments import get_experiment
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.services.base import ServiceError
from qcourier.services.local import LocalService, LocalServiceConfig
from qcourier.submit.dispatch import QueuePolicy
from qcourier.submit.plan import SubmitOptions, plan_submission
from qcourier.submit.run import LedgerTarget, submit_plan

JOBS = 24


class CountingService(LocalService):
    """The local service, counting its calls and how many run at once."""

    def __init__(self, config: LocalServiceConfig, bulk: bool = True, listing_fails: bool = False):
        super().__init__(config)
        self.bulk = bulk
        self.listing_fails = listing_fails
        self.calls: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def _counted(self, name, func, *args):
        with self._lock:
            self.calls[name] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return func(*args)
        finally:
            with self._lock:
                self.in_flight -= 1

    def job_status(self, job_id):
        return self._counted("job_status", super().job_status, job_id)

    def job_result(self, job_id):
        return self._counted("job_result", super().job_result, job_id)

    def job_metrics(self, job_id):
        return self._counted("job_metrics", super().job_metrics, job_id)

    def job_states(self, job_ids, created_after=None):
        if self.listing_fails:
            raise ServiceError("listing unavailable")
        if not self.bulk:
            return {}
        return self._counted("job_states", super().job_states, job_ids, created_after)


def submit_many(tmp_path: Path, ledger: Ledger, n: int, queue_seconds: float) -> None:
    service = LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=queue_seconds,
                                              run_seconds=0, seed=3))
    experiment = get_experiment("bell")
    options = SubmitOptions(repeat=n, policy=QueuePolicy(max_pending=n, per_minute=n), force=True)
    plan = plan_submission(service, [(experiment, experiment.Params(shots=20))], options)
    target = LedgerTarget(ledger)
    outcome = submit_plan(target, plan, existing=[], options=options)
    assert len(outcome.records) == n and all(r.job_id for r in outcome.records)


def service_for(tmp_path: Path, queue_seconds: float, **kwargs) -> CountingService:
    config_kwargs = {k: kwargs.pop(k) for k in ("latency_seconds", "rate_limit_per_second")
                     if k in kwargs}
    return CountingService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=queue_seconds,
                                              run_seconds=0, seed=3, **config_kwargs), **kwargs)


def test_jobs_still_queued_cost_one_listing_not_a_call_each(tmp_path: Path, ledger: Ledger):
    submit_many(tmp_path, ledger, JOBS, queue_seconds=3600)
    service = service_for(tmp_path, 3600, latency_seconds=0.01)
    report = collect_pending(service, ledger, CollectOptions(workers=8))
    assert service.calls == {"job_states": 1}
    assert [o.record.status for o in report.outcomes] == [JobStatus.QUEUED] * JOBS
    assert report.exit_code == 0


def test_finished_jobs_are_collected_on_a_bounded_pool(tmp_path: Path, ledger: Ledger):
    submit_many(tmp_path, ledger, JOBS, queue_seconds=0)
    service = service_for(tmp_path, 0, latency_seconds=0.02)
    report = collect_pending(service, ledger, CollectOptions(workers=4))
    # The listing said DONE: no status call per job, only its result and metrics.
    assert service.calls == {"job_states": 1, "job_result": JOBS, "job_metrics": JOBS}
    assert 1 < service.most_in_flight <= 4
    assert report.completed == JOBS and report.exit_code == 0
    # Reported in ledger order, whatever order the workers finished in.
    fold = ledger.fold()
    assert [o.record.record_id for o in report.outcomes] == list(fold.entries)
    assert_whole_ledger(ledger, JOBS)


def assert_whole_ledger(ledger: Ledger, jobs: int) -> None:
    lines = [line for path in ledger.files() for line in path.read_text().splitlines()]
    records = [json.loads(line) for line in lines]  # every line whole JSON
    completed = Counter(r["record_id"] for r in records if r["status"] == "completed")
    assert len(completed) == jobs and set(completed.values()) == {1}
    for record in ledger.fold().records:
        assert record.status is JobStatus.COMPLETED
        assert (ledger.directory / record.result_path).is_file()


@pytest.mark.parametrize("bulk, listing_fails", [(False, False), (True, True)])
def test_without_a_listing_each_job_is_asked_on_its_own(tmp_path: Path, ledger: Ledger, bulk,
                                                         listing_fails):
    submit_many(tmp_path, ledger, 6, queue_seconds=0)
    service = service_for(tmp_path, 0, bulk=bulk, listing_fails=listing_fails)
    report = collect_pending(service, ledger, CollectOptions(workers=3))
    assert service.calls["job_status"] == 6 and service.calls["job_result"] == 6
    assert report.completed == 6 and report.exit_code == 0


def test_one_worker_polls_in_order_with_the_same_result(tmp_path: Path, ledger: Ledger):
    submit_many(tmp_path, ledger, 5, queue_seconds=0)
    service = service_for(tmp_path, 0)
    report = collect_pending(service, ledger, CollectOptions(workers=1))
    assert service.most_in_flight == 1
    assert report.completed == 5
    assert_whole_ledger(ledger, 5)


def test_a_rate_limited_service_is_waited_out_not_overrun(tmp_path: Path, ledger: Ledger,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Eight workers against a service allowing 15 calls a second: 429s close the gate for
    all, every job is still collected, and the service never served more than its limit.

    On one fake time line: the service's limiter and the collector's rate gate share it, and
    it moves only while the gate holds a caller, so the window is checked exactly on the
    times the limiter admitted the calls at."""
    submit_many(tmp_path, ledger, JOBS, queue_seconds=0)
    service = service_for(tmp_path, 0, latency_seconds=0.005, rate_limit_per_second=15)
    fake = FakeTime()
    service._limiter = limiter = RecordingLimiter(15, clock=fake.clock)
    monkeypatch.setattr(qcourier.collect.run, "RateGate", fake.gate)
    refused = []
    real = service._network_call

    def network_call():
        try:
            real()  # raises 429 when over the limit; only calls that pass are served
        except ServiceError as exc:
            refused.append(exc.http_status)
            raise

    service._network_call = network_call
    report = collect_pending(service, ledger, CollectOptions(workers=8))
    assert report.completed == JOBS and report.exit_code == 0
    assert refused and set(refused) == {429}  # the limit was met, and backed off from
    assert fake.sleeps  # waited out at the collector's gate
    # No sliding window of one second holds more than the limit (and one reached it).
    assert limiter.most_in_a_window() == 15
    assert_whole_ledger(ledger, JOBS)
