"""The local service: IBM-like jobs simulated with Aer, kept on disk across processes.

A job submitted by one process can be polled and collected by another: everything about a
job lives in files under the service's directory (default ``results/local_service``):

- ``<job_id>.json``: the job's spec (backend, shots, tags, times, seed, injected failure);
- ``<job_id>.qpy``: its ISA circuits;
- ``<job_id>.result.json``: its counts, written once, atomically, by whichever process first
  asks about the job after its run window (under a per-job lock, so two collectors never
  simulate the same job twice).

A job is QUEUED for ``queue_seconds`` after submission, RUNNING for ``run_seconds`` more, and
then DONE (or ERROR, when a failure was injected). Job ids look like IBM's: 20 lowercase
alphanumerics.

Simulation (``services/simulation.py``): each circuit is compacted to the physical qubits it
uses; Clifford circuits are sampled with stim's stabilizer simulator (or Aer's, on request),
others with Aer (statevector, or matrix product states when wide). Noise comes from the
backend's calibration for the used qubits only.

QPU usage is reported from :func:`qcourier.budget.estimate_qpu_seconds`: a per-job overhead
plus, per circuit, a per-circuit overhead plus shots x (circuit duration + repetition delay).
A job that fails by injected system error reports zero usage, as IBM does not charge those.

The fake backends come from ``qiskit_ibm_runtime.fake_provider`` (device snapshots only;
the runtime client itself is used by ``services/ibm.py`` alone).
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from qcourier.files import atomic_write_bytes
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
)

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2

DEFAULT_BACKEND = "fake_fez"
JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
INJECTED_FAILURE_MESSAGE = "Injected failure: the local service simulated a system error."


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
        clifford_engine: ``"stim"`` or ``"aer"``: what samples Clifford circuits.
    """

    root: Path
    queue_seconds: float = 2.0
    run_seconds: float = 1.0
    failure_rate: float = 0.0
    seed: int | None = None
    noise: bool = True
    clifford_engine: str = "stim"


def new_job_id() -> str:
    """A job id shaped like IBM's: 20 lowercase alphanumerics."""
    return "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(20))


@cache
def _fake_backend_classes() -> dict[str, type]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qiskit_ibm_runtime import fake_provider
        from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    found = {}
    for attr in dir(fake_provider):
        cls = getattr(fake_provider, attr)
        if isinstance(cls, type) and issubclass(cls, FakeBackendV2) and cls is not FakeBackendV2:
            name = getattr(cls, "backend_name", None)
            if name and name not in found:
                found[name] = cls
    return found


