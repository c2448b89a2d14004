"""The budget's accounting (used / reserved / remaining), the pace rule, the model's record,
per-key limits, and ``qcourier budget``; every ledger here is built by hand with known answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qcourier.accounting.budget import (
    DEFAULT_LIMIT_SECONDS,
    WINDOW,
    BudgetState,
    budget_keys,
    budget_state,
    model_accuracy,
    pace_allowance,
    usage_pending,
)
from qcourier.cli import budget as budget_cli
from qcourier.cli import main as main_cli
from qcourier.cli._common import AppState
from qcourier.config import Settings
from qcourier.errors import QcourierError
from qcourier.ledger import store as L
from qcourier.ledger.record import JobStatus, LedgerRecord, utc_now
from qcourier.ledger.store import Ledger

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def make_record(**overrides) -> LedgerRecord:
    data = dict(service="ibm", api_key_index=0, backend="ibm_fez", experiment_type="bell",
                shots=100, num_circuits=1, circuit_hash="a" * 64, isa_circuit_hash="b" * 64,
                transpiled_depth=5, transpiled_gates={"cz": 1}, updated_at=NOW - 30 * DAY)
    data.update(overrides)
    return LedgerRecord(**data)


def done(ago: timedelta, usage: float | None, estimate: float | None = None,
         status: JobStatus = JobStatus.COMPLETED, ran: timedelta = HOUR, **kw) -> LedgerRecord:
    """A finished job that completed ``ago`` before NOW, submitted ``ran`` before that."""
    return make_record(status=status, submission_time=NOW - ago - ran, completion_time=NOW - ago,
                       usage_seconds=usage, estimated_qpu_seconds=estimate, **kw)


def pending(ago: timedelta, estimate: float | None, status: JobStatus = JobStatus.QUEUED,
            **kw) -> LedgerRecord:
    return make_record(status=status, submission_time=NOW - ago, estimated_qpu_seconds=estimate,
                       **kw)


# -- used / reserved / remaining ----------------------------------------------------------------

def test_empty_ledger_has_the_whole_budget():
    state = budget_state([], "ibm", 0, DEFAULT_LIMIT_SECONDS, NOW)
    assert state == BudgetState("ibm", 0, 600.0, 0.0, 0.0, NOW - WINDOW, NOW, 0, 0)
    assert state.remaining_seconds == 600.0


def test_used_counts_jobs_that_finished_inside_the_window():
    records = [done(27 * DAY, 10.0),  # inside
               done(29 * DAY, 100.0),  # left the window
               done(28 * DAY, 1000.0),  # exactly on the edge: the window is (now - 28 d, now]
               done(timedelta(0), 1.5),  # finished exactly now: inside
               done(-HOUR, 7.0)]  # "finishes" after now: not in (.., now]
    state = budget_state(records, "ibm", 0, 600, NOW)
    assert state.used_seconds == pytest.approx(11.5)
    assert state.jobs_used == 2
    assert state.remaining_seconds == pytest.approx(588.5)


def test_failed_and_cancelled_jobs_count_their_recorded_usage():
    records = [done(DAY, 3.0, status=JobStatus.FAILED),
               done(DAY, 2.0, status=JobStatus.CANCELLED),
               done(DAY, 1.0, status=JobStatus.PARTIAL),
               done(DAY, None, status=JobStatus.FAILED),  # no usage recorded: 0
               make_record(status=JobStatus.SUBMIT_FAILED, updated_at=NOW - DAY)]
    state = budget_state(records, "ibm", 0, 600, NOW)
    assert state.used_seconds == pytest.approx(6.0)
    assert state.jobs_used == 3
    assert state.reserved_seconds == 0


def test_completion_time_falls_back_to_the_last_ledger_line():
    inside = make_record(status=JobStatus.COMPLETED, usage_seconds=4.0, updated_at=NOW - DAY)
    outside = make_record(status=JobStatus.COMPLETED, usage_seconds=8.0, updated_at=NOW - 29 * DAY)
    assert budget_state([inside, outside], "ibm", 0, 600, NOW).used_seconds == 4.0


def test_reserved_counts_pending_submitting_and_deferred_jobs_but_not_error():
    records = [pending(HOUR, 5.0, JobStatus.SUBMITTED),
               pending(HOUR, 6.0, JobStatus.QUEUED),
               pending(HOUR, 7.0, JobStatus.RUNNING),
               pending(40 * DAY, 8.0, JobStatus.QUEUED),  # still open: reserved whenever submitted
               make_record(status=JobStatus.SUBMITTING, estimated_qpu_seconds=9.0),
               pending(HOUR, None, JobStatus.QUEUED),  # no estimate: 0
               pending(HOUR, 100.0, JobStatus.DEFERRED),
               pending(HOUR, 100.0, JobStatus.ERROR)]
    state = budget_state(records + [done(DAY, 20.0)], "ibm", 0, 600, NOW)
    assert state.reserved_seconds == pytest.approx(135.0)
    assert state.jobs_reserved == 7
    assert state.used_seconds == 20.0
    assert state.remaining_seconds == pytest.approx(600 - 20 - 135)


def test_keys_are_separate_budgets_and_local_is_its_own():
    records = [done(DAY, 1.0, api_key_index=0), done(DAY, 2.0, api_key_index=1),
               done(DAY, 4.0, service="local", api_key_index=None),
               pending(HOUR, 8.0, api_key_index=1)]
    assert budget_state(records, "ibm", 0, 600, NOW).used_seconds == 1.0
    key1 = budget_state(records, "ibm", 1, 50, NOW)
    assert (key1.used_seconds, key1.reserved_seconds, key1.remaining_seconds) == (2.0, 8.0, 40.0)
    local = budget_state(records, "local", None, 600, NOW)
    assert (local.used_seconds, local.reserved_seconds) == (4.0, 0.0)
    assert budget_state(records, "local", 3, 600, NOW).key_index is None  # local has no keys
    assert budget_state(records, "ibm", 2, 600, NOW).used_seconds == 0
    assert budget_keys(records) == [("ibm", 0), ("ibm", 1), ("local", None)]


def test_naive_times_are_taken_as_utc():
    record = done(DAY, 3.0)
    state = budget_state([record], "ibm", 0, 600, NOW.replace(tzinfo=None))
    assert state.used_seconds == 3.0 and state.now == NOW


# -- the pace rule ------------------------------------------------------------------------------

def test_pace_allows_a_small_job_on_an_empty_ledger():
    allowed, reason = pace_allowance([], "ibm", 0, 600, NOW, 5.0)
    assert allowed, reason
    assert reason == "pace: 5.0 s is within the even-spread allowance of 21.4 s"  # 600 / 28


def test_pace_refuses_a_job_bigger_than_one_day_of_budget():
    allowed, reason = pace_allowance([], "ibm", 0, 600, NOW, 30.0)
    assert not allowed
    assert reason == ("pace: 30.0 s would exceed the even-spread allowance of 21.4 s; "
                      "a job above 21.4 s never fits the pace")
    assert pace_allowance([], "ibm", 0, 600, NOW, 30.0, burst=2 * DAY)[0]  # 42.9 s allowed


def test_pace_refuses_right_after_heavy_usage_and_allows_once_time_passes():
    # 20 s used by a job submitted an hour ago: the last hour's allowance is 600 * 25/672.
    records = [done(HOUR / 2, 20.0, ran=HOUR / 2)]
    allowed, reason = pace_allowance(records, "ibm", 0, 600, NOW, 5.0)
    assert not allowed
    # 25 s fit once 600 * (d + 1 day) / 28 days >= 25, i.e. at d = 4 h: 3 h from now.
    assert reason == ("pace: 20.0 s used or reserved in the last 1.0 h + 5.0 s would exceed the "
                      "even-spread allowance of 22.3 s; next submission possible in about 3.0 h")
    assert not pace_allowance(records, "ibm", 0, 600, NOW + 2 * HOUR, 5.0)[0]
    allowed, reason = pace_allowance(records, "ibm", 0, 600, NOW + 3 * HOUR, 5.0)
    assert allowed, reason
    assert reason == ("pace: 20.0 s used or reserved in the last 4.0 h + 5.0 s is within the "
                      "even-spread allowance of 25.0 s")
    # Another key, and the local service, are not held back by this key's usage.
    assert pace_allowance(records, "ibm", 1, 600, NOW, 5.0)[0]
    assert pace_allowance(records, "local", None, 600, NOW, 5.0)[0]


def test_pace_counts_reservations_of_pending_jobs():
    records = [pending(HOUR, 20.0)]
    assert not pace_allowance(records, "ibm", 0, 600, NOW, 5.0)[0]
    # Deferred jobs are committed to: they count as well.
    assert not pace_allowance([pending(HOUR, 20.0, JobStatus.DEFERRED)], "ibm", 0, 600, NOW, 5.0)[0]


def test_pace_holds_the_whole_window_to_the_limit():
    # 590 s spent evenly over the last 27 days: every shorter interval is within its allowance,
    # but the window as a whole has only 10 s left.
    records = [done(timedelta(0), 590 / 27, ran=d * DAY) for d in range(1, 28)]
    assert pace_allowance(records, "ibm", 0, 600, NOW, 9.0)[0]
    allowed, reason = pace_allowance(records, "ibm", 0, 600, NOW, 11.0)
    assert not allowed
    assert ("in the last 27.0 days + 11.0 s would exceed the even-spread allowance of 600.0 s"
            in reason)
    # The oldest job (27 days old) leaves the window in a day.
    assert reason.endswith("next submission possible in about 24.0 h")
    assert pace_allowance(records, "ibm", 0, 600, NOW + DAY, 11.0)[0]


def test_pace_waits_for_pending_jobs_when_time_alone_cannot_help():
    records = [pending(40 * DAY, 595.0)]  # an old job still holds a reservation of 595 s
    allowed, reason = pace_allowance(records, "ibm", 0, 600, NOW, 10.0)
    assert not allowed
    assert reason.endswith("it fits only once pending jobs finish")


def test_pace_hourly_heartbeat_runs_the_whole_window():
    """A heartbeat of 1.2 s an hour (806 s per 28 days) is held to about 600 s per window."""
    records: list[LedgerRecord] = []
    refused = 0
    for hour in range(28 * 24 * 2):
        now = NOW + hour * HOUR
        if pace_allowance(records, "ibm", 0, 600, now, 1.2)[0]:
            records.append(make_record(status=JobStatus.COMPLETED, submission_time=now,
                                       completion_time=now + timedelta(minutes=5),
                                       usage_seconds=1.2, estimated_qpu_seconds=1.2))
        else:
            refused += 1
        state = budget_state(records, "ibm", 0, 600, now)
        assert state.used_seconds <= 600 + 1e-9
    assert refused > 0
    late = budget_state(records, "ibm", 0, 600, NOW + 28 * 24 * 2 * HOUR)
    assert late.used_seconds > 550  # the budget is used, not starved


# -- the estimate model's record ---------------------------------------------------------------

def test_model_accuracy_over_finished_jobs_with_both_figures():
    records = [done(DAY, 2.0, 1.0),  # ratio 2, error 1
               done(DAY, 3.0, 3.0),  # ratio 1, error 0
               done(DAY, 2.0, 4.0, experiment_type="ghz"),  # ratio 0.5, error 2
               done(DAY, 0.0, 4.0),  # no usage: skipped
               done(DAY, 5.0, None),  # no estimate: skipped
               pending(HOUR, 5.0, usage_seconds=5.0),  # not finished: skipped
               done(DAY, 9.0, 1.0, service="local", api_key_index=None)]  # ratio 9, error 8
    ibm = model_accuracy(records, service="ibm")
    assert ibm.count == 3
    assert ibm.mean_ratio == pytest.approx(3.5 / 3)
    assert ibm.median_ratio == pytest.approx(1.0)
    assert ibm.mean_abs_error_seconds == pytest.approx(1.0)
    assert set(ibm.by_experiment) == {"bell", "ghz"}
    bell = ibm.by_experiment["bell"]
    assert (bell.count, bell.mean_ratio, bell.median_ratio, bell.mean_abs_error_seconds) == (
        2, 1.5, 1.5, 0.5)
    every = model_accuracy(records)
    assert every.count == 4 and every.median_ratio == pytest.approx(1.5)
    empty = model_accuracy([])
    assert (empty.count, empty.mean_ratio, empty.by_experiment) == (0, None, {})
    assert ibm.to_dict()["by_experiment"]["ghz"] == {
        "count": 1, "mean_ratio": 0.5, "median_ratio": 0.5, "mean_abs_error_seconds": 2.0}


# -- per-key limits -----------------------------------------------------------------------------

def test_budget_limit_default_global_and_per_key(monkeypatch, tmp_path: Path):
    for suffix in ("", "_0", "_1", "_2", "_3"):
        monkeypatch.delenv(f"QCOURIER_BUDGET_SECONDS{suffix}", raising=False)
    assert Settings().budget_limit(0) == 600.0
    assert Settings().budget_limit(None) == 600.0
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS", "300")
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS_2", "120.5")
    settings = Settings()
    assert (settings.budget_limit(None), settings.budget_limit(0), settings.budget_limit(1),
            settings.budget_limit(2)) == (300.0, 300.0, 300.0, 120.5)
    # .env is read too; the environment wins over it.
    (tmp_path / ".env").write_text("QCOURIER_BUDGET_SECONDS_0=60\nQCOURIER_BUDGET_SECONDS_2=1\n")
    assert Settings().budget_limit(0) == 60.0 and Settings().budget_limit(2) == 120.5
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS_3", "ten")
    with pytest.raises(QcourierError, match=r"^bad setting QCOURIER_BUDGET_SECONDS_3: 'ten' is"):
        Settings().budget_limit(3)


# -- qcourier budget ---------------------------------------------------------------------------

def write_ledger(tmp_path: Path, records: list[LedgerRecord]) -> None:
    ledger = Ledger(tmp_path / "ledger")
    L.append(ledger.new_file(), records)


def recent(minutes: float, **kw) -> LedgerRecord:
    """A record dated relative to the real clock (the command reads the real now)."""
    when = utc_now() - timedelta(minutes=minutes)
    return make_record(submission_time=when, updated_at=when, completion_time=when, **kw)


def test_budget_json_without_service(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS_1", "100")
    write_ledger(tmp_path, [
        recent(60, status=JobStatus.COMPLETED, usage_seconds=12.0, estimated_qpu_seconds=10.0),
        recent(30, status=JobStatus.QUEUED, estimated_qpu_seconds=5.0, api_key_index=1),
        recent(60 * 24 * 29, status=JobStatus.COMPLETED, usage_seconds=50.0, api_key_index=1),
        recent(10, status=JobStatus.COMPLETED, usage_seconds=3.0, estimated_qpu_seconds=3.0,
               service="local", api_key_index=None),
    ])
    result = invoke(budget_cli.main, ["--json", "--no-service"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["window_days"] == 28
    keys = {(k["service"], k["key_index"]): k for k in report["keys"]}
    assert list(keys) == [("ibm", 0), ("ibm", 1), ("local", None)]
    k0, k1, local = keys[("ibm", 0)], keys[("ibm", 1)], keys[("local", None)]
    assert (k0["limit_seconds"], k0["used_seconds"], k0["reserved_seconds"],
            k0["remaining_seconds"], k0["jobs_used"], k0["jobs_reserved"]) == (
        600.0, 12.0, 0.0, 588.0, 1, 0)
    assert (k1["limit_seconds"], k1["used_seconds"], k1["reserved_seconds"],
            k1["remaining_seconds"]) == (100.0, 0.0, 5.0, 95.0)
    assert local["used_seconds"] == 3.0 and local["service_usage"] is None
    assert report["model_accuracy"]["ibm"]["count"] == 1
    assert report["model_accuracy"]["ibm"]["mean_ratio"] == pytest.approx(1.2)
    assert report["model_accuracy"]["ibm"]["by_experiment"]["bell"]["mean_abs_error_seconds"] == 2.0
    assert report["model_accuracy"]["local"]["median_ratio"] == 1.0


def test_budget_table_without_service(invoke, tmp_path: Path):
    write_ledger(tmp_path, [recent(60, status=JobStatus.COMPLETED, usage_seconds=12.0,
                                   estimated_qpu_seconds=10.0)])
    result = invoke(main_cli.main, ["budget", "--no-service"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["service", "key", "limit", "s", "used", "s", "reserved", "s",
                                "remaining", "s", "jobs", "done", "jobs", "open"]
    assert lines[1].split() == ["ibm", "0", "600.0", "12.0", "0.0", "588.0", "1", "0"]
    assert lines[2].startswith("Window: ")
    assert lines[3] == "Estimate model (actual / estimate, over finished jobs):"
    assert lines[5].split() == ["ibm", "all", "1", "1.200", "1.200", "2.00"]
    assert lines[6].split() == ["ibm", "bell", "1", "1.200", "1.200", "2.00"]


def test_budget_shows_the_service_usage_and_the_difference(invoke, tmp_path: Path, service):
    from qcourier.cli import collect, submit

    assert invoke(submit.main, ["--experiment", "bell", "--shots", "100"],
                  AppState(service=service)).exit_code == 0
    assert invoke(collect.main, [], AppState(service=service)).exit_code == 0
    # A job the service never saw: the ledger says more than the service.
    write_ledger(tmp_path, [recent(5, status=JobStatus.COMPLETED, usage_seconds=1.5,
                                   service="local", api_key_index=None)])
    result = invoke(budget_cli.main, ["--json"], AppState(service=service))
    assert result.exit_code == 0, result.output
    [local] = json.loads(result.stdout)["keys"]
    reported = service.usage().usage_seconds
    assert reported > 0
    assert local["used_seconds"] == pytest.approx(reported + 1.5)
    assert local["service_usage"]["usage_seconds"] == pytest.approx(reported)
    assert local["service_usage"]["difference_seconds"] == pytest.approx(-1.5)

    result = invoke(budget_cli.main, [], AppState(service=service))
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()[:2]
    assert "service used s" in header and "difference s" in header
    assert row.split()[-2:] == [f"{reported:.1f}", "-1.5"]


def test_budget_reports_an_unreachable_service_per_key(invoke, tmp_path: Path, service):
    write_ledger(tmp_path, [recent(60, status=JobStatus.COMPLETED, usage_seconds=2.0)])
    result = invoke(budget_cli.main, ["--json"], AppState(service=service))  # no IBM service
    assert result.exit_code == 0, result.output
    [key] = json.loads(result.stdout)["keys"]
    unreachable = "jobs of the ibm service cannot be reached: no ibm service is configured here"
    assert key["service_usage"] == {"error": unreachable}
    result = invoke(budget_cli.main, [], AppState(service=service))
    assert result.exit_code == 0, result.output
    assert f"unavailable: {unreachable}" in result.stdout


def test_budget_on_an_empty_ledger_shows_the_default_service(invoke):
    result = invoke(budget_cli.main, ["--no-service"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["local", "-", "600.0", "0.0", "0.0", "600.0", "0", "0"]
    assert lines[-1] == ("Estimate model: no finished job has both an estimate and a recorded "
                         "usage yet.")


def test_budget_help_has_examples(invoke):
    result = invoke(main_cli.main, ["budget", "--help"])
    assert result.exit_code == 0
    assert "qcourier budget --no-service" in result.stdout and "--json" in result.stdout


# -- issue 17: usage not known yet, and the service's own figure ---------------------------------

def test_a_final_job_without_usage_counts_its_estimate_until_the_real_figure_is_known():
    records = [done(DAY, None, estimate=7.0), done(DAY, 3.0, estimate=9.0),
               done(DAY, None, estimate=5.0, status=JobStatus.SUBMIT_FAILED)]  # never a job
    records.append(done(30 * DAY, None, estimate=4.0))  # left the window: counts nothing
    state = budget_state(records, "ibm", 0, 600.0, NOW, estimate_unknown=True)
    assert state.used_seconds == pytest.approx(10.0) and state.jobs_used == 2
    reported = budget_state(records, "ibm", 0, 600.0, NOW)
    assert reported.used_seconds == 3.0  # what was reported
    for figures in (state, reported):  # either way, how much of it is only an estimate
        assert (figures.jobs_usage_pending, figures.usage_pending_seconds) == (1, 7.0)
    assert [usage_pending(r) for r in records] == [True, False, False, True]


def test_the_service_figure_counts_when_it_is_larger():
    records = [done(DAY, 3.0), pending(HOUR, 2.0)]
    larger = budget_state(records, "ibm", 0, 600.0, NOW, service_used_seconds=500.0)
    assert larger.used_seconds == 500.0 and larger.ledger_used_seconds == 3.0
    assert larger.remaining_seconds == pytest.approx(600.0 - 500.0 - 2.0)
    smaller = budget_state(records, "ibm", 0, 600.0, NOW, service_used_seconds=1.0)
    assert smaller.used_seconds == 3.0
