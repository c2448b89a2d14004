"""The Prometheus textfile: written from hand-built records, parsed back with prometheus_client."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qcourier.accounting.budget import WINDOW
from qcourier.accounting.metrics import read_last_poll, write_prometheus
from qcourier.accounting.report import quantile
from qcourier.ledger.record import JobStatus, LedgerRecord

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = {None: 100.0, 0: 600.0, 1: 50.0}


def limits(key_index: int | None) -> float:
    return LIMITS[key_index]


def record(status: JobStatus, *, experiment: str = "bell", service: str = "ibm",
           key: int | None = 0, backend: str = "ibm_fez", usage: float | None = None,
           estimate: float | None = None, queue: float | None = None,
           finished: datetime | None = None) -> LedgerRecord:
    return LedgerRecord(
        status=status, service=service, backend=backend, experiment_type=experiment,
        shots=10, num_circuits=1, circuit_hash="c", isa_circuit_hash="i", transpiled_depth=3,
        transpiled_gates={"cz": 1}, api_key_index=key, usage_seconds=usage,
        estimated_qpu_seconds=estimate, queue_seconds=queue,
        completion_time=finished or (NOW - timedelta(hours=1) if status.is_final else None),
    )


RECORDS = [
    record(JobStatus.COMPLETED, usage=4.0, queue=10.0),
    record(JobStatus.COMPLETED, usage=6.0, queue=20.0),
    record(JobStatus.COMPLETED, usage=1.0, queue=30.0, experiment="ghz"),
    record(JobStatus.PARTIAL, usage=2.0, queue=40.0),
    record(JobStatus.COMPLETED, usage=100.0, queue=1.0, finished=NOW - WINDOW - timedelta(days=1)),
    record(JobStatus.FAILED, usage=0.5, queue=99.0),  # charged, but no queue time counted
    record(JobStatus.QUEUED, estimate=3.0),
    record(JobStatus.RUNNING, key=1, estimate=7.0, experiment="ghz"),
    record(JobStatus.COMPLETED, service="local", key=None, backend="fake_fez", usage=2.5,
           queue=0.0),
]


def parse(path: Path) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of a metrics file."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value)
    return samples


def types(path: Path) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(path.read_text())}


def test_jobs_by_status_and_experiment_with_every_status_present(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, RECORDS, limits, NOW, NOW)
    jobs = parse(path)["qcourier_jobs"]
    assert types(path)["qcourier_jobs"] == "gauge"
    assert {k: v for k, v in jobs.items() if v} == {
        (("experiment", "bell"), ("status", "completed")): 4.0,
        (("experiment", "bell"), ("status", "partial")): 1.0,
        (("experiment", "bell"), ("status", "failed")): 1.0,
        (("experiment", "bell"), ("status", "queued")): 1.0,
        (("experiment", "ghz"), ("status", "completed")): 1.0,
        (("experiment", "ghz"), ("status", "running")): 1.0,
    }
    assert len(jobs) == 2 * len(JobStatus)  # zeros too, so no series disappears


def test_named_experiments_get_zero_series_even_with_an_empty_ledger(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, [], limits, NOW, None, experiments=["bell"], keys=[("ibm", 1)])
    samples = parse(path)
    assert samples["qcourier_jobs"] == {
        (("experiment", "bell"), ("status", s.value)): 0.0 for s in JobStatus}
    assert samples["qcourier_qpu_seconds_remaining"] == {(("key", "1"), ("service", "ibm")): 50.0}
    assert "qcourier_last_successful_poll_timestamp_seconds" not in samples


def test_qpu_seconds_per_key_match_the_budget(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, RECORDS, limits, NOW, NOW)
    samples = parse(path)
    ibm0, ibm1, local = ((("key", "0"), ("service", "ibm")), (("key", "1"), ("service", "ibm")),
                         (("key", "-"), ("service", "local")))
    assert samples["qcourier_qpu_seconds_limit"] == {ibm0: 600.0, ibm1: 50.0, local: 100.0}
    # the job that finished before the window does not count
    assert samples["qcourier_qpu_seconds_used"] == {ibm0: 13.5, ibm1: 0.0, local: 2.5}
    assert samples["qcourier_qpu_seconds_reserved"] == {ibm0: 3.0, ibm1: 7.0, local: 0.0}
    assert samples["qcourier_qpu_seconds_remaining"] == {
        ibm0: 600.0 - 13.5 - 3.0, ibm1: 43.0, local: 97.5}


def test_queue_time_summary_over_jobs_that_ran_to_the_end(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, RECORDS, limits, NOW, NOW)
    assert types(path)["qcourier_queue_seconds"] == "summary"
    samples = parse(path)
    fez = (("backend", "ibm_fez"), ("service", "ibm"))
    local = (("backend", "fake_fez"), ("service", "local"))

    def at(labels: tuple, q: str) -> tuple:
        return tuple(sorted((*labels, ("quantile", q))))

    # ibm_fez: 1, 10, 20, 30, 40 (completed and partial, whenever they finished; not failed)
    assert samples["qcourier_queue_seconds_count"] == {fez: 5.0, local: 1.0}
    assert samples["qcourier_queue_seconds_sum"] == {fez: 101.0, local: 0.0}
    assert samples["qcourier_queue_seconds"] == {
        at(fez, "0.5"): 20.0,
        at(fez, "0.95"): 38.0,  # rank 0.95 * 4 = 3.8: 30 + 0.8 * (40 - 30)
        at(local, "0.5"): 0.0,
        at(local, "0.95"): 0.0,
    }


def test_no_queue_times_still_parses(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, [record(JobStatus.QUEUED, estimate=1.0)], limits, NOW, NOW)
    samples = parse(path)
    assert "qcourier_queue_seconds_count" not in samples
    assert samples["qcourier_jobs"][(("experiment", "bell"), ("status", "queued"))] == 1.0


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([5.0], 0.95, 5.0), ([1.0, 2.0], 0.5, 1.5), ([4.0, 1.0, 3.0, 2.0], 0.5, 2.5),
    ([0.0, 10.0], 0.95, 9.5),
])
def test_quantile_interpolates_between_ranks(values, q, expected):
    assert quantile(values, q) == pytest.approx(expected)


def test_last_poll_is_written_and_kept_when_a_run_has_none(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    polled = datetime(2026, 3, 1, 11, 55, 30, 250000, tzinfo=UTC)
    write_prometheus(path, RECORDS, limits, NOW, polled)
    name = "qcourier_last_successful_poll_timestamp_seconds"
    assert types(path)[name] == "gauge"
    assert parse(path)[name] == {(): polled.timestamp()}

    # a later run whose poll failed: new job counts, the old poll time
    write_prometheus(path, RECORDS[:1], limits, NOW + timedelta(minutes=5), None)
    samples = parse(path)
    assert samples[name] == {(): polled.timestamp()}
    assert samples["qcourier_jobs"][(("experiment", "bell"), ("status", "completed"))] == 1.0
    assert read_last_poll(path) == polled.timestamp()

    later = polled + timedelta(minutes=10)
    write_prometheus(path, RECORDS, limits, NOW, later)
    assert parse(path)[name] == {(): later.timestamp()}


def test_a_naive_last_poll_is_taken_as_utc(tmp_path: Path):
    path = tmp_path / "qcourier.prom"
    write_prometheus(path, [], limits, NOW.replace(tzinfo=None), datetime(2026, 1, 1))
    assert read_last_poll(path) == datetime(2026, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("content", [None, b"garbage {{{\n", b"\xff\xfe\n"])
def test_no_previous_poll_time_in_a_missing_or_unreadable_file(tmp_path: Path, content):
    path = tmp_path / "qcourier.prom"
    if content is not None:
        path.write_bytes(content)
    assert read_last_poll(path) is None
    write_prometheus(path, RECORDS, limits, NOW, None)
    assert "qcourier_last_successful_poll_timestamp_seconds" not in parse(path)
    assert "qcourier_jobs" in parse(path)


def test_the_file_is_replaced_by_rename(tmp_path: Path):
    directory = tmp_path / "textfile"
    path = directory / "qcourier.prom"
    write_prometheus(path, RECORDS, limits, NOW, NOW)  # creates the directory
    before = os.stat(path).st_ino
    reader = open(path)  # a collector reading the old file keeps a whole old file
    try:
        old_text = reader.read()
        write_prometheus(path, RECORDS[:2], limits, NOW, NOW)
        reader.seek(0)
        assert reader.read() == old_text
    finally:
        reader.close()
    assert os.stat(path).st_ino != before
    assert [p.name for p in directory.iterdir()] == ["qcourier.prom"]  # no temp file left
    assert parse(path)["qcourier_jobs"][(("experiment", "bell"), ("status", "completed"))] == 2.0
