"""One retry layer: every IBM call goes through the adapter's one loop (counted at the
emulator), every worker waits out a Retry-After, storms end at the attempt limit or the
deadline in one line, the collector retries only a service that does not retry itself, and
the ``qcourier.retry`` logger records each retry."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

import qcourier.services.ibm
from clocks import FakeTime
from conftest import ledger_records
from ibm_emulator import IBMEmulator
from qcourier.cli import collect, submit
from qcourier.collect.run import GatedService
from qcourier.config import ApiKey
from qcourier.services.base import TransientServiceError
from qcourier.services.ibm import IBMConnection, IBMService
from qcourier.services.local import LocalService, LocalServiceConfig

BELL = ["-e", "bell", "--shots", "50"]
JOB_GET = r"/api/v1/jobs/[a-z0-9]+$"


@pytest.fixture
def emu(monkeypatch):
    with IBMEmulator() as emulator:
        for name, value in emulator.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("QCOURIER_IBM_URL", emulator.api_url)
        monkeypatch.setenv("QCOURIER_SERVICE", "ibm")
        monkeypatch.setenv("IBM_QUANTUM_TOKEN", "good-token-0")
        yield emulator
        assert emulator.errors == []


def job_gets(emu: IBMEmulator, since: int = 0) -> dict[str, list[float]]:
    """Arrival times of ``GET /jobs/{id}`` per job id, from request number ``since`` on."""
    times: dict[str, list[float]] = {}
    for method, path, at in emu.request_times[since:]:
        if method == "GET" and re.search(JOB_GET, path):
            times.setdefault(path.rsplit("/", 1)[1], []).append(at)
    return times


def gated_by(fake: FakeTime, emu: IBMEmulator, monkeypatch) -> None:
    """Every IBM service made from now on waits at a rate gate on ``fake`` time, and the
    emulator notes its requests' arrivals on that time: it moves only while a gate waits, so
    the time between two requests is what the gate held the caller for."""
    monkeypatch.setattr(qcourier.services.ibm, "RateGate", fake.gate)
    emu.clock = fake.clock


def submitted(invoke, tmp_path: Path, jobs: int = 1) -> list[str]:
    result = invoke(submit.main, [*BELL, "--repeat", str(jobs), "--force"])
    assert result.exit_code == 0, result.output
    return [r["job_id"] for r in ledger_records(tmp_path / "ledger")]


def test_a_429_storm_is_retried_exactly_as_configured_and_each_worker_waits(
        emu, invoke, tmp_path: Path, monkeypatch):
    """Three jobs polled by three workers through a storm of 429s (Retry-After: 1): each job
    is asked exactly retries + 1 times, not once more by the collector, and each retry comes
    after the Retry-After, waited out at the service's rate gate."""
    ids = submitted(invoke, tmp_path, jobs=3)
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "2")
    monkeypatch.setenv("QCOURIER_POLL_WORKERS", "3")
    fake = FakeTime()
    gated_by(fake, emu, monkeypatch)
    emu.fail("GET", JOB_GET, 429, count=10_000, headers={"Retry-After": "1"})
    before = len(emu.request_times)
    result = invoke(collect.main, [])
    assert result.exit_code == 1
    gets = job_gets(emu, before)
    assert sorted(gets) == sorted(ids)
    assert {job_id: len(times) for job_id, times in gets.items()} == {job_id: 3 for job_id in ids}
    for times in gets.values():  # on the gate's time: each retry was held for its Retry-After
        assert all(later - earlier >= 1.0 for earlier, later in zip(times, times[1:]))
    assert fake.sleeps and set(fake.sleeps) <= {1.0}  # only the gate waited, whole Retry-Afters
    for job_id in ids:
        # The listing said DONE: the storm met each job's result download.
        assert (f"not collected: key 0 (IBM_QUANTUM_TOKEN): IBM Quantum rate limit reached "
                f"(result of job {job_id}, HTTP 429); retry after 1 s") in result.stdout
    assert [r["status"] for r in ledger_records(tmp_path / "ledger")] == ["submitted"] * 3


