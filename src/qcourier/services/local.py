"""The local service: IBM-like jobs simulated with Aer, kept on disk across processes.

A job submitted by one process can be polled and collected by another: everything about a
job lives in files under the service's directory (default ``results/local_service``):

- ``<job_id>.json``: the job's spec (backend, shots, tags, times, seed, injected failure);
- ``<job_id>.qpy``: its ISA circuits;
- ``<job_id>.result.json``: its counts, written once, atomically, by whichever process first
  asks about the job after its run window (under a per-job lock, so two collectors never
  simulate the same job twice);
- ``<job_id>.error.json``: written instead, atomically, when that simulation fails: the job
  is then ERROR for good, for every later ``job_status``, ``job_states`` and ``job_result``.

A job is QUEUED for ``queue_seconds`` after submission, RUNNING for ``run_seconds`` more, and
then DONE (or ERROR, when a failure was injected). Job ids look like IBM's: 20 lowercase
alphanumerics.

``job_states`` answers for many jobs from their spec files, like IBM's job listing, without
simulating: a nominally done job whose simulation has not failed (yet) is DONE there, and
becomes ERROR once ``job_status`` or ``job_result`` has tried to simulate it and failed.

Network behaviour can be emulated, per :class:`LocalService` object and thread-safely: every
call that would be a network call on IBM sleeps ``latency_seconds`` first (in parallel across
threads, like a server with latency), and ``rate_limit_per_second`` refuses calls over the
limit with HTTP 429 and a ``retry_after``, as IBM's API gateway does.

Simulation (``services/simulation.py``): each circuit is compacted to the physical qubits it
uses; Clifford circuits are sampled with stim's stabilizer simulator (or Aer's, on request),
others with Aer (statevector, or matrix product states when wide). Noise is the shared
device model (``qcourier.circuits.noise``: gate depolarizing, readout and reset flips, T1/T2 idle)
from the backend's calibration snapshot for the used qubits only, times ``noise_scale``.

QPU usage is reported from :func:`qcourier.circuits.estimate.estimate_qpu_seconds`: a per-job overhead
plus, per circuit, a per-circuit overhead plus shots x (circuit duration + repetition delay),
times ``usage_factor`` (fixed in the job's spec when it is submitted: real usage is never
exactly the estimate). A job that fails by injected system error reports zero usage, as IBM
does not charge those. As on IBM, where a job's usage status stays ``pending`` for a while
after the job is final, ``usage_delay_seconds`` keeps a finished job's usage unknown
(``None``, and out of the instance's ``usage``) until that long after it finished. The delay
is the asking process's setting, not the job's: one process can see a job's usage pending
and the next its figure, without waiting.

The fake backends come from ``qiskit_ibm_runtime.fake_provider`` (device snapshots only;
the runtime client itself is used by ``services/ibm.py`` alone).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from qcourier.files import atomic_write_bytes, make_output_directory
from qcourier.services.base import (
    BackendInfo,
    InstanceUsage,
    JobInfo,
    JobMetrics,
    JobNotFoundError,
    JobResult,
    JobState,
    JobStatusReport,
    QuantumService,
    ServiceError,
    TransientServiceError,
)
from qcourier.services.fake_backends import (
    NOISE_SCALE_KEY,
    _backend_size,
    _fake_backend_classes,
    fake_backend,
    local_calibration,
)
from qcourier.services.workers import CPU_LOCK

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2

DEFAULT_BACKEND = "fake_fez"
JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
INJECTED_FAILURE_MESSAGE = "Injected failure: the local service simulated a system error."
INJECTED_FAILURE_REASON_CODE = 1010
#: How many job ids one ``job_states`` call answers for per (emulated) network call, as IBM's
#: job listing pages 100 jobs at a time.
STATES_PAGE_SIZE = 100


@dataclass(frozen=True)
class LocalServiceConfig:
    """How the local service behaves.

    Attributes:
        root: directory holding the service's jobs.
        queue_seconds: time a job stays QUEUED after submission.
        run_seconds: time it then stays RUNNING.
        failure_rate: probability that a job ends in ERROR (a simulated system error).
        seed: base seed; with it, the same circuits give the same counts in every run.
        noise: whether to simulate the backend's noise.
        noise_scale: multiplier on every simulated error rate (``QCOURIER_LOCAL_NOISE_SCALE``).
        clifford_engine: ``"stim"`` or ``"aer"``: what samples Clifford circuits.
        latency_seconds: how long every emulated network call sleeps before it is served.
        rate_limit_per_second: calls allowed per second (sliding window) before HTTP 429;
            ``None``: no limit. See :class:`SlidingWindowLimiter`.
        usage_factor: a job's usage is its estimate times this (fixed at submission).
        usage_delay_seconds: how long after a job finished its usage is still reported
            pending (``None``), as IBM's usage status can be (see the module docstring).
    """

    root: Path
    queue_seconds: float = 2.0
    run_seconds: float = 1.0
    failure_rate: float = 0.0
    seed: int | None = None
    noise: bool = True
    noise_scale: float = 1.0
    clifford_engine: str = "stim"
    latency_seconds: float = 0.0
    rate_limit_per_second: float | None = None
    usage_factor: float = 1.0
    usage_delay_seconds: float = 0.0


class SlidingWindowLimiter:
    """At most ``per_second`` calls in any window of one second (thread-safe).

    The window holds ``floor(per_second)`` calls (at least one) and lasts that many calls
    divided by ``per_second`` seconds: exactly one second for a whole number of calls, two for
    0.5/s. Refused calls are not counted, as an API gateway's limiter (nginx ``limit_req``,
    a token bucket) does not count them: a client that keeps asking while refused is served
    again as soon as the window frees a slot, and the ``retry_after`` it is given is exact.

    Args:
        per_second: the limit (> 0).
        clock: a monotonic clock (for tests).
    """

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        if not per_second > 0:
            raise ValueError(f"a rate limit must be > 0 calls/s, not {per_second!r}")
        self.per_second = per_second
        self.capacity = max(1, math.floor(per_second))
        self.window = self.capacity / per_second
        self._clock = clock
        self._admitted: deque[float] = deque()
        self._lock = threading.Lock()

    def admit(self) -> float | None:
        """Count a call if the window has room (``None``); else the seconds until it has."""
        with self._lock:
            now = self._clock()
            while self._admitted and self._admitted[0] <= now - self.window:
                self._admitted.popleft()
            if len(self._admitted) < self.capacity:
                self._admitted.append(now)
                return None
            return max(self._admitted[0] + self.window - now, 1e-3)


def new_job_id() -> str:
    """A job id shaped like IBM's: 20 lowercase alphanumerics."""
    return "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(20))


