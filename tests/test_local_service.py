"""The local service: states over time, persistence across instances, failures, seeds, usage."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from qiskit import QuantumCircuit

from qcourier.circuits.transpile import transpile
from qcourier.services.base import JobNotFoundError, JobState, ServiceError
from qcourier.services.local import LocalService, LocalServiceConfig


def bell_isa(service: LocalService) -> list[QuantumCircuit]:
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return transpile([qc], service.backend("fake_fez"))


def test_job_moves_queued_running_done_by_time(tmp_path: Path):
    now = [datetime(2026, 11, 21, 12, 0, tzinfo=UTC)]  # the service's clock, moved by hand
    svc = LocalService(LocalServiceConfig(root=tmp_path, queue_seconds=2.0, run_seconds=2.0),
                       clock=lambda: now[0])
    job_id = svc.submit("fake_fez", bell_isa(svc), 50)
    assert svc.job_status(job_id).state is JobState.QUEUED
    with pytest.raises(ServiceError, match="no result"):
        svc.job_result(job_id)
    now[0] += timedelta(seconds=1.999)
    assert svc.job_status(job_id).state is JobState.QUEUED
    now[0] += timedelta(seconds=0.001)
    assert svc.job_status(job_id).state is JobState.RUNNING
    assert svc.job_metrics(job_id).usage_seconds is None
    now[0] += timedelta(seconds=2.0)
    assert svc.job_status(job_id).state is JobState.DONE
    metrics = svc.job_metrics(job_id)
    assert metrics.queue_seconds == pytest.approx(2.0)
    assert metrics.usage_seconds > 2.0  # the per-job overhead alone is 2 s


def test_another_instance_sees_the_same_jobs(tmp_path: Path):
    first = LocalService(LocalServiceConfig(root=tmp_path, queue_seconds=0, run_seconds=0))
    job_id = first.submit("fake_fez", bell_isa(first), 100, tags=["qcourier", "batch:x"])
    second = LocalService(LocalServiceConfig(root=tmp_path))
    assert second.job_status(job_id).state is JobState.DONE
    assert sum(second.job_result(job_id).counts[0].values()) == 100
    assert second.find_jobs(["batch:x"]) == [job_id]
    assert second.find_jobs(["batch:x", "other"]) == []
    assert second.usage().usage_seconds == pytest.approx(second.job_metrics(job_id).usage_seconds)


def test_job_ids_look_like_ibms(service: LocalService):
    job_id = service.submit("fake_fez", bell_isa(service), 10)
    assert len(job_id) == 20 and job_id.isalnum() and job_id == job_id.lower()


def test_unknown_jobs(service: LocalService):
    with pytest.raises(JobNotFoundError, match="not found"):
        service.job_status("abcdefghij0123456789")
    with pytest.raises(JobNotFoundError, match="not a job id"):
        service.job_status("../../etc/passwd")


def test_injected_failure(tmp_path: Path):
    svc = LocalService(LocalServiceConfig(root=tmp_path, queue_seconds=0, run_seconds=0, failure_rate=1.0))
    job_id = svc.submit("fake_fez", bell_isa(svc), 10)
    status = svc.job_status(job_id)
    assert status.state is JobState.ERROR and "Injected failure" in status.error_message
    assert svc.job_metrics(job_id).usage_seconds == 0.0  # system errors are not charged


def test_a_base_seed_makes_counts_reproducible(tmp_path: Path):
    def run(root: Path, seed: int | None) -> dict[str, int]:
        svc = LocalService(LocalServiceConfig(root=root, queue_seconds=0, run_seconds=0, seed=seed))
        return svc.job_result(svc.submit("fake_fez", bell_isa(svc), 500)).counts[0]

    assert run(tmp_path / "a", 42) == run(tmp_path / "b", 42)
    assert run(tmp_path / "c", 42) != run(tmp_path / "d", 43)


def test_noise_can_be_switched_off(tmp_path: Path):
    svc = LocalService(LocalServiceConfig(root=tmp_path, queue_seconds=0, run_seconds=0, noise=False))
    counts = svc.job_result(svc.submit("fake_fez", bell_isa(svc), 500)).counts[0]
    assert set(counts) <= {"00", "11"}
    noisy = LocalService(LocalServiceConfig(root=tmp_path / "n", queue_seconds=0, run_seconds=0, seed=1))
    counts = noisy.job_result(noisy.submit("fake_fez", bell_isa(noisy), 4000)).counts[0]
    assert set(counts) - {"00", "11"}  # readout and gate errors show up


def test_noise_scale_zero_is_noiseless_and_noise_is_the_calibrations(tmp_path: Path):
    from qcourier.services.simulation import simulate_counts

    off = LocalService(LocalServiceConfig(root=tmp_path / "off", queue_seconds=0, run_seconds=0,
                                          noise_scale=0.0))
    counts = off.job_result(off.submit("fake_fez", bell_isa(off), 2000)).counts[0]
    assert set(counts) <= {"00", "11"}
    # The service samples the shared noise model of the snapshot that calibration() returns.
    svc = LocalService(LocalServiceConfig(root=tmp_path / "on", queue_seconds=0, run_seconds=0, seed=3))
    isa = bell_isa(svc)
    job_id = svc.submit("fake_fez", isa, 1000)
    seed = json.loads((tmp_path / "on" / f"{job_id}.json").read_text())["seed"]
    expected, _ = simulate_counts(isa[0], 1000, seed, svc.calibration("fake_fez"),
                                  dt=svc.backend("fake_fez").dt)
    assert svc.job_result(job_id).counts[0] == expected


def test_backends_and_unknown_backend(service: LocalService):
    names = {b.name: b for b in service.backends()}
    assert names["fake_fez"].num_qubits == 156 and "fake_manila" in names
    assert service.least_busy(2) == "fake_fez"
    with pytest.raises(ServiceError, match="unknown backend 'fake_nowhere'.*fake_fez"):
        service.backend("fake_nowhere")


def test_calibration_is_json_in_ibm_properties_shape(service: LocalService):
    cal = service.calibration("fake_fez")
    json.dumps(cal)
    assert cal["backend_name"] == "ibm_fez" and len(cal["qubits"]) == 156  # the device it copies
    assert any(g["gate"] == "cz" for g in cal["gates"])
    cal["qubits"].clear()  # a caller's copy: the service's own snapshot is untouched
    assert len(service.calibration("fake_fez")["qubits"]) == 156


def test_latency_is_per_call_and_threads_wait_in_parallel(tmp_path: Path):
    from qcourier.services.workers import map_unordered

    config = LocalServiceConfig(root=tmp_path, queue_seconds=600, latency_seconds=0.1)
    waits: list[float] = []
    svc = LocalService(config, sleep=waits.append)
    job_id = svc.submit("fake_fez", bell_isa(svc), 10)
    svc.job_status(job_id)
    assert waits == [0.1, 0.1]  # submit and job_status: one latency each
    # Eight threads are in their latency wait at once, or the barrier breaks: no lock
    # serialises the waits (one after another, the first would wait alone).
    barrier = threading.Barrier(8, timeout=120)
    parallel = LocalService(config, sleep=lambda seconds: barrier.wait())
    results = [r for _, r in map_unordered(lambda _: parallel.job_status(job_id), range(8),
                                           workers=8)]
    assert [r.state for r in results] == [JobState.QUEUED] * 8


def test_each_public_call_is_one_network_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    svc = LocalService(LocalServiceConfig(root=tmp_path, queue_seconds=0, run_seconds=0))
    job_id = svc.submit("fake_fez", bell_isa(svc), 10)
    calls = []
    network_call = svc._network_call
    monkeypatch.setattr(svc, "_network_call", lambda: calls.append(1) or network_call())
    svc.job_result(job_id)  # checks the status inside, without a second call
    svc.job_status(job_id)
    svc.job_metrics(job_id)
    svc.job_info(job_id)
    svc.find_jobs([])
    svc.usage()
    assert len(calls) == 6


def test_latency_and_rate_limit_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from qcourier.config import Settings
    from qcourier.errors import QcourierError
    from qcourier.services import pool_from_settings

    monkeypatch.setenv("QCOURIER_LOCAL_LATENCY_SECONDS", "0.25")
    monkeypatch.setenv("QCOURIER_LOCAL_RATE_LIMIT", "40")
    config = pool_from_settings(Settings()).get("local").config
    assert config.latency_seconds == 0.25 and config.rate_limit_per_second == 40
    monkeypatch.setenv("QCOURIER_LOCAL_RATE_LIMIT", "")
    assert pool_from_settings(Settings()).get("local").config.rate_limit_per_second is None
    for name, bad in (("QCOURIER_LOCAL_LATENCY_SECONDS", "-1"), ("QCOURIER_LOCAL_RATE_LIMIT", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(QcourierError, match=f"^bad setting {name}: '{bad}' is not valid \\(input should be greater"):
            Settings()
        monkeypatch.delenv(name)


def test_jobs_simulated_from_several_threads_in_a_fresh_process(tmp_path: Path):
    # stim's first sampler, made from several threads at once, deadlocked a concurrent
    # collector; only a fresh process (stim not yet warmed up) shows it.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from pathlib import Path
        from qiskit import QuantumCircuit
        from qcourier.services.workers import map_unordered
        from qcourier.services.local import LocalService, LocalServiceConfig
        from qcourier.circuits.transpile import transpile

        svc = LocalService(LocalServiceConfig(root=Path({str(tmp_path)!r}), queue_seconds=0,
                                              run_seconds=0))
        qc = QuantumCircuit(2, 2)
        qc.h(0)
        qc.cx(0, 1)
        qc.measure([0, 1], [0, 1])
        isa = transpile([qc], svc.backend("fake_fez"))
        ids = [svc.submit("fake_fez", isa, 20) for _ in range(6)]
        results = dict(map_unordered(svc.job_result, ids, workers=6))
        print(sorted(sum(r.counts[0].values()) for r in results.values()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([20] * 6)
