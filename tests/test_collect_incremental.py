"""A collect run touches only what is not final (issue 16): it folds, validates and iterates
none of the final records beside its pending jobs, and still counts, checks and guards as a
full fold would."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from test_ledger import make_record
from test_ledger_index import validations
from test_ledger_working import OLD, Spy, finished, full_fold

from qcourier.accounting.budget import BudgetGuard
from qcourier.cli import submit
from qcourier.collect.run import CollectOptions, collect_pending
from qcourier.ledger import store as L
from qcourier.ledger.results import ResultCheck
from qcourier.ledger.status import JobStatus, utc_now
from qcourier.ledger.store import Ledger
from qcourier.services.local import LocalService, LocalServiceConfig
from qcourier.submit.dispatch import QueuePolicy

BODY = b'{"counts": []}'


def old_study(ledger: Ledger, files: int = 3, per_file: int = 40) -> list[Path]:
    """Completed records that finished two months ago, each with its result file."""
    ledger.results_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        path = ledger.new_file(OLD - timedelta(days=files - f))
        records = []
        for i in range(per_file):
            job_id = f"f{f}{i:018d}"
            (ledger.results_dir / f"{job_id}.json").write_bytes(BODY)
            records.append(finished(make_record(job_id=job_id),
                                    result_sha256=hashlib.sha256(BODY).hexdigest()))
        L.append(path, records)
        paths.append(path)
    return paths


def local(tmp_path: Path, queue_seconds: float) -> LocalService:
    return LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=queue_seconds,
                                           run_seconds=0, seed=7))


def submit_jobs(invoke, monkeypatch, count: int, queue_seconds: float) -> None:
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", str(queue_seconds))
    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--repeat", str(count),
                                  "--force", "--max-pending", str(count)])
    assert result.exit_code == 0, result.output


def test_a_collect_run_beside_final_records_reads_none_of_them(
        invoke, tmp_path: Path, ledger: Ledger, monkeypatch):
    paths = old_study(ledger)
    submit_jobs(invoke, monkeypatch, 2, 3600)
    svc = local(tmp_path, 3600)
    collect_pending(svc, ledger)  # as an earlier run leaves it: jobs queued, digests made
    collect_pending(svc, ledger, CollectOptions(verify_batch=0))
    spy = Spy(monkeypatch)
    folds = []
    real_fold = Ledger.fold
    monkeypatch.setattr(Ledger, "fold", lambda self, p=None: folds.append(p) or real_fold(self, p))
    validated = validations(monkeypatch)
    report = collect_pending(svc, ledger, CollectOptions(verify_batch=0))
    assert spy.folded == [] and folds == []
    assert validated[0] <= 4  # the two pending records' lines, read to poll them
    assert (report.already_final, report.completed, report.pending, report.total) == \
        (120, 120, 2, 122)
    assert all(not o.changed for o in report.outcomes) and len(report.outcomes) == 2
    # A run re-hashes its batch of results: only the ledger file that holds it is folded.
    (ledger.directory / "cache" / "result-check.json").unlink()  # from the first record
    for run, expected in enumerate([paths[0], paths[0], paths[0], paths[0], paths[1]]):
        spy.folded.clear()
        collect_pending(svc, ledger, CollectOptions(verify_batch=10))
        assert spy.folded == [expected.name], run
    assert folds == []


def test_missing_result_files_are_found_without_listing_jobs_on_every_run(
        invoke, tmp_path: Path, ledger: Ledger, monkeypatch):
    listings = []
    real = ResultCheck._list_jobs
    monkeypatch.setattr(ResultCheck, "_list_jobs", lambda self: listings.append(1) or real(self))
    submit_jobs(invoke, monkeypatch, 3, 0)
    svc = local(tmp_path, 0)
    first = collect_pending(svc, ledger)
    assert [o.record.status for o in first.outcomes] == [JobStatus.COMPLETED] * 3
    assert len(listings) == 1  # nothing known of jobs/ yet
    again = collect_pending(svc, ledger)
    assert len(listings) == 1 and again.completed == 3 and not again.outcomes
    # Its own result files did not make the next run list jobs/; a file removed does.
    records = [e.record for e in full_fold(ledger).entries.values()]
    (ledger.directory / records[1].result_path).unlink()
    redone = collect_pending(svc, ledger)
    assert len(listings) == 2
    assert [o.message for o in redone.outcomes] == [
        "result downloaded again: its result file is missing"]
    assert not collect_pending(svc, ledger).outcomes and len(listings) == 2
    # A file removed by someone else while a run writes results: that run cannot vouch for
    # jobs/, and the next one lists it.
    submit_jobs(invoke, monkeypatch, 1, 0)
    real_result = svc.job_result

    def result_removing_another(job_id):
        (ledger.directory / records[2].result_path).unlink(missing_ok=True)
        return real_result(job_id)

    monkeypatch.setattr(svc, "job_result", result_removing_another)
    collect_pending(svc, ledger)
    monkeypatch.setattr(svc, "job_result", real_result)
    listed = len(listings)
    found = collect_pending(svc, ledger)
    assert len(listings) == listed + 1
    assert [(o.record.job_id, o.message) for o in found.outcomes] == [
        (records[2].job_id, "result downloaded again: its result file is missing")]
    # A ledger file that changed names a result file that is not there (jobs/ unchanged):
    # the changed file's names are looked up on their own.
    path = next(iter(ledger.files()))
    L.append(path, records[0].evolve(result_path="jobs/elsewhere.json"))
    listed = len(listings)
    found = collect_pending(svc, ledger)
    assert len(listings) == listed
    assert [(o.record.job_id, o.message) for o in found.outcomes] == [
        (records[0].job_id, "result downloaded again: its result file is missing")]


@pytest.mark.parametrize("pace", [False, True])
def test_the_drain_guard_counts_as_over_a_full_fold(tmp_path: Path, ledger: Ledger, pace):
    now = utc_now()
    old = ledger.new_file(OLD)
    L.append(old, [finished(make_record(job_id=f"o{i:019d}"), usage_seconds=100.0,
                            result_path=None) for i in range(20)])  # out of the window: they no longer count
    recent = ledger.new_file(now - timedelta(days=2))
    L.append(recent, [finished(make_record(job_id=f"r{i:019d}"), usage_seconds=2.5,
                               result_path=None, when=now - timedelta(days=d))
                      for i, d in enumerate((2, 1))])
    deferred = make_record(job_id=None, status=JobStatus.DEFERRED, estimated_qpu_seconds=2.0)
    L.append(recent, deferred)
    guard = BudgetGuard(lambda _key: 6.0, pace=pace)
    seen = []

    def admit(record, records):
        seen.append(len(records))
        return guard.admit_deferred(record, records, utc_now())

    report = collect_pending(local(tmp_path, 0), ledger, CollectOptions(admit=admit))
    [outcome] = report.outcomes
    expected = guard.admit_deferred(deferred, full_fold(ledger).summaries, utc_now())
    assert expected is not None and outcome.message == f"deferred: {expected}"
    assert "used 5.0 s" in expected or "pace" in expected
    assert seen == [3]  # the two in the window and the deferred one: not the old twenty


def test_retries_are_planned_as_over_a_full_fold(tmp_path: Path, ledger: Ledger):
    """A failure two months old is still retried, once: also when its retry is in another
    ledger file."""
    first = ledger.new_file(OLD - timedelta(days=1))
    retried, waiting, user = (make_record(job_id=f"{c * 20}") for c in "abc")
    L.append(first, [finished(retried, JobStatus.FAILED, failure_class="system"),
                     finished(waiting, JobStatus.PARTIAL, failure_class="system"),
                     finished(user, JobStatus.FAILED, failure_class="user")])
    second = ledger.new_file(OLD)
    L.append(second, finished(make_record(job_id="d" * 20, retry_of=retried.record_id,
                                          retry_count=1), JobStatus.CANCELLED))
    svc = local(tmp_path, 0)
    no_slots = QueuePolicy(max_pending=0)
    report = collect_pending(svc, ledger, CollectOptions(resubmit_failed=True, policy=no_slots))
    retries = [e.record for e in full_fold(ledger).entries.values() if e.summary.retry_of]
    assert sorted(r.retry_of for r in retries) == sorted([retried.record_id, waiting.record_id])
    [retry] = [r for r in retries if r.retry_of == waiting.record_id]
    assert retry.status is JobStatus.DEFERRED and retry.retry_count == 1
    assert [o.message for o in report.outcomes] == ["deferred: waiting for a free slot"]
    collect_pending(svc, ledger, CollectOptions(resubmit_failed=True, policy=no_slots))
    assert len([e for e in full_fold(ledger).entries.values() if e.summary.retry_of]) == 2


def test_a_submission_finds_the_old_job_it_would_repeat(invoke, tmp_path: Path, ledger: Ledger):
    """Its dedupe reads the completed records of its circuits, however old; its guard only
    the budget window."""
    assert invoke(submit.main, ["-e", "bell", "--shots", "10"]).exit_code == 0
    collect_pending(local(tmp_path, 0), ledger)
    [entry] = full_fold(ledger).entries.values()
    assert entry.summary.status is JobStatus.COMPLETED
    aged = entry.record.model_validate({**entry.record.model_dump(), "submission_time": OLD,
                                        "completion_time": OLD, "updated_at": OLD})
    L.append(entry.path, aged)  # as if it ran two months ago
    old_study(ledger, files=2, per_file=5)
    again = invoke(submit.main, ["-e", "bell", "--shots", "10"])
    assert again.exit_code == 0
    assert f"identical to job {aged.job_id} (completed)" in again.output
    assert len(full_fold(ledger).entries) == 11
