"""The collect run's decisions (qcourier.collect.decide): pure functions of a record, what the
service said and the time they are given; and the run's injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from test_collect_incremental import local, submit_jobs
from test_ledger import make_record

from qcourier.collect import decide
from qcourier.collect.run import CollectOptions, collect_pending
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.ledger.summary import Entry
from qcourier.services.base import JobMetrics, JobState, JobStatusReport

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def report(state: JobState, message: str | None = None, code: int | None = None):
    return JobStatusReport("j" * 20, state, message, code)


def test_a_state_change_is_a_new_record_at_now_and_no_change_is_none():
    queued = make_record(status=JobStatus.QUEUED)
    running = decide.observed(queued, report(JobState.RUNNING), None, NOW)
    assert running.status is JobStatus.RUNNING and running.updated_at == NOW
    assert running.record_id == queued.record_id
    assert decide.observed(queued, report(JobState.QUEUED), None, NOW) is None
    assert decide.observed(queued, report(JobState.INITIALIZING), None, NOW) is None


def test_a_failed_job_keeps_the_message_its_class_and_its_metrics():
    queued = make_record(status=JobStatus.QUEUED)
    status = report(JobState.ERROR, "internal error", 1000)
    assert decide.needs_metrics(status) and not decide.needs_metrics(report(JobState.RUNNING))
    failed = decide.observed(queued, status, JobMetrics(usage_seconds=0.0), NOW)
    assert (failed.status, failed.error, failed.failure_class) == (
        JobStatus.FAILED, "internal error (reason code 1000)", "system")
    assert failed.completion_time == NOW and failed.usage_seconds == 0.0
    cancelled = decide.observed(queued, report(JobState.CANCELLED), JobMetrics(), NOW)
    assert (cancelled.status, cancelled.error, cancelled.failure_class) == (
        JobStatus.CANCELLED, "job ended CANCELLED", None)


def test_a_result_with_fewer_shots_than_asked_is_partial():
    record = make_record(status=JobStatus.RUNNING, shots=100)
    metrics = JobMetrics(finished=NOW - timedelta(minutes=1), usage_seconds=2.0)
    whole = decide.completed(record, [100, 100], metrics, result_path="jobs/x.json",
                             result_sha256="0" * 64, now=NOW)
    assert (whole.status, whole.error, whole.completion_time) == (
        JobStatus.COMPLETED, None, NOW - timedelta(minutes=1))
    part = decide.completed(record, [100, 60], metrics, result_path="jobs/x.json",
                            result_sha256="0" * 64, now=NOW)
    assert (part.status, part.failure_class) == (JobStatus.PARTIAL, "system")
    assert part.error == "partial result: circuit 1 has 60 of 100 shots"


def test_a_lost_job_is_recorded_once():
    lost = decide.not_found(make_record(status=JobStatus.QUEUED), "not found: gone", NOW)
    assert (lost.status, lost.error) == (JobStatus.ERROR, "not found: gone")
    assert decide.not_found(lost, "not found: gone", NOW) is None
    assert decide.not_found(lost, "not found: other", NOW) is not None


def test_usage_is_recorded_when_it_arrives_keeping_a_known_queue_time():
    record = make_record(status=JobStatus.COMPLETED, queue_seconds=5.0)
    assert decide.with_usage(record, JobMetrics(), NOW) is None
    later = decide.with_usage(record, JobMetrics(usage_seconds=3.0), NOW)
    assert (later.usage_seconds, later.queue_seconds) == (3.0, 5.0)


def test_retries_go_to_system_failures_and_partials_with_retries_left(tmp_path: Path):
    def entry(**changes):
        return Entry.of(make_record(**changes), tmp_path / "f.jsonl")

    system = entry(status=JobStatus.FAILED, failure_class="system")
    user = entry(status=JobStatus.FAILED, failure_class="user")
    partial = entry(status=JobStatus.PARTIAL)
    used_up = entry(status=JobStatus.PARTIAL, retry_count=3)
    retried = entry(status=JobStatus.PARTIAL)
    linked = entry(status=JobStatus.FAILED, failure_class="system")
    retry = entry(status=JobStatus.DEFERRED, retry_of=linked.summary.record_id)
    due = decide.retries_due([system, user, partial, used_up, retried, linked, retry],
                             {retried.summary.record_id}, max_retries=3)
    assert due == [system, partial]
    new = decide.retry_of(partial.record, "r" * 12, NOW)
    assert (new.status, new.retry_of, new.retry_count, new.job_id, new.updated_at) == (
        JobStatus.DEFERRED, partial.summary.record_id, 1, None, NOW)


def test_a_listing_starts_an_hour_before_the_oldest_submission_if_all_are_known():
    first = make_record(submission_time=NOW - timedelta(hours=5))
    second = make_record(submission_time=NOW)
    assert decide.listing_start([first, second]) == NOW - timedelta(hours=6)
    assert decide.listing_start([first, make_record()]) is None


def test_usage_is_asked_newest_first_in_the_window_and_in_batches(tmp_path: Path):
    def done(hours_ago: float):
        when = NOW - timedelta(hours=hours_ago)
        return Entry.of(make_record(status=JobStatus.COMPLETED, completion_time=when,
                                    updated_at=when), tmp_path / "f.jsonl")

    old, mid, new, outside = done(30), done(20), done(1), done(24 * 40)
    assert decide.usage_due([old, outside, new, mid], NOW, batch=2) == [new, mid]


def test_a_collect_run_writes_the_time_of_its_clock(invoke, monkeypatch, tmp_path: Path,
                                                     ledger: Ledger):
    """Every line and file a run writes carries its injected clock's time, not the machine's."""
    submit_jobs(invoke, monkeypatch, 1, 0)
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    report = collect_pending(local(tmp_path, 0), ledger, CollectOptions(clock=lambda: fixed))
    [outcome] = report.outcomes
    assert outcome.record.status is JobStatus.COMPLETED and outcome.record.updated_at == fixed
    assert report.collected_path.name == "collected_results_20300102_030405.json"
