"""The seam between qcourier and a quantum service: one interface, several implementations.

``LocalService`` (Aer-backed, persistent across processes) and the IBM Quantum service both
implement :class:`QuantumService`. The core talks only to this interface, so tests swap the
service without patching module paths.

Counts convention: one dict per circuit (PUB), keys are bitstrings over all classical bits
in Qiskit order (clbit 0 rightmost) with no spaces, values are shot counts.
"""

from __future__ import annotations

import contextvars
import re
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from qcourier.errors import QcourierError

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2


class ServiceError(QcourierError):
    """A service could not do what was asked.

    Args:
        message: one line for the user.
        http_status: the HTTP status behind the failure, if any.
        retry_after: seconds the service asked us to wait before calling again, if it did.
    """

    #: The HTTP status behind the failure, where there was one (-1: no response).
    http_status: int | None = None
    #: Seconds the service asked us to wait before the next call (``Retry-After``), if any.
    retry_after: float | None = None
    #: Whether the failure proves that the service did nothing (a 429, a 4xx before the job
    #: was created, a connection that was never made): a submission's intent can be settled.
    nothing_done: bool = False

    def __init__(self, message: str = "", *, http_status: int | None = None,
                 retry_after: float | None = None, nothing_done: bool | None = None):
        super().__init__(message)
        if http_status is not None:
            self.http_status = http_status
        if retry_after is not None:
            self.retry_after = retry_after
        if nothing_done is not None:
            self.nothing_done = nothing_done


class JobNotFoundError(ServiceError):
    """The service does not know this job id."""


class TransientServiceError(ServiceError):
    """A failure worth retrying later (network, 5xx, rate limit, timeout).

    A rate limit has ``http_status == 429`` and, when the service said, ``retry_after``.
    """


class UnreachableError(TransientServiceError):
    """The service could not be reached at all (DNS, connection refused, TLS, proxy)."""


class DeadlineExceededError(TransientServiceError):
    """The command's time for service calls (``QCOURIER_IBM_DEADLINE``) ran out."""


class AuthenticationError(ServiceError):
    """The service rejected the credentials: retrying will not help."""

    nothing_done = True


class InvalidJobIdError(ServiceError):
    """A job id that a service, a listing, a tag or a store gave is not a safe job id."""


#: What a job id may look like: IBM's are 20 lowercase alphanumerics (older ones 24 hex
#: digits or UUIDs), the local service's 20 lowercase alphanumerics. Nothing else is used
#: as a file name or put in a URL.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_job_id(job_id: object, source: str) -> str:
    """``job_id`` if it is a safe job id (:data:`JOB_ID_PATTERN`).

    Args:
        source: where it came from, for the message (e.g. "IBM Quantum's answer to a submission").

    Raises:
        InvalidJobIdError: it is not a string of that shape.
    """
    if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
        return job_id
    shown = repr(job_id)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidJobIdError(f"{source} gave the job id {shown}, which is not a job id "
                            "(1-64 letters, digits, '_' or '-'); refused")


class BudgetExceededError(ServiceError):
    """The service refused a job because the instance's usage limit is reached."""

    nothing_done = True


class CallTime:
    """Seconds one scope may spend in a service's calls, retries and backoff included.

    A command (``qsubmit``) or one job of a collection (``qcollect``) gets one per service:
    once spent, the service stops retrying and fails with :class:`DeadlineExceededError`.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = 0.0
        self._lock = threading.Lock()

    def remaining(self) -> float:
        with self._lock:
            return self.seconds - self.spent

    def spend(self, seconds: float) -> None:
        with self._lock:
            self.spent += max(0.0, seconds)


#: The current scope's :class:`CallTime` per service (by ``id``), or ``None`` outside any
#: scope (then a service uses one of its own for its whole life).
_CALL_SCOPE: contextvars.ContextVar[dict[int, CallTime] | None] = contextvars.ContextVar(
    "qcourier_call_scope", default=None)


@contextmanager
def call_time_scope() -> Iterator[None]:
    """Give every service called inside this block (in this thread) a fresh deadline."""
    token = _CALL_SCOPE.set({})
    try:
        yield
    finally:
        _CALL_SCOPE.reset(token)


def scoped_call_time(owner: object, seconds: float, default: CallTime) -> CallTime:
    """``owner``'s :class:`CallTime` in the current scope (made with ``seconds``), or
    ``default`` outside any scope."""
    scope = _CALL_SCOPE.get()
    if scope is None:
        return default
    return scope.setdefault(id(owner), CallTime(seconds))


class JobState(StrEnum):
    """A job's state as services report it (IBM Runtime's vocabulary)."""

    INITIALIZING = "INITIALIZING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    CANCELLED = "CANCELLED"
    ERROR = "ERROR"

    @property
    def is_final(self) -> bool:
        """Whether the job will change no more."""
        return self in (JobState.DONE, JobState.CANCELLED, JobState.ERROR)


@dataclass(frozen=True)
class BackendInfo:
    """What a service says of one of its backends."""

    name: str
    num_qubits: int
    operational: bool = True
    pending_jobs: int = 0


def ignore_warnings_from(*modules: str) -> None:
    """Leave out, for the whole process, the warnings that ``modules`` (and the modules in them)
    raise or are blamed for: their users cannot act on them.

    A filter set (again: setting it twice keeps one) rather than ``warnings.catch_warnings()``
    around each call, which swaps the process-wide filter list in and out, so that on worker
    threads one thread's exit restores the filters another is using.
    """
    names = "|".join(re.escape(module) for module in modules)
    warnings.filterwarnings("ignore", module=rf"({names})(\.|$)")


@dataclass(frozen=True)
class JobStatusReport:
    """A job's state and, for a failed job, why."""

    job_id: str
    state: JobState
    error_message: str | None = None
    reason_code: int | None = None


