"""The IBM emulator, driven by the real qiskit-ibm-runtime client (job mode, SamplerV2)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from ibm_emulator import IBMEmulator
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService
from qiskit_ibm_runtime.accounts.exceptions import InvalidAccountError
from qiskit_ibm_runtime.api.exceptions import RequestsApiError
from qiskit_ibm_runtime.exceptions import (
    IBMInputValueError,
    IBMRuntimeError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobNotFound,
)

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def quiet_client_logs() -> Iterator[None]:
    """The client logs a WARNING on every construction ("Loading account with the given token")."""
    logger = logging.getLogger("qiskit_ibm_runtime")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def shared() -> Iterator[IBMEmulator]:
    with IBMEmulator() as emu:
        yield emu


@pytest.fixture
def emu(shared: IBMEmulator, monkeypatch: pytest.MonkeyPatch) -> IBMEmulator:
    shared.clear_faults()
    for name, value in shared.client_env().items():
        monkeypatch.setenv(name, value)
    yield shared
    assert not shared.errors, shared.errors[0]


def connect(emu: IBMEmulator, token: str = "good-token-0", **kwargs: Any) -> QiskitRuntimeService:
    return QiskitRuntimeService(**{**emu.service_kwargs(token), **kwargs})


def bell(backend: Any) -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return isa(qc, backend)


def isa(circuit: QuantumCircuit, backend: Any) -> QuantumCircuit:
    pm = generate_preset_pass_manager(optimization_level=1, backend=backend, seed_transpiler=1)
    return pm.run(circuit)


def sampler(backend: Any, tags: list[str] | None = None, max_time: int | None = None) -> Any:
    from qiskit_ibm_runtime import SamplerV2

    with warnings.catch_warnings():  # SamplerV2 is deprecated since 0.50
        warnings.simplefilter("ignore", DeprecationWarning)
        s = SamplerV2(mode=backend)
    if tags:
        s.options.environment.job_tags = tags
    if max_time:
        s.options.max_execution_time = max_time
    return s


def posts(emu: IBMEmulator, since: int = 0) -> list[dict[str, Any]]:
    return [body for method, path, body in emu.requests[since:]
            if (method, path) == ("POST", "/api/v1/jobs")]


def raw(emu: IBMEmulator, method: str, path: str, token: str = "good-token-0",
        timeout: float = 5.0) -> tuple[int, Any]:
    """A bare request (urllib), authenticated through the emulator's IAM."""
    form = f"grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey={token}".encode()
    with urllib.request.urlopen(urllib.request.Request(emu.url + "/identity/token", data=form),
                                timeout=timeout) as reply:
        access = json.load(reply)["access_token"]
    request = urllib.request.Request(emu.url + path, method=method,
                                     headers={"Authorization": f"Bearer {access}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


# ------------------------------------------------------------------------------- backends


def test_backends_properties_status_and_least_busy(emu: IBMEmulator):
    service = connect(emu)
    assert sorted(b.name for b in service.backends()) == ["ibm_fez", "ibm_marrakesh"]
    fez = service.backend("ibm_fez")
    assert fez.num_qubits == 156
    age = datetime.now(timezone.utc) - fez.properties().last_update_date
    assert timedelta(minutes=55) < age < timedelta(minutes=65)
    emu.calibration_age_hours = 48
    try:
        age = datetime.now(timezone.utc) - fez.properties(refresh=True).last_update_date
    finally:
        emu.calibration_age_hours = 1.0
    assert timedelta(hours=47) < age < timedelta(hours=49)

    emu.set_backend("ibm_fez", queue_length=7)
    emu.set_backend("ibm_marrakesh", queue_length=2)
    try:
        assert fez.status().pending_jobs == 7 and fez.status().operational
        # least_busy() reads the /backends listing cached when the service was made
        assert service.least_busy().name == "ibm_fez"
        assert connect(emu).least_busy().name == "ibm_marrakesh"
        emu.set_backend("ibm_marrakesh", operational=False)
        assert connect(emu).least_busy().name == "ibm_fez"
    finally:
        emu.set_backend("ibm_fez", queue_length=0)
        emu.set_backend("ibm_marrakesh", queue_length=0, operational=True)


# ------------------------------------------------------------------------------- jobs


def test_bell_job_end_to_end_in_job_mode(monkeypatch: pytest.MonkeyPatch):
    # The queue is long enough for the checks below to see QUEUED on a loaded machine.
    with IBMEmulator(queue_seconds=3.0, run_seconds=0.4) as emu:
        for name, value in emu.client_env().items():
            monkeypatch.setenv(name, value)
        service = connect(emu)
        backend = service.backend("ibm_fez")
        job = sampler(backend, tags=["qcourier", "batch:e2e"], max_time=120).run([bell(backend)], shots=100)
        job_id = job.job_id()
        assert len(job_id) == 20 and job_id.isalnum() and job_id.islower()

        (body,) = posts(emu)
        assert body["tags"] == ["qcourier", "batch:e2e"] and body["cost"] == 120
        assert body["program_id"] == "sampler" and body["backend"] == "ibm_fez"
        assert "session_id" not in body and "start_session" not in body
        record = emu.jobs[job_id]
        assert record["instance"] == "instance-0" and record["token_index"] == 0
        assert record["shots"] == [100] and record["cost"] == 120

        again = connect(emu).job(job_id)  # a fresh client, as another process would
        assert again.status() == "QUEUED"
        assert again.tags == ["qcourier", "batch:e2e"]
        assert [j.job_id() for j in service.jobs(job_tags=["batch:e2e"], pending=True)] == [job_id]
        result = again.result(timeout=10)
        assert again.status() == "DONE"
        counts = result[0].data.meas.get_counts()
        assert sum(counts.values()) == 100
        assert counts.get("00", 0) + counts.get("11", 0) >= 85
        assert result[0].join_data().get_counts() == counts

        metrics = again.metrics()
        stamps = {k: datetime.fromisoformat(v.replace("Z", "+00:00"))
                  for k, v in metrics["timestamps"].items()}
        assert stamps["created"] < stamps["running"] < stamps["finished"]
        assert metrics["usage"]["status"] == "final"
        assert again.usage() == pytest.approx(2.01) == record["usage_seconds"]

        assert [j.job_id() for j in service.jobs(job_tags=["batch:e2e"])] == [job_id]
        assert [j.job_id() for j in service.jobs(job_tags=["qcourier", "batch:e2e"])] == [job_id]
        assert service.jobs(job_tags=["batch:e2e", "other"]) == []
        assert service.jobs(job_tags=["batch:e2e"], pending=True) == []
        usage = service.usage()
        assert usage["usage_consumed_seconds"] == pytest.approx(2.01)
        assert usage["usage_remaining_seconds"] == pytest.approx(600 - 2.01)

        other = connect(emu, "good-token-1")  # another instance sees neither the job nor its usage
        with pytest.raises(RuntimeJobNotFound):
            other.job(job_id)
        assert other.jobs(job_tags=["batch:e2e"]) == []
        assert other.usage()["usage_consumed_seconds"] == 0
        assert not [r for r in emu.requests if "/sessions" in r[1]]
        assert not emu.errors


def test_registers_and_parameters(emu: IBMEmulator):
    backend = connect(emu).backend("ibm_marrakesh")
    q, a, b = QuantumRegister(3), ClassicalRegister(1, "a"), ClassicalRegister(2, "b")
    qc = QuantumCircuit(q, a, b)
    qc.x(0)
    qc.h(1)
    qc.cx(1, 2)
    qc.measure(0, a[0])
    qc.measure([1, 2], [b[0], b[1]])
    theta = Parameter("t")
    rot = QuantumCircuit(1, 1)
    rot.rx(theta, 0)
    rot.measure(0, 0)
    job = sampler(backend).run([isa(qc, backend), (isa(rot, backend), [[0.0], [3.14159]])], shots=200)
    first, second = job.result(timeout=30)
    assert first.data.a.get_counts().get("1", 0) >= 170  # noisy: a few % of readout errors
    assert set(first.data.b.get_counts()) <= {"00", "11", "01", "10"}
    joined = first.join_data().get_counts()  # "b a": the registers' shots stay aligned
    assert joined.get("001", 0) + joined.get("111", 0) >= 160
    assert second.data.c.shape == (2,)
    assert second.data.c.get_counts(0).get("0", 0) >= 170
    assert second.data.c.get_counts(1).get("1", 0) >= 170


def test_unknown_and_forgotten_jobs_are_404(emu: IBMEmulator):
    service = connect(emu)
    with pytest.raises(RuntimeJobNotFound):
        service.job("abcdefghij0123456789")
    backend = service.backend("ibm_fez")
    job = sampler(backend).run([bell(backend)], shots=10)
    emu.forget_job(job.job_id())
    with pytest.raises(RequestsApiError) as err:
        job.status()
    assert err.value.status_code == 404


def test_forced_failures_cancel_and_ran_too_long(emu: IBMEmulator):
    service = connect(emu)
    backend = service.backend("ibm_fez")
    run = sampler(backend).run

    failed = run([bell(backend)], shots=10)
    emu.set_job_state(failed.job_id(), "Failed", reason="Kaboom", reason_code=1517)
    with pytest.raises(RuntimeJobFailureError, match="1517; Kaboom"):
        failed.result()
    assert "Kaboom" in service.job(failed.job_id()).error_message()

    too_long = run([bell(backend)], shots=10)
    emu.set_job_state(too_long.job_id(), "Cancelled", reason="RAN TOO LONG", reason_code=1305)
    with pytest.raises(RuntimeJobMaxTimeoutError):
        too_long.result()
    with pytest.raises(RuntimeInvalidStateError):  # 409: already final
        too_long.cancel()

    pinned = run([bell(backend)], shots=10)
    emu.set_job_state(pinned.job_id(), "Running")
    assert pinned.status() == "RUNNING"
    pinned.cancel()
    with pytest.raises(RuntimeInvalidStateError, match="cancelled"):
        service.job(pinned.job_id()).result()

    capped = sampler(backend, max_time=1).run([bell(backend)], shots=10)  # 2.001 s > 1 s
    with pytest.raises(RuntimeJobMaxTimeoutError):
        capped.result()
    assert capped.usage() == 1.0


def test_non_isa_circuits_and_sessions_never_reach_a_job(emu: IBMEmulator):
    backend = connect(emu).backend("ibm_fez")
    before = len(emu.requests)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    with pytest.raises(IBMInputValueError):  # the client itself refuses non-ISA circuits
        sampler(backend).run([qc], shots=10)
    assert posts(emu, before) == []
    status, body = raw(emu, "POST", "/api/v1/sessions")
    assert status == 400 and body["errors"][0]["message"].startswith("Sessions")
    assert emu.requests[-1][:2] == ("POST", "/api/v1/sessions")


# ------------------------------------------------------------------------------- errors


def test_bad_token_fails_fast_at_construction(emu: IBMEmulator):
    before = len(emu.requests)
    with pytest.raises(InvalidAccountError):
        connect(emu, "bad-token", instance=emu.instance_crn("instance-0"))
    with pytest.raises(InvalidAccountError):
        QiskitRuntimeService(channel="ibm_quantum_platform", token="bad-token", url=emu.url,
                             url_resolver=emu.service_kwargs()["url_resolver"])
    # Fast: each refusal is final at its first token exchange, neither retried nor followed.
    assert [r[:2] for r in emu.requests[before:]] == [("POST", "/identity/token")] * 2
    # another key's instance is refused too; an instance given by name is resolved
    with pytest.raises(IBMInputValueError):
        connect(emu, "good-token-1", instance=emu.instance_crn("instance-0"))
    by_name = connect(emu, "good-token-1", instance="instance-1")
    assert by_name.active_instance() == emu.instance_crn("instance-1")


def test_a_rejected_access_token_is_not_authorized(emu: IBMEmulator):
    from qiskit_ibm_runtime.exceptions import IBMNotAuthorizedError

    service = connect(emu)
    emu.fail("GET", r"/api/v1/jobs/", 401)
    with pytest.raises(IBMNotAuthorizedError):
        service.job("abcdefghij0123456789")


def test_409_on_submit_and_the_real_usage_limit(emu: IBMEmulator, monkeypatch: pytest.MonkeyPatch):
    backend = connect(emu).backend("ibm_fez")
    emu.fail("POST", r"/jobs$", 409)
    before = len(emu.requests)
    with pytest.raises(IBMRuntimeError, match="409 Client Error.*usage exceeds instance limit"):
        sampler(backend).run([bell(backend)], shots=10)
    assert len(posts(emu, before)) == 1  # not retried

    with IBMEmulator(usage_limit_seconds=2.0) as small:
        for name, value in small.client_env().items():
            monkeypatch.setenv(name, value)
        backend = connect(small).backend("ibm_fez")
        job = sampler(backend).run([bell(backend)], shots=100)
        job.result()
        assert job.usage() == pytest.approx(2.01)
        with pytest.warns(UserWarning, match="usage limit"), pytest.raises(IBMRuntimeError, match="409"):
            sampler(backend).run([bell(backend)], shots=100)
        assert len(small.jobs) == 1


def test_5xx_is_retried_and_can_duplicate_a_job(emu: IBMEmulator, monkeypatch):
    from urllib3.util.retry import Retry

    backend = connect(emu).backend("ibm_fez")
    before, jobs_before = len(emu.requests), len(emu.jobs)
    emu.fail("POST", r"/jobs$", 503, count=2)
    backoffs: list[float] = []  # the client's waits between attempts, recorded, not slept
    monkeypatch.setattr(Retry, "_sleep_backoff", lambda self: backoffs.append(
        self.get_backoff_time()))
    job = sampler(backend).run([bell(backend)], shots=10)
    assert backoffs == [0.0, 1.0]
    assert len(posts(emu, before)) == 3 and len(emu.jobs) == jobs_before + 1
    assert job.job_id() in emu.jobs

    emu.fail("POST", r"/jobs$", 502, after=True)  # the job was made, the answer was lost
    sampler(backend).run([bell(backend)], shots=10)
    assert len(emu.jobs) == jobs_before + 3


def test_429_rate_limit_is_not_retried(monkeypatch: pytest.MonkeyPatch):
    with IBMEmulator(jobs_per_minute=1) as emu:
        for name, value in emu.client_env().items():
            monkeypatch.setenv(name, value)
        backend = connect(emu).backend("ibm_fez")
        sampler(backend).run([bell(backend)], shots=10)
        with pytest.raises(IBMRuntimeError, match="429 Client Error"):
            sampler(backend).run([bell(backend)], shots=10)
        assert len(posts(emu)) == 2 and len(emu.jobs) == 1  # the 429 was not retried


def test_hang_delays_the_answer(emu: IBMEmulator):
    emu.hang("GET", r"/api/v1/instances/usage$", seconds=3)
    with pytest.raises(TimeoutError):  # the answer was not there within 0.5 s: it hung
        raw(emu, "GET", "/api/v1/instances/usage", timeout=0.5)
    status, body = raw(emu, "GET", "/api/v1/instances/usage", timeout=2)  # used up: answers at once
    assert status == 200 and "usage_consumed_seconds" in body


# ------------------------------------------------------------------------------- processes


def test_another_process_submits_and_this_one_collects(emu: IBMEmulator):
    script = textwrap.dedent(f"""
        import logging, sys, warnings
        sys.path.insert(0, {str(TESTS)!r})
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore", DeprecationWarning)
        from qiskit import QuantumCircuit
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
        from ibm_emulator import url_resolver
        service = QiskitRuntimeService(channel="ibm_quantum_platform", token=sys.argv[1],
                                       url={emu.url!r}, url_resolver=url_resolver, instance="instance-1")
        backend = service.backend("ibm_marrakesh")
        qc = QuantumCircuit(1)
        qc.x(0)
        qc.measure_all()
        pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
        sampler = SamplerV2(mode=backend)
        sampler.options.environment.job_tags = ["from-a-subprocess"]
        print(sampler.run([pm.run(qc)], shots=30).job_id())
    """)
    env = {**os.environ, **emu.client_env()}
    done = subprocess.run([sys.executable, "-c", script, "good-token-1"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert emu.jobs[job_id]["instance"] == "instance-1"
    service = connect(emu, "good-token-1")
    assert [j.job_id() for j in service.jobs(job_tags=["from-a-subprocess"])] == [job_id]
    assert service.job(job_id).result()[0].data.meas.get_counts().get("1", 0) >= 25