@cache
def fake_backend(name: str) -> BackendV2:
    """The fake backend called ``name`` (loaded once per process).

    Raises:
        ServiceError: no fake backend has that name (the message lists them).
    """
    classes = _fake_backend_classes()
    if name not in classes:
        raise ServiceError(
            f"unknown backend {name!r} on the local service; choose one of: "
            + ", ".join(sorted(classes))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classes[name]()


def _backend_size(cls: type) -> int:
    conf = Path(cls.dirname) / cls.conf_filename
    return int(json.loads(conf.read_text())["n_qubits"])


class LocalService(QuantumService):
    """An Aer-backed service whose jobs persist on disk (see the module docstring)."""

    name = "local"
    simulated = True

    def __init__(self, config: LocalServiceConfig):
        self.config = config
        self.root = Path(config.root)

    # -- backends ---------------------------------------------------------------------------

    def backends(self) -> list[BackendInfo]:
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
        props = fake_backend(backend).properties()
        return json.loads(json.dumps(props.to_dict(), default=str))

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

        from qcourier.budget import estimate_qpu_seconds

        target = fake_backend(backend)
        self.root.mkdir(parents=True, exist_ok=True)
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
            "fail": failed,
            "num_circuits": len(circuits),
            "usage_seconds": estimate_qpu_seconds(circuits, shots, target),
        }
        from io import BytesIO

        buffer = BytesIO()
        qpy.dump(list(circuits), buffer)
        atomic_write_bytes(self._path(job_id, ".qpy"), buffer.getvalue())
        # The spec is written last: a job exists once its spec does.
        atomic_write_bytes(self._path(job_id, ".json"), json.dumps(spec, indent=1).encode())
        return job_id

    def job_status(self, job_id: str) -> JobStatusReport:
        spec = self._spec(job_id)
        state = self._nominal_state(spec)
        if state is JobState.DONE and spec["fail"]:
            return JobStatusReport(job_id, JobState.ERROR, INJECTED_FAILURE_MESSAGE, 1010)
        if state is JobState.DONE:
            try:
                self._ensure_simulated(spec)
            except Exception as exc:  # the simulator's failure is the job's failure
                return JobStatusReport(job_id, JobState.ERROR, f"simulation failed: {exc}")
        return JobStatusReport(job_id, state)

    def job_result(self, job_id: str) -> JobResult:
        report = self.job_status(job_id)
        if report.state is not JobState.DONE:
            raise ServiceError(f"job {job_id} has no result: it is {report.state.value}")
        data = json.loads(self._path(job_id, ".result.json").read_text())
        return JobResult(counts=data["counts"], metadata=data["metadata"])

    def job_metrics(self, job_id: str) -> JobMetrics:
        spec = self._spec(job_id)
        created = datetime.fromisoformat(spec["created"])
        running = created + timedelta(seconds=spec["queue_seconds"])
        finished = running + timedelta(seconds=spec["run_seconds"])
        now = datetime.now(UTC)
        done = now >= finished
        return JobMetrics(
            created=created,
            running=running if now >= running else None,
            finished=finished if done else None,
            usage_seconds=(0.0 if spec["fail"] else spec["usage_seconds"]) if done else None,
        )

    def find_jobs(self, tags: Sequence[str], created_after: datetime | None = None) -> list[str]:
        wanted = set(tags)
        return [
            spec["job_id"]
            for spec in self._all_specs()
            if wanted.issubset(spec["tags"])
            and (created_after is None or datetime.fromisoformat(spec["created"]) > created_after)
        ]

    def job_info(self, job_id: str) -> JobInfo:
        from qiskit import qpy

        spec = self._spec(job_id)
        with open(self._path(job_id, ".qpy"), "rb") as fh:
            circuits = list(qpy.load(fh))
        return JobInfo(job_id, spec["backend"], list(spec["tags"]),
                       datetime.fromisoformat(spec["created"]), int(spec["shots"]), circuits)

    def usage(self) -> InstanceUsage:
        total = 0.0
        for spec in self._all_specs():
            if self._nominal_state(spec) is JobState.DONE and not spec["fail"]:
                total += spec["usage_seconds"]
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
            if path.name.endswith(".result.json"):
                continue
            try:
                specs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return specs

    def _pending_by_backend(self) -> dict[str, int]:
        pending: dict[str, int] = {}
        for spec in self._all_specs():
            if not self._nominal_state(spec).is_final:
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

    def _ensure_simulated(self, spec: dict[str, Any]) -> None:
        job_id = spec["job_id"]
        result_path = self._path(job_id, ".result.json")
        if result_path.exists():
            return
        with FileLock(str(self._path(job_id, ".lock"))):
            if result_path.exists():  # another process simulated it while we waited
                return
            from qiskit import qpy

            from qcourier.services.simulation import simulate_counts

            with open(self._path(job_id, ".qpy"), "rb") as fh:
                circuits = qpy.load(fh)
            target = fake_backend(spec["backend"]).target if spec["noise"] else None
            counts, methods = [], []
            for index, circuit in enumerate(circuits):
                c, method = simulate_counts(circuit, spec["shots"], spec["seed"] + index, target,
                                            engine=self.config.clifford_engine)
                counts.append(c)
                methods.append(method)
            payload = {
                "job_id": job_id,
                "counts": counts,
                "metadata": {"simulator": "aer", "methods": methods, "seed": spec["seed"],
                             "noise": spec["noise"], "backend": spec["backend"]},
            }
            atomic_write_bytes(result_path, json.dumps(payload).encode())