def test_a_short_429_storm_is_waited_out(emu, invoke, tmp_path: Path, monkeypatch):
    [job_id] = submitted(invoke, tmp_path)
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "3")
    fake = FakeTime()
    gated_by(fake, emu, monkeypatch)
    emu.fail("GET", JOB_GET, 429, count=2, headers={"Retry-After": "1"})
    before = len(emu.request_times)
    result = invoke(collect.main, [])
    assert result.exit_code == 0 and ": completed" in result.stdout
    times = job_gets(emu, before)[job_id]
    # On the gate's time: each 429's Retry-After was waited out at the gate, and only that.
    assert fake.sleeps == [1.0, 1.0]
    assert times[1] - times[0] == 1.0 and times[2] - times[1] == 1.0
    assert len(times) >= 3  # two 429s, then the answers (status, result, metrics)


def test_a_503_storm_ends_at_the_attempt_limit_in_one_line(emu, invoke, tmp_path: Path,
                                                            monkeypatch):
    [job_id] = submitted(invoke, tmp_path)
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "2")
    emu.fail("GET", JOB_GET, 503, count=10_000)
    before = len(emu.request_times)
    result = invoke(collect.main, [])
    assert result.exit_code == 1
    assert len(job_gets(emu, before)[job_id]) == 3  # the client's transport retries nothing
    [line] = [x for x in result.stdout.splitlines() if "not polled" in x]
    assert (f"not polled: key 0 (IBM_QUANTUM_TOKEN): IBM Quantum service error (status of job "
            f"{job_id}, HTTP 503); try again later") in line
    assert "Max retries exceeded" not in result.output and "good-token" not in result.output


def test_a_failed_read_before_the_post_is_retried_and_settles_the_intent(emu, invoke,
                                                                         tmp_path: Path,
                                                                         monkeypatch):
    """A submission is not idempotent, but a 503 on one of the GETs its client sends before the
    POST proves that no job was made: retried, and then the intent is settled."""
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "1")
    emu.fail("GET", r"/api/v1/backends/ibm_fez/status$", 503, count=10_000)
    before = len(emu.requests)
    result = invoke(submit.main, [*BELL, "--backend", "ibm_fez"])
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "IBM Quantum service error (submit to ibm_fez, HTTP 503); try again later" in line
    requests = emu.requests[before:]
    assert sum(1 for m, p, _ in requests if p == "/api/v1/backends/ibm_fez/status") == 2
    assert not [p for m, p, _ in requests if (m, p) == ("POST", "/api/v1/jobs")]
    assert "Nothing was submitted." in result.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submit_failed" and emu.jobs == {}


def test_the_retry_logger_records_each_retry_without_the_token(emu, caplog):
    job_id = emu.add_job(tags=["qcourier"])
    service = IBMService(ApiKey(0, SecretStr("good-token-0")),
                         IBMConnection(url=emu.api_url, retries=3))
    service.usage()
    emu.fail("GET", JOB_GET, 429, count=2, headers={"Retry-After": "0"})
    caplog.set_level(logging.DEBUG, logger="qcourier.retry")
    assert service.job_status(job_id).state.is_final
    lines = [r.getMessage() for r in caplog.records if r.name == "qcourier.retry"]
    assert lines == [f"status of job {job_id}: attempt {n} of 4 failed (TransientServiceError, "
                     "HTTP 429); retrying in 0.00 s (Retry-After)" for n in (1, 2)]
    assert "good-token" not in caplog.text


def test_the_collector_retries_only_a_service_that_does_not_retry_itself(tmp_path: Path, emu):
    ibm = IBMService(ApiKey(0, SecretStr("good-token-0")), IBMConnection(url=emu.api_url))
    assert ibm.retries_calls and GatedService(ibm)._gate is None  # the adapter's own loop
    local = LocalService(LocalServiceConfig(root=tmp_path, rate_limit_per_second=1))
    assert not local.retries_calls
    assert not hasattr(GatedService, "__getattr__")
    gated = GatedService(local)
    assert gated.job_states(["a" * 20]) == {}
    with pytest.raises(TransientServiceError):  # the service itself answers 429 now...
        local.job_states(["a" * 20])
    assert gated.job_states(["a" * 20]) == {}  # ...which the gated call waits out
    assert gated._gate.remaining() == 0
