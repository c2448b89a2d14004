"""job_states: many jobs' states in a few calls, agreeing with job_status (local and IBM)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from clocks import HeldClock
from ibm_emulator import IBMEmulator
from pydantic import SecretStr
from qiskit import QuantumCircuit

from qcourier.circuits.transpile import transpile
from qcourier.config import ApiKey
from qcourier.services.base import JobState, QuantumService, ServiceError, TransientServiceError
from qcourier.services.ibm import IBMConnection, IBMService
from qcourier.services.local import INJECTED_FAILURE_MESSAGE, LocalService, LocalServiceConfig

UNKNOWN = "abcdefghij0123456789"


def bell_isa(service: LocalService) -> list[QuantumCircuit]:
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return transpile([qc], service.backend("fake_fez"))


def local(root: Path, **config) -> LocalService:
    return LocalService(LocalServiceConfig(root=root, **{"queue_seconds": 0, "run_seconds": 0,
                                                         "seed": 3, **config}))


def count_calls(service: LocalService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    network_call = service._network_call

    def counted() -> None:
        calls.append(1)
        network_call()

    monkeypatch.setattr(service, "_network_call", counted)
    return calls


# ------------------------------------------------------------------------------ local service


def test_local_job_states_agree_with_job_status(tmp_path: Path):
    circuits = bell_isa(local(tmp_path))
    jobs = {
        "queued": local(tmp_path, queue_seconds=600).submit("fake_fez", circuits, 20),
        "running": local(tmp_path, run_seconds=600).submit("fake_fez", circuits, 20),
        "done": local(tmp_path).submit("fake_fez", circuits, 20),
        "failed": local(tmp_path, failure_rate=1.0).submit("fake_fez", circuits, 20),
    }
    service = local(tmp_path)
    states = service.job_states([*jobs.values(), UNKNOWN, "../../etc/passwd"],
                                created_after=datetime.now(UTC) - timedelta(hours=1))
    assert set(states) == set(jobs.values())  # unknown ids are left out
    assert {name: states[job].state for name, job in jobs.items()} == {
        "queued": JobState.QUEUED, "running": JobState.RUNNING, "done": JobState.DONE,
        "failed": JobState.ERROR}
    assert states[jobs["failed"]].error_message == INJECTED_FAILURE_MESSAGE
    assert states[jobs["failed"]].reason_code == 1010
    for job_id in jobs.values():
        assert service.job_status(job_id) == states[job_id]
    assert service.job_states(list(jobs.values())) == states  # after job_status simulated "done"


def test_local_job_states_never_simulate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import qcourier.services.simulation

    service = local(tmp_path)
    job_id = service.submit("fake_fez", bell_isa(service), 20)
    simulated = []
    monkeypatch.setattr(qcourier.services.simulation, "simulate_counts",
                        lambda *a, **k: simulated.append(1))
    assert service.job_states([job_id])[job_id].state is JobState.DONE
    assert simulated == [] and not (tmp_path / f"{job_id}.result.json").exists()


def test_a_failed_simulation_is_error_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import qcourier.services.simulation

    service = local(tmp_path)
    job_id = service.submit("fake_fez", bell_isa(service), 20)
    assert service.job_states([job_id])[job_id].state is JobState.DONE  # not simulated yet

    def explode(*args, **kwargs):
        raise RuntimeError("the simulator ran out of qubits")

    with monkeypatch.context() as patched:
        patched.setattr(qcourier.services.simulation, "simulate_counts", explode)
        status = service.job_status(job_id)
    assert status.state is JobState.ERROR
    assert status.error_message == "simulation failed: the simulator ran out of qubits"
    # The simulator works again, but the job's failure stands, for this process and others.
    for svc in (service, local(tmp_path)):
        assert svc.job_status(job_id) == status
        assert svc.job_states([job_id]) == {job_id: status}
        with pytest.raises(ServiceError, match="no result: it is ERROR.*ran out of qubits"):
            svc.job_result(job_id)
    assert (tmp_path / f"{job_id}.error.json").is_file()
    assert service.find_jobs([]) == [job_id]  # the marker is not mistaken for a job


def test_local_job_states_take_one_call_per_hundred_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    service = local(tmp_path)
    job_id = service.submit("fake_fez", bell_isa(service), 20)
    calls = count_calls(service, monkeypatch)
    ids = [job_id] + [f"{n:020d}" for n in range(249)]
    assert service.job_states(ids) == {job_id: service.job_states([job_id])[job_id]}
    assert len(calls) == 3 + 1
    assert service.job_states([]) == {} and len(calls) == 4


def test_local_job_states_obey_the_rate_limit(tmp_path: Path):
    service = local(tmp_path, rate_limit_per_second=1)
    service.job_states([UNKNOWN])
    with pytest.raises(TransientServiceError) as caught:
        service.job_states([UNKNOWN])
    assert caught.value.http_status == 429 and caught.value.retry_after > 0


def test_a_service_without_a_listing_returns_nothing(tmp_path: Path):
    service = local(tmp_path)
    job_id = service.submit("fake_fez", bell_isa(service), 20)
    assert QuantumService.job_states(service, [job_id]) == {}


# ------------------------------------------------------------------------------ IBM


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch):
    with IBMEmulator() as emulator:
        for name, value in emulator.client_env().items():
            monkeypatch.setenv(name, value)
        yield emulator
        assert emulator.errors == []


def ibm(emu: IBMEmulator, **connection) -> IBMService:
    return IBMService(ApiKey(0, SecretStr("good-token-0")),
                      IBMConnection(url=emu.api_url, **{"retries": 1, **connection}))


def listings(emu: IBMEmulator, since: int = 0) -> list[dict]:
    return [query for method, path, query in emu.requests[since:]
            if (method, path) == ("GET", "/api/v1/jobs")]


def job_gets(emu: IBMEmulator, since: int = 0) -> list[str]:
    return [path for method, path, _ in emu.requests[since:]
            if method == "GET" and path.startswith("/api/v1/jobs/")]


def test_ibm_job_states_read_a_listing_page_not_each_job(emu: IBMEmulator):
    start = time.time() - 300
    ids = [emu.add_job(tags=["qcourier", "batch:x"], created=start + n) for n in range(160)]
    untagged = emu.add_job(tags=["someone-else"])
    emu.add_job(tags=["qcourier"], token="good-token-1")  # another instance's job
    service = ibm(emu)
    service.usage()  # connect first: count only the listing's requests
    before = len(emu.requests)
    states = service.job_states([*ids, untagged, UNKNOWN])
    assert set(states) == set(ids)
    assert all(report.state is JobState.DONE for report in states.values())
    pages = listings(emu, before)
    assert len(pages) == 2 and job_gets(emu, before) == []
    assert pages[0]["tags"] == ["qcourier"] and pages[1]["offset"] == ["100"]


def test_ibm_job_states_agree_with_job_status(emu: IBMEmulator):
    ids = {name: emu.add_job(tags=["qcourier"]) for name in
           ("queued", "running", "done", "failed", "failed_no_code", "cancelled", "ran_too_long")}
    emu.set_job_state(ids["queued"], "Queued")
    emu.set_job_state(ids["running"], "Running")
    emu.set_job_state(ids["failed"], "Failed", reason="Kaboom in the control electronics",
                      reason_code=1517)
    emu.set_job_state(ids["failed_no_code"], "Failed", reason="Something broke")
    emu.set_job_state(ids["cancelled"], "Cancelled", reason="Cancelled by user", reason_code=1400)
    emu.set_job_state(ids["ran_too_long"], "Cancelled", reason="RAN TOO LONG", reason_code=1305)
    service = ibm(emu)
    states = service.job_states(list(ids.values()))
    # The client builds a ran-too-long job's message from its results text: asked alone.
    assert ids["ran_too_long"] not in states
    assert {name: states[job].state for name, job in ids.items() if job in states} == {
        "queued": JobState.QUEUED, "running": JobState.RUNNING, "done": JobState.DONE,
        "failed": JobState.ERROR, "failed_no_code": JobState.ERROR,
        "cancelled": JobState.CANCELLED}
    for job_id, report in states.items():
        assert service.job_status(job_id) == report
    failed = states[ids["failed"]]
    assert failed.reason_code == 1517 and "Error code 1517; Kaboom" in failed.error_message
    assert service.job_status(ids["ran_too_long"]).state is JobState.ERROR


def test_ibm_job_states_stop_at_the_page_that_has_every_job(emu: IBMEmulator):
    ids = [emu.add_job(tags=["qcourier"], created=time.time() - 300 + n) for n in range(230)]
    service = ibm(emu)
    service.usage()
    before = len(emu.requests)
    newest = ids[-5:]
    assert set(service.job_states(newest)) == set(newest)
    assert len(listings(emu, before)) == 1
    since = datetime.now(timezone(timedelta(hours=2))) - timedelta(hours=1)  # not UTC: converted
    assert set(service.job_states(ids[:3], created_after=since)) == set(ids[:3])
    pages = listings(emu, before)[1:]
    assert len(pages) == 3 and all("created_after" in page for page in pages)


def test_a_429_on_the_listing_is_waited_out_by_every_thread(emu: IBMEmulator):
    ids = [emu.add_job(tags=["qcourier"]) for _ in range(3)]
    service = ibm(emu)
    service.usage()
    held = HeldClock()
    service._gate = held.gate()
    before = len(emu.requests)
    emu.fail("GET", r"/api/v1/jobs$", 429, headers={"Retry-After": "1"})
    result: dict = {}
    lister = threading.Thread(target=lambda: result.update(states=service.job_states(ids)),
                              name="lister")
    lister.start()
    # The 429 reached qcourier's gate (not urllib3's sleep): the lister waits its Retry-After.
    assert held.waiting("lister") == [1.0]
    # Another thread's call waits at the same gate, and sends nothing meanwhile.
    sent = len(emu.requests)
    other = threading.Thread(target=service.usage, name="other")
    other.start()
    assert held.waiting("other") == [1.0]
    assert len(emu.requests) == sent
    held.release.set()
    lister.join(10)
    other.join(10)
    assert not lister.is_alive() and not other.is_alive()
    assert set(result["states"]) == set(ids)
    assert len(listings(emu, before)) == 2
    assert len(emu.requests) > sent  # the other call went out once the gate opened


def test_a_429_carries_retry_after(emu: IBMEmulator):
    [job_id] = [emu.add_job(tags=["qcourier"])]
    service = ibm(emu, retries=0)
    emu.fail("GET", r"/api/v1/jobs$", 429, headers={"Retry-After": "0.3"})
    with pytest.raises(TransientServiceError, match="rate limit reached") as caught:
        service.job_states([job_id])
    assert caught.value.http_status == 429 and caught.value.retry_after == pytest.approx(0.3)
    assert "good-token" not in str(caught.value)


def test_without_a_raw_listing_job_states_returns_nothing(emu: IBMEmulator, monkeypatch):
    job_id = emu.add_job(tags=["qcourier"])
    service = ibm(emu)
    client = service._service()
    monkeypatch.setattr(client, "_active_api_client", object())  # a future client
    assert service.job_states([job_id]) == {}


def test_threads_call_one_ibm_service_at_once(emu: IBMEmulator):
    from qcourier.services.workers import map_unordered

    ids = [emu.add_job(tags=["qcourier"]) for _ in range(8)]
    service = ibm(emu)
    service.usage()
    release = threading.Event()
    emu.hang("GET", r"/api/v1/jobs/[a-z0-9]+$", seconds=50, count=8, until=release)
    results: dict = {}
    caller = threading.Thread(target=lambda: results.update(
        map_unordered(service.job_status, ids, workers=8)))
    caller.start()
    # Observed: all eight requests are held at the server at once (one at a time, the first
    # would be held alone until its 50 s ran out).
    deadline = time.monotonic() + 40
    while emu.hanging < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.hanging == 8
    release.set()
    caller.join(60)
    assert all(results[job_id].state is JobState.DONE for job_id in ids)
    assert set(service._jobs) == set(ids)


def test_a_hung_call_is_abandoned_while_others_go_on(emu: IBMEmulator):
    slow, fast = emu.add_job(tags=["qcourier"]), emu.add_job(tags=["qcourier"])
    # 3 s: every unheld call answers within it on a loaded machine too; the held one is held
    # until the emulator stops.
    service = ibm(emu, timeout_seconds=3, retries=0)
    service.usage()
    emu.hang("GET", rf"/api/v1/jobs/{slow}$", seconds=120)
    with pytest.raises(TransientServiceError, match="did not answer"):
        service.job_status(slow)
    # Answered within the call timeout (3 s, no retries) while the abandoned call still
    # hangs: had it waited behind that one, it would have raised "did not answer".
    assert service.job_status(fast).state is JobState.DONE