@dataclass(frozen=True)
class JobMetrics:
    """Timestamps and QPU usage of a job (``None`` where not known yet)."""

    created: datetime | None = None
    running: datetime | None = None
    finished: datetime | None = None
    usage_seconds: float | None = None

    @property
    def queue_seconds(self) -> float | None:
        """Seconds between creation and the start of execution."""
        if self.created is None or self.running is None:
            return None
        return max(0.0, (self.running - self.created).total_seconds())


@dataclass(frozen=True)
class JobResult:
    """The counts of a finished job, one dict per circuit, and what the service adds."""

    counts: list[dict[str, int]]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shots(self) -> list[int]:
        """Shots actually returned per circuit."""
        return [sum(c.values()) for c in self.counts]


@dataclass(frozen=True)
class JobInfo:
    """What the service itself knows of a job: enough to rebuild a lost ledger record."""

    job_id: str
    backend: str
    tags: list[str]
    created: datetime | None
    shots: int | None
    circuits: list[Any]


@dataclass(frozen=True)
class InstanceUsage:
    """QPU seconds the instance has used, as the service reports them."""

    usage_seconds: float
    limit_seconds: float | None = None


class QuantumService(ABC):
    """What every service offers. Methods raise :class:`ServiceError` subclasses."""

    #: ``"local"`` or ``"ibm"``: recorded on every ledger line.
    name: ClassVar[str]
    #: Which configured API key this service uses (``None`` where keys do not apply).
    api_key_index: int | None = None
    #: Whether results are simulated (then calibration snapshots are fixed device data, and
    #: their age means nothing).
    simulated: ClassVar[bool] = False
    #: Whether every method already retries its transient failures (in
    #: ``concurrency.retry_call``, behind a rate gate of its own): a caller then adds no
    #: retry loop, so each call goes through exactly one. ``False``: a caller that wants
    #: 429s waited out (the collector) retries them itself, with one gate for the service.
    retries_calls: ClassVar[bool] = False

    @abstractmethod
    def backends(self) -> list[BackendInfo]:
        """The backends this service can run jobs on."""

    @abstractmethod
    def backend(self, name: str) -> BackendV2:
        """A backend object to transpile for (its target and coupling map).

        Raises:
            ServiceError: no backend of that name (the message lists the valid ones).
        """

    def least_busy(self, min_qubits: int) -> str:
        """The operational backend with the fewest pending jobs and enough qubits."""
        candidates = [b for b in self.backends() if b.operational and b.num_qubits >= min_qubits]
        if not candidates:
            raise ServiceError(f"no operational backend has {min_qubits} or more qubits")
        return min(candidates, key=lambda b: (b.pending_jobs, b.name)).name

    @abstractmethod
    def submit(
        self,
        backend: str,
        circuits: Sequence[QuantumCircuit],
        shots: int,
        tags: Sequence[str] = (),
        max_execution_time: int | None = None,
    ) -> str:
        """Submit ISA circuits as one job in plain job mode; return the job id."""

    @abstractmethod
    def job_status(self, job_id: str) -> JobStatusReport:
        """The job's state now.

        Raises:
            JobNotFoundError: the service does not know the job.
        """

    def job_states(self, job_ids: Sequence[str],
                   created_after: datetime | None = None) -> dict[str, JobStatusReport]:
        """The states of as many of ``job_ids`` as the service can tell in a few calls.

        A service with a listing call answers for many jobs at once; a job missing from the
        answer is to be asked about with :meth:`job_status`. A state given here is the one
        :meth:`job_status` would give (for ERROR and CANCELLED, with its error message and
        reason code). The default knows no bulk call and returns ``{}``.

        Args:
            job_ids: the jobs asked about.
            created_after: no job asked about was created before this (lets a listing stop
                early); ``None`` when not known.

        Returns:
            Reports keyed by job id; unknown ids are left out.

        Raises:
            ServiceError: the listing failed (e.g. ``TransientServiceError``, 429 included).
        """
        return {}

    @abstractmethod
    def job_result(self, job_id: str) -> JobResult:
        """Counts of a job in state DONE."""

    @abstractmethod
    def job_metrics(self, job_id: str) -> JobMetrics:
        """Timestamps and usage of the job."""

    @abstractmethod
    def find_jobs(self, tags: Sequence[str], created_after: datetime | None = None) -> list[str]:
        """Ids of the jobs carrying all of ``tags`` (created after ``created_after``)."""

    @abstractmethod
    def job_info(self, job_id: str) -> JobInfo:
        """The job's backend, tags, creation time, shots and ISA circuits."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Cancel a job that has not finished.

        Raises:
            JobNotFoundError: the service does not know the job.
            ServiceError: the job is already final, or the service refused (the message
                says which); a service that cannot cancel says so.
        """
        raise ServiceError(f"the {self.name} service cannot cancel jobs")

    @abstractmethod
    def usage(self) -> InstanceUsage:
        """QPU usage of the instance."""

    @abstractmethod
    def calibration(self, backend: str) -> dict[str, Any]:
        """The backend's calibration now, as a JSON-able dict in the IBM properties shape."""