class LocalService(QuantumService):
    """An Aer-backed service whose jobs persist on disk (see the module docstring)."""

    name = "local"
    simulated = True

    def __init__(self, config: LocalServiceConfig):
        self.config = config
        self.root = Path(config.root)
        self._limiter = (SlidingWindowLimiter(config.rate_limit_per_second)
                         if config.rate_limit_per_second is not None else None)

    def _network_call(self) -> None:
        """What IBM's network adds to a call: latency, then its rate limit.

        The sleep comes first, so the limiter counts a call when it "reaches the server" and a
        refusal's ``retry_after`` is fresh when the caller gets it.

        Raises:
            TransientServiceError: over the rate limit (``http_status`` 429, ``retry_after``).
        """
        if self.config.latency_seconds > 0:
            time.sleep(self.config.latency_seconds)
        if self._limiter is not None:
            wait = self._limiter.admit()
            if wait is not None:
                raise TransientServiceError(
                    f"local service: rate limit of {self._limiter.per_second:g} calls/s exceeded "
                    f"(HTTP 429); retry in {wait:.2f} s",
                    http_status=429, retry_after=wait)

    # -- backends ---------------------------------------------------------------------------

    def backends(self) -> list[BackendInfo]:
        self._network_call()
        pending = self._pending_by_backend()
        return [
            BackendInfo(name, _backend_size(cls), True, pending.get(name, 0))
            for name, cls in sorted(_fake_backend_classes().items())
        ]

    def backend(self, name: str) -> BackendV2:
        return fake_backend(name)

    def least_busy(self, min_qubits: int) -> str:
        # Every local backend is equally idle; prefer the documented default.
        if DEFAULT_BACKEND in _fake_backend_classes() and fake_backend(DEFAULT_BACKEND).num_qubits >= min_qubits:
            return DEFAULT_BACKEND
        return super().least_busy(min_qubits)

    def calibration(self, backend: str) -> dict[str, Any]:
        """The fake backend's snapshot; with ``noise_scale != 1`` it declares the scale
        (``qcourier_noise_scale``), which :meth:`DeviceNoise.from_snapshot` applies, so a
        decoder reading the recorded snapshot models the device the simulator samples."""
        self._network_call()
        snapshot = local_calibration(backend)
        if self.config.noise_scale != 1.0:
            snapshot[NOISE_SCALE_KEY] = self.config.noise_scale
        return snapshot

    # -- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        backend: str,
        circuits: Sequence[QuantumCircuit],
        shots: int,
        tags: Sequence[str] = (),
        max_execution_time: int | None = None,
    ) -> str:
        from qiskit import qpy

        from qcourier.circuits.estimate import estimate_qpu_seconds

        target = fake_backend(backend)
        self._network_call()
        make_output_directory(self.root)
        job_id = new_job_id()
        seed = self._seed_for(job_id, circuits)
        failed = random.Random(seed).random() < self.config.failure_rate
        spec = {
            "job_id": job_id,
            "backend": backend,
            "shots": shots,
            "tags": list(tags),
            "max_execution_time": max_execution_time,
            "created": datetime.now(UTC).isoformat(),
            "queue_seconds": self.config.queue_seconds,
            "run_seconds": self.config.run_seconds,
            "seed": seed,
            "noise": self.config.noise,
            "noise_scale": self.config.noise_scale,
            "fail": failed,
            "num_circuits": len(circuits),
            "usage_seconds": round(estimate_qpu_seconds(circuits, shots, target)
                                   * self.config.usage_factor, 6),
        }
        from io import BytesIO

        buffer = BytesIO()
        qpy.dump(list(circuits), buffer)
        atomic_write_bytes(self._path(job_id, ".qpy"), buffer.getvalue())
        # The spec is written last: a job exists once its spec does.
        atomic_write_bytes(self._path(job_id, ".json"), json.dumps(spec, indent=1).encode())
        return job_id

    def job_status(self, job_id: str) -> JobStatusReport:
        self._network_call()
        return self._report(self._spec(job_id), simulate=True)

    def job_states(self, job_ids: Sequence[str],
                   created_after: datetime | None = None) -> dict[str, JobStatusReport]:
        # created_after lets IBM's listing stop early; reading spec files needs no such help.
        wanted = list(dict.fromkeys(job_ids))
        states: dict[str, JobStatusReport] = {}
        for start in range(0, len(wanted), STATES_PAGE_SIZE):
            self._network_call()
            for job_id in wanted[start:start + STATES_PAGE_SIZE]:
                try:
                    spec = self._spec(job_id)
                except (JobNotFoundError, OSError, ValueError):
                    continue  # unknown (or unreadable): left to job_status
                states[job_id] = self._report(spec, simulate=False)
        return states

    def job_result(self, job_id: str) -> JobResult:
        self._network_call()
        report = self._report(self._spec(job_id), simulate=True)
        if report.state is not JobState.DONE:
            why = f" ({report.error_message})" if report.error_message else ""
            raise ServiceError(f"job {job_id} has no result: it is {report.state.value}{why}")
        data = json.loads(self._path(job_id, ".result.json").read_text())
        return JobResult(counts=data["counts"], metadata=data["metadata"])

    def job_metrics(self, job_id: str) -> JobMetrics:
        self._network_call()
        return self._metrics(self._spec(job_id))

    def _metrics(self, spec: dict[str, Any]) -> JobMetrics:
        job_id = spec["job_id"]
        created = datetime.fromisoformat(spec["created"])
        running = created + timedelta(seconds=spec["queue_seconds"])
        finished = running + timedelta(seconds=spec["run_seconds"])
        now = datetime.now(UTC)
        cancelled = self._cancelled_at(job_id)
        if cancelled is not None and cancelled < finished:
            # A user's cancel is charged for the run up to that point (IBM's rule).
            ran = max(0.0, (cancelled - running).total_seconds())
            share = min(1.0, ran / spec["run_seconds"]) if spec["run_seconds"] else 0.0
            return JobMetrics(created=created, running=running if cancelled > running else None,
                              finished=cancelled,
                              usage_seconds=self._usage_if_known(
                                  spec["usage_seconds"] * share, cancelled, now))
        done = now >= finished
        return JobMetrics(
            created=created,
            running=running if now >= running else None,
            finished=finished if done else None,
            usage_seconds=self._usage_if_known(0.0 if spec["fail"] else spec["usage_seconds"],
                                               finished, now) if done else None,
        )

    def _usage_if_known(self, seconds: float, finished: datetime, now: datetime) -> float | None:
        """``seconds``, or ``None`` while the usage is still pending (``usage_delay_seconds``)."""
        if (now - finished).total_seconds() < self.config.usage_delay_seconds:
            return None
        return seconds

    def _cancelled_at(self, job_id: str) -> datetime | None:
        try:
            data = json.loads(self._path(job_id, ".cancel.json").read_text())
        except FileNotFoundError:
            return None
        return datetime.fromisoformat(data["cancelled"])

    def find_jobs(self, tags: Sequence[str], created_after: datetime | None = None) -> list[str]:
        self._network_call()
        wanted = set(tags)
        return [
            spec["job_id"]
            for spec in self._all_specs()
            if wanted.issubset(spec["tags"])
            and (created_after is None or datetime.fromisoformat(spec["created"]) > created_after)
        ]

    def job_info(self, job_id: str) -> JobInfo:
        from qiskit import qpy

        self._network_call()
        spec = self._spec(job_id)
        with open(self._path(job_id, ".qpy"), "rb") as fh:
            circuits = list(qpy.load(fh))
        return JobInfo(job_id, spec["backend"], list(spec["tags"]),
                       datetime.fromisoformat(spec["created"]), int(spec["shots"]), circuits)

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job: it ends CANCELLED, charged for the run so far."""
        self._network_call()
        spec = self._spec(job_id)
        with FileLock(str(self._path(job_id, ".lock"))):
            report = self._report(spec, simulate=False)
            if report.state.is_final:
                raise ServiceError(f"job {job_id} is already final ({report.state.value}); "
                                   "it cannot be cancelled")
            atomic_write_bytes(self._path(job_id, ".cancel.json"), json.dumps(
                {"job_id": job_id, "cancelled": datetime.now(UTC).isoformat()}).encode())

    def usage(self) -> InstanceUsage:
        self._network_call()
        total = 0.0
        for spec in self._all_specs():
            # What a job's metrics say it was charged; nothing while still pending.
            ended = (self._cancelled_at(spec["job_id"]) is not None
                     or self._nominal_state(spec) is JobState.DONE)
            if ended:
                total += self._metrics(spec).usage_seconds or 0.0
        return InstanceUsage(usage_seconds=total)

    # -- internals --------------------------------------------------------------------------

    def _path(self, job_id: str, suffix: str) -> Path:
        return self.root / f"{job_id}{suffix}"

    def _spec(self, job_id: str) -> dict[str, Any]:
        if not (len(job_id) == 20 and all(c in JOB_ID_ALPHABET for c in job_id)):
            raise JobNotFoundError(f"job {job_id!r} not found on the local service (not a job id)")
        try:
            return json.loads(self._path(job_id, ".json").read_text())
        except FileNotFoundError:
            raise JobNotFoundError(
                f"job {job_id} not found on the local service at {self.root}"
            ) from None

    def _all_specs(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        specs = []
        for path in sorted(self.root.glob("*.json")):
            if "." in path.stem:  # <id>.result.json, <id>.error.json: not specs
                continue
            try:
                specs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return specs

    def _pending_by_backend(self) -> dict[str, int]:
        pending: dict[str, int] = {}
        for spec in self._all_specs():
            if not (self._nominal_state(spec).is_final or self._cancelled_at(spec["job_id"])):
                pending[spec["backend"]] = pending.get(spec["backend"], 0) + 1
        return pending

    @staticmethod
    def _nominal_state(spec: dict[str, Any]) -> JobState:
        elapsed = (datetime.now(UTC) - datetime.fromisoformat(spec["created"])).total_seconds()
        if elapsed < spec["queue_seconds"]:
            return JobState.QUEUED
        if elapsed < spec["queue_seconds"] + spec["run_seconds"]:
            return JobState.RUNNING
        return JobState.DONE

    def _seed_for(self, job_id: str, circuits: Sequence[QuantumCircuit]) -> int:
        if self.config.seed is None:
            material = job_id
        else:
            from qcourier.provenance import circuit_hash

            material = f"{self.config.seed}:{circuit_hash(circuits)}"
        return int.from_bytes(hashlib.sha256(material.encode()).digest()[:4], "big")

    def _report(self, spec: dict[str, Any], simulate: bool) -> JobStatusReport:
        """The job's state; with ``simulate``, a done job is simulated first if not yet.

        Without ``simulate`` (a listing), a done job whose simulation has not failed is DONE.
        """
        job_id = spec["job_id"]
        if self._cancelled_at(job_id) is not None:
            return JobStatusReport(job_id, JobState.CANCELLED, "cancelled by the user")
        state = self._nominal_state(spec)
        if state is not JobState.DONE:
            return JobStatusReport(job_id, state)
        if spec["fail"]:
            return JobStatusReport(job_id, JobState.ERROR, INJECTED_FAILURE_MESSAGE,
                                   INJECTED_FAILURE_REASON_CODE)
        failure = self._simulate_once(spec) if simulate else self._simulation_failure(job_id)
        if failure is not None:
            return JobStatusReport(job_id, JobState.ERROR, failure)
        return JobStatusReport(job_id, JobState.DONE)

    def _simulation_failure(self, job_id: str) -> str | None:
        """The error message of the job's failed simulation, if it failed."""
        try:
            return str(json.loads(self._path(job_id, ".error.json").read_text())["error"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # a damaged marker is still a failure
            return "simulation failed"

    def _simulate_once(self, spec: dict[str, Any]) -> str | None:
        """Simulate the job unless that was done; its failure message if it failed, now or before.

        A failure is written down (``<job_id>.error.json``) so that the job stays ERROR: a
        listing, which never simulates, must agree with every later status.
        """
        job_id = spec["job_id"]
        if self._path(job_id, ".result.json").exists():
            return None
        failure = self._simulation_failure(job_id)
        if failure is not None:
            return failure
        with FileLock(str(self._path(job_id, ".lock"))):
            # Another process may have settled the job while we waited for the lock.
            if self._path(job_id, ".result.json").exists():
                return None
            failure = self._simulation_failure(job_id)
            if failure is not None:
                return failure
            try:
                with CPU_LOCK:  # one simulation at a time, never beside an analysis
                    self._simulate(spec)
            except Exception as exc:  # the simulator's failure is the job's failure
                failure = f"simulation failed: {exc}"
                atomic_write_bytes(self._path(job_id, ".error.json"),
                                   json.dumps({"job_id": job_id, "error": failure}).encode())
                return failure
        return None

    def _simulate(self, spec: dict[str, Any]) -> None:
        """Simulate the job and write its result (the caller holds the job's lock)."""
        from qiskit import qpy

        from qcourier.services.simulation import simulate_counts

        job_id = spec["job_id"]
        with open(self._path(job_id, ".qpy"), "rb") as fh:
            circuits = qpy.load(fh)
        # The noise is the shared device model from the backend's calibration snapshot: the
        # one ``calibration()`` returns (and the ledger records), so a decoder can model it.
        calibration = local_calibration(spec["backend"]) if spec["noise"] else None
        dt = fake_backend(spec["backend"]).dt if spec["noise"] else None
        counts, methods = [], []
        for index, circuit in enumerate(circuits):
            c, method = simulate_counts(circuit, spec["shots"], spec["seed"] + index, calibration,
                                        engine=self.config.clifford_engine,
                                        noise_scale=spec.get("noise_scale", 1.0), dt=dt)
            counts.append(c)
            methods.append(method)
        payload = {
            "job_id": job_id,
            "counts": counts,
            "metadata": {"simulator": "aer", "methods": methods, "seed": spec["seed"],
                         "noise": spec["noise"], "backend": spec["backend"]},
        }
        atomic_write_bytes(self._path(job_id, ".result.json"), json.dumps(payload).encode())
