"""IBM Quantum through qiskit-ibm-runtime. The only module that imports ``qiskit_ibm_runtime``.

Jobs run in plain job mode: ``SamplerV2(mode=backend)``, never a Session or a Batch (on the
Open Plan a session is charged by wall-clock time). SamplerV2 is deprecated in favour of the
client-side executor sampler since 0.50; qcourier keeps the server-side sampler program,
whose job format the service and its metrics describe, and silences the client's warnings
so users never see them.

Every call to the service is bounded: it runs on a pool of long-lived daemon threads
(``IBMConnection.workers``, default 8, shared by the process) and is abandoned after
``timeout_seconds`` (the client has no read timeout of its own), which makes a hung server a
:class:`TransientServiceError` — the job is simply polled again next time. Several threads
(a concurrent collector) can call one :class:`IBMService` at once.

This adapter owns the retries of its calls (it knows the HTTP status and ``Retry-After``):
one loop, :func:`qcourier.services.workers.retry_call` with the connection's
:class:`~qcourier.services.workers.RetryPolicy`, and no other — the client's own transport
retries are turned off, and the collector does not retry a service that retries itself.
Transient failures (connection errors, HTTP 5xx, 429, timeouts) are retried
``retries`` times with exponential backoff and jitter, within ``QCOURIER_IBM_DEADLINE``; a
submission only when nothing can have been made. A 429 holds every call of that service,
from any thread, until its ``Retry-After`` has passed (a
:class:`~qcourier.services.workers.RateGate`), so eight threads do not keep hammering a
rate-limited server; the error carries ``retry_after``. Each retry is logged on
``qcourier.retry``. A rejected token is an :class:`AuthenticationError` at once, without
retries. Error messages name the key by its index and variable, and any text from the client
is scrubbed of the token.

``job_states`` reads many jobs' states from one listing (``GET /jobs``, 100 a page) instead of
one ``GET /jobs/{id}`` each.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from qcourier.config import ApiKey
from qcourier.services.base import (
    AuthenticationError,
    BackendInfo,
    BudgetExceededError,
    CallTime,
    DeadlineExceededError,
    InstanceUsage,
    JobInfo,
    JobMetrics,
    JobNotFoundError,
    JobResult,
    JobState,
    JobStatusReport,
    ignore_warnings_from,
    QuantumService,
    ServiceError,
    TransientServiceError,
    UnreachableError,
    check_job_id,
    scoped_call_time,
)
from qcourier.services.workers import RateGate, RetryPolicy, WorkerPool, retry_call

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({-1, 408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
#: The longest message text kept from the client (its messages nest whole response bodies).
DETAIL_CHARS = 160
#: Jobs per page of the job listing (``job_states``), and the most pages one call reads: a
#: job older than that many of the key's newer qcourier jobs is asked about on its own.
LISTING_PAGE_SIZE = 100
LISTING_MAX_PAGES = 50


@dataclass(frozen=True)
class IBMConnection:
    """How to reach IBM Quantum.

    Attributes:
        channel: ``ibm_quantum_platform`` (default) or ``ibm_cloud``.
        url: a Runtime-compatible API base URL used verbatim (private endpoints, emulators);
            ``None`` for IBM's own.
        timeout_seconds: the longest any one call may take.
        retries: how many times a transient failure is retried (see :attr:`retry_policy`).
        backoff_seconds: the first retry's delay when the service named none; each next one
            doubles it (plus a little random jitter).
        max_retry_after_seconds: the longest ``Retry-After`` (or backoff) honoured.
        workers: how many client calls may run at once (the threads that run them are
            shared by the process, which keeps the largest number any connection asked for).
        deadline_seconds: the most time one command (``qsubmit``), or one job of a
            collection, may spend in this service's calls, retries and backoff included;
            then it stops retrying (:class:`DeadlineExceededError`).
    """

    channel: str = "ibm_quantum_platform"
    url: str | None = None
    timeout_seconds: float = 60.0
    retries: int = 3
    backoff_seconds: float = 1.0
    max_retry_after_seconds: float = 60.0
    workers: int = 8
    deadline_seconds: float = 120.0

    @property
    def retry_policy(self) -> RetryPolicy:
        """The one retry policy of this connection's calls."""
        return RetryPolicy(attempts=self.retries + 1, backoff_seconds=self.backoff_seconds,
                           max_wait_seconds=self.max_retry_after_seconds)


class IBMService(QuantumService):
    """IBM Quantum for one API key (or the saved qiskit account when ``key`` is ``None``)."""

    name = "ibm"
    retries_calls = True

    def __init__(self, key: ApiKey | None, connection: IBMConnection | None = None):
        self.key = key
        self.connection = connection or IBMConnection()
        self.api_key_index = key.index if key is not None else 0
        self._client: Any = None
        self._connect_lock = threading.Lock()
        # Job handles by id, shared by every thread calling this service.
        self._jobs: dict[str, Any] = {}
        self._jobs_lock = threading.Lock()
        # The client's backend objects by name, with when each was fetched.
        self._backends: dict[str, tuple[float, Any]] = {}
        # Held after a 429 so that every thread waits out the Retry-After.
        self._gate = RateGate()
        # Time for calls outside any scope (base.call_time_scope): the whole command's.
        self._call_time = CallTime(self.connection.deadline_seconds)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """How messages name this key: its index and the variable that holds it."""
        if self.key is None:
            return "key 0 (saved qiskit account)"
        return f"key {self.key.index} ({self.key.variable})"

    def _scrub(self, text: str) -> str:
        if self.key is not None:
            secret = self.key.token.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return " ".join(text.split())

    def _service(self) -> Any:
        """The client, connected on first use (inside a bounded call, never around one)."""
        if self._client is None:
            with self._connect_lock:  # threads polling at once must not connect twice
                if self._client is None:
                    self._client = self._connect()
        _without_client_retries(self._client, pool_size=self.connection.workers)
        return self._client

    def _connect(self) -> Any:
        # The client logs routine notes ("Using instance ...") as warnings; users should see
        # qcourier's one-line messages instead.
        logging.getLogger("qiskit_ibm_runtime").setLevel(logging.ERROR)
        ignore_warnings_from("qiskit_ibm_runtime", __name__)
        from qiskit_ibm_runtime import QiskitRuntimeService

        kwargs: dict[str, Any] = {"channel": self.connection.channel}
        if self.key is not None:
            kwargs["token"] = self.key.token.get_secret_value()
            if self.key.instance:
                kwargs["instance"] = self.key.instance
        if self.connection.url:
            kwargs["url"] = self.connection.url
            kwargs["url_resolver"] = lambda url, instance, private, channel: url
        return QiskitRuntimeService(**kwargs)

    def _call(self, what: str, func: Callable[..., T], *args: Any,
              idempotent: bool = True, **kwargs: Any) -> T:
        """Run one client call, bounded in time, retried when transient, errors translated.

        The one retry loop of every IBM call (:func:`~qcourier.services.workers.retry_call`, with
        :attr:`IBMConnection.retry_policy`): each attempt waits first while the service's gate
        is held (a 429 holds it, for every thread, for the ``Retry-After`` given, else the
        backoff, at most ``max_retry_after_seconds``). Every attempt, wait and backoff is
        paid from the scope's :class:`CallTime` (``deadline_seconds``); when it is spent, the
        call gives up.

        Args:
            idempotent: whether the call may be retried after a failure that leaves it unknown
                whether the service acted (a 5xx or a timeout); a submission may not.

        Raises:
            ServiceError: the translated failure, once retries are spent or not allowed.
            DeadlineExceededError: the deadline passed before the call succeeded.
        """
        # The client's warnings (SamplerV2's deprecation, notes on the account) and those it
        # blames on this module are not for qcourier's users; set before the call's threads run.
        ignore_warnings_from("qiskit_ibm_runtime", __name__)
        budget = scoped_call_time(self, self.connection.deadline_seconds, self._call_time)

        def attempt(seconds_left: float) -> T:
            timeout = min(self.connection.timeout_seconds, max(seconds_left, 0.01))
            try:
                return _bounded(timeout, self.connection.workers, func, *args, **kwargs)
            except TimeoutError:
                if timeout < self.connection.timeout_seconds:
                    raise  # cut short by the deadline: retry_call gives up
                raise TransientServiceError(
                    f"{self.label}: IBM Quantum did not answer ({what}) within {timeout:g} s"
                ) from None
            except ServiceError:
                raise
            except Exception as exc:  # the client's exceptions, translated
                error = self._translate(what, exc)
                if not error.nothing_done and _failed_method(exc) in ("GET", "HEAD"):
                    # A read failed: a submission sends its POST last, so none was sent.
                    error.nothing_done = True
                raise error from None

        return retry_call(attempt, what=what, policy=self.connection.retry_policy,
                          gate=self._gate, budget=budget, idempotent=idempotent,
                          deadline_error=lambda last: self._deadline_error(what, last))

    def _deadline_error(self, what: str, last: ServiceError | None) -> DeadlineExceededError:
        seconds = self.connection.deadline_seconds
        because = f"; last failure: {_after_label(str(last), self.label)}" if last else ""
        return DeadlineExceededError(
            f"{self.label}: gave up on {what} after {seconds:g} s of IBM Quantum calls "
            f"(QCOURIER_IBM_DEADLINE){because}",
            http_status=last.http_status if last else None,
            nothing_done=last.nothing_done if last else False)

    def _translate(self, what: str, exc: BaseException) -> ServiceError:
        """One line a user can act on, from whatever the client raised.

        The client wraps its failures in its own exceptions (an offline machine gets an
        ``InvalidAccountError`` saying to check the token), so the cause is found in the
        exception's chain: first an HTTP status (a 4xx is the service's answer, never a
        network failure, although ``requests.HTTPError`` is an ``OSError``), then the IAM
        exchange's answer, then a connection that could not be made, then the client's own
        types.
        """
        chain = list(_chain(exc))
        status, retry_after = _http_status(exc)
        label = self.label
        iam = _iam_failure(chain)
        if iam is not None:
            code, host = iam
            if code is not None and 400 <= code < 500 and code not in (408, 429):
                return AuthenticationError(
                    f"{label}: IBM Cloud IAM ({host}) refused the API key (HTTP {code}); check "
                    "or replace the token", http_status=code)
            if code is not None and code > 0:
                return TransientServiceError(
                    f"{label}: IBM Cloud IAM ({host}) failed (HTTP {code}) during {what}; try "
                    "again later", http_status=code, retry_after=retry_after)
        network = _network_failure(chain)
        if network is not None and status in (None, -1):
            kind, host = network
            where = "IBM Cloud IAM" if _is_iam(chain) else "IBM Quantum"
            return UnreachableError(
                f"{label}: cannot reach {where} ({what}): {kind} {host}; check the network, "
                "proxy settings (HTTPS_PROXY) and QCOURIER_IBM_URL",
                http_status=-1, nothing_done=kind != "no answer from")
        if status == -1:  # retries of 5xx ran out in a transport still retrying on its own
            statuses = _retried_statuses(chain)
            shown = f"HTTP {statuses}" if statuses else "server errors"
            return TransientServiceError(
                f"{label}: IBM Quantum service error ({what}: {shown}, after the client's "
                "retries); try again later", http_status=-1, retry_after=retry_after)
        return self._translate_answer(what, exc, chain, status, retry_after)

    def _translate_answer(self, what: str, exc: BaseException, chain: list[BaseException],
                          status: int | None, retry_after: float | None) -> ServiceError:
        """:meth:`_translate` once the service was reached: by the HTTP ``status`` it
        answered, else by the client's own exception types."""
        from qiskit_ibm_runtime.accounts.exceptions import AccountsError
        from qiskit_ibm_runtime.exceptions import IBMNotAuthorizedError, RuntimeJobNotFound

        label = self.label
        if status in (401, 403) or any(isinstance(e, IBMNotAuthorizedError) for e in chain):
            return AuthenticationError(
                f"{label}: IBM Quantum refused the credentials ({what}, HTTP {status or 401}); "
                "check or replace the token, and the instance (IBM_QUANTUM_INSTANCE)",
                http_status=status or 401)
        if status == 404 or any(isinstance(e, RuntimeJobNotFound) for e in chain):
            return JobNotFoundError(f"{label}: {what}: not found on IBM Quantum",
                                    http_status=status)
        if status == 409 and what.startswith("submit"):
            return BudgetExceededError(
                f"{label}: IBM Quantum refused the job: usage exceeds the instance's limit "
                "(HTTP 409); wait for the 28-day window to free QPU time or use another key",
                http_status=status)
        if status == 429:
            wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
            return TransientServiceError(
                f"{label}: IBM Quantum rate limit reached ({what}, HTTP 429){wait}",
                http_status=429, retry_after=retry_after, nothing_done=True)
        if status is not None and status in TRANSIENT_STATUS:
            return TransientServiceError(
                f"{label}: IBM Quantum service error ({what}, HTTP {status}); try again later",
                http_status=status, retry_after=retry_after)
        if status is not None and 400 <= status < 500:
            return ServiceError(
                f"{label}: IBM Quantum refused {what} (HTTP {status}): {self._detail(chain)}",
                http_status=status, nothing_done=True)
        if status is not None and status >= 500:
            return TransientServiceError(
                f"{label}: IBM Quantum service error ({what}, HTTP {status}); try again later",
                http_status=status)
        if any(isinstance(e, AccountsError) for e in chain):
            return AuthenticationError(
                f"{label}: the IBM Quantum account is not usable ({what}): {self._detail(chain)}",
                nothing_done=True)
        return ServiceError(f"{label}: {what} failed: {type(exc).__name__}: {self._detail(chain)}",
                            http_status=status)

    def _detail(self, chain: list[BaseException]) -> str:
        """The service's own message if its error body has one, else the first line of the
        innermost message; short, and scrubbed of the token."""
        for err in chain:
            response = getattr(err, "response", None)
            message = _body_message(response)
            if message:
                return self._scrub(message)[:DETAIL_CHARS]
        text = self._scrub(str(chain[-1]) if chain else "")
        return text[:DETAIL_CHARS] or "no detail"

    def _job(self, job_id: str) -> Any:
        """The client's job handle (called inside a bounded call, never around one)."""
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is None:
            # Fetched outside the lock (a network call); if two threads race, both handles
            # are equally good and the first one stored is kept.
            fetched = self._service().job(job_id)
            with self._jobs_lock:
                job = self._jobs.setdefault(job_id, fetched)
        return job

    def _remember(self, job: Any) -> None:
        with self._jobs_lock:
            self._jobs[job.job_id()] = job

    def _backend_object(self, name: str) -> Any:
        """The client's backend object (called inside a bounded call), kept for
        :data:`BACKEND_REUSE_SECONDS`: the client makes a new one, which fetches the
        backend's properties again (a megabyte for 156 qubits, parsed into a ``Target``),
        each time it is asked, and one submission asks for its calibration, its target and
        its sampler."""
        now = time.monotonic()
        with self._jobs_lock:
            fetched = self._backends.get(name)
        if fetched is not None and now - fetched[0] < BACKEND_REUSE_SECONDS:
            return fetched[1]
        backend = self._service().backend(name)
        with self._jobs_lock:
            self._backends[name] = (now, backend)
        return backend

    # -- backends ---------------------------------------------------------------------------

    def backends(self) -> list[BackendInfo]:
        def listing() -> list[BackendInfo]:
            self._check_listing()
            infos = []
            for backend in self._service().backends():
                status = backend.status()
                infos.append(BackendInfo(backend.name, _width(backend),
                                         bool(status.operational), int(status.pending_jobs)))
            return infos

        return self._call("list backends", listing)

    def _check_listing(self) -> list[str] | None:
        """The backend names of the raw listing (``GET /backends``), which raises on failure;
        ``service.backends()`` swallows a 401 or a lost connection into an empty list.
        ``None`` when this client has no raw listing."""
        try:
            api = self._service()._active_api_client
            lister = api.list_backends
        except AttributeError:
            return None
        return [str(d.get("name")) for d in lister() if isinstance(d, dict)]

    def backend(self, name: str) -> BackendV2:
        def lookup() -> BackendV2:
            from qiskit.providers.exceptions import QiskitBackendNotFoundError

            try:
                return self._backend_object(name)
            except QiskitBackendNotFoundError:
                # The client says "not found" both for a backend it does not know and when it
                # could not fetch the configuration (it swallows that 5xx or lost connection):
                # only a listing that really worked tells the two apart.
                names = self._check_listing()
                if names is None:
                    raise
                if name in names:  # it exists: its configuration did not come, for now
                    raise TransientServiceError(
                        f"{self.label}: IBM Quantum lists backend {name} but did not send its "
                        f"configuration (backend {name}); try again later") from None
                raise ServiceError(
                    f"unknown backend {name!r} for {self.label}; choose one of: "
                    f"{', '.join(sorted(names)) or '(the listing is empty)'}") from None

        return self._call(f"backend {name}", lookup)

    def calibration(self, backend: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            props = self._backend_object(backend).properties()
            return json.loads(json.dumps(props.to_dict(), default=str)) if props else {}

        return self._call(f"calibration of {backend}", read)

    # -- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        backend: str,
        circuits: Sequence[QuantumCircuit],
        shots: int,
        tags: Sequence[str] = (),
        max_execution_time: int | None = None,
    ) -> str:
        def run() -> str:
            from qiskit_ibm_runtime import SamplerV2

            sampler = SamplerV2(mode=self._backend_object(backend))
            sampler.options.environment.job_tags = list(tags)
            if max_execution_time is not None:
                sampler.options.max_execution_time = int(max_execution_time)
            job = sampler.run(list(circuits), shots=shots)
            job_id = check_job_id(job.job_id(), f"{self.label}: IBM Quantum's answer to a "
                                                "submission")
            self._remember(job)
            return job_id

        # Retried only after a failure that proves no job was made (a 429, a connection never
        # made, a failed request before the POST): after a 5xx or a timeout of the POST the
        # job may exist, and a retry could create a second one.
        return self._call(f"submit to {backend}", run, idempotent=False)

    def job_status(self, job_id: str) -> JobStatusReport:
        def read() -> JobStatusReport:
            job = self._job(job_id)
            raw = job.status()
            state = JobState(str(getattr(raw, "name", raw)).upper())
            message = job.error_message() if state in (JobState.ERROR, JobState.CANCELLED) else None
            return JobStatusReport(job_id, state, self._scrub(message) if message else None,
                                   getattr(job, "_reason_code", None))

        return self._call(f"status of job {job_id}", read)

    def job_states(self, job_ids: Sequence[str],
                   created_after: datetime | None = None) -> dict[str, JobStatusReport]:
        wanted = set(job_ids)
        if not wanted:
            return {}
        if created_after is not None and created_after.tzinfo is not None:
            # The client reads an aware time with a non-zero offset as local time: give UTC.
            created_after = created_after.astimezone(UTC)
        found: dict[str, JobStatusReport] = {}
        seen: set[str] = set()
        for page_number in range(LISTING_MAX_PAGES):
            skip = page_number * LISTING_PAGE_SIZE
            page = self._call(f"job listing (from {skip})", self._listing_page, skip, created_after)
            if page is None:  # this client has no raw listing: every job asked about alone
                return {}
            for raw in page:
                job_id = raw.get("id") if isinstance(raw, dict) else None
                if job_id in wanted:
                    seen.add(job_id)
                    report = self._report_from_listing(job_id, raw)
                    if report is not None:
                        found[job_id] = report
            # Newest first: new jobs created meanwhile shift older ones to later pages, so a
            # job is seen twice at worst, never skipped.
            if wanted <= seen or len(page) < LISTING_PAGE_SIZE:
                break
        return found

    def _listing_page(self, skip: int,
                      created_after: datetime | None) -> list[dict[str, Any]] | None:
        """One page of the raw job listing, or ``None`` if this client cannot list raw jobs.

        ``service.jobs()`` decodes jobs into ``RuntimeJobV2`` objects without their state, so
        this reads the client's own API client; a future client that changes it gets ``None``
        and the collector falls back to one call per job.
        """
        try:
            api = self._service()._active_api_client
            response = api.jobs_get(limit=LISTING_PAGE_SIZE, skip=skip, job_tags=["qcourier"],
                                    created_after=created_after, pending=None, descending=True)
            jobs = response["jobs"]
        except (AttributeError, TypeError, KeyError):
            return None
        return list(jobs) if isinstance(jobs, list) else None

    def _report_from_listing(self, job_id: str, raw: dict[str, Any]) -> JobStatusReport | None:
        """What ``job_status`` would report from this listing entry; ``None`` if it cannot tell.

        Mirrors ``RuntimeJobV2``: the API's status through the client's own table
        (Completed -> DONE, Failed -> ERROR, ...); a reason code counts only beside a reason;
        Cancelled with reason code 1305 (ran too long) is ERROR. The error message of a failed
        job is "Job <id> has failed:" and the reason; where the client would instead fetch the
        job's results text for it (ran too long, or failed with no reason), this returns
        ``None`` and the job is asked about alone.
        """
        try:
            from qiskit_ibm_runtime.runtime_job_v2 import (
                API_TO_JOB_ERROR_MESSAGE,
                API_TO_JOB_STATUS,
            )
        except ImportError:
            API_TO_JOB_STATUS = _API_TO_JOB_STATUS  # noqa: N806 - the client's names
            API_TO_JOB_ERROR_MESSAGE = _API_TO_JOB_ERROR_MESSAGE  # noqa: N806
        state = raw.get("state")
        if not isinstance(state, dict) or not isinstance(state.get("status"), str):
            return None
        api_status = state["status"].upper()
        reason = state.get("reason")
        code = state.get("reasonCode") or state.get("reason_code")
        reason_code = code if reason and code else None
        status = API_TO_JOB_STATUS.get(api_status, api_status)
        if status == "CANCELLED" and reason_code == 1305:
            status = "ERROR"
        try:
            job_state = JobState(status)
        except ValueError:
            return None
        if job_state is not JobState.ERROR:
            return JobStatusReport(job_id, job_state, None, reason_code)
        if api_status != "FAILED" or not reason:
            return None
        detail = f"Error code {reason_code}; {reason}" if reason_code else str(reason)
        message = API_TO_JOB_ERROR_MESSAGE["FAILED"].format(job_id, detail)
        return JobStatusReport(job_id, JobState.ERROR, self._scrub(message), reason_code)

    def job_result(self, job_id: str) -> JobResult:
        def read() -> JobResult:
            result = self._job(job_id).result()
            counts = [
                {key.replace(" ", ""): int(n) for key, n in pub.join_data().get_counts().items()}
                for pub in result
            ]
            return JobResult(counts=counts, metadata=_jsonable(getattr(result, "metadata", {})))

        return self._call(f"result of job {job_id}", read)

    def job_metrics(self, job_id: str) -> JobMetrics:
        metrics = self._call(f"metrics of job {job_id}", lambda: self._job(job_id).metrics())
        stamps = metrics.get("timestamps") or {}
        usage = metrics.get("usage") or {}
        final = usage.get("status", "pending") != "pending"
        seconds = usage.get("qpu_charge_time_seconds", usage.get("quantum_seconds"))
        return JobMetrics(
            created=_parse_time(stamps.get("created")),
            running=_parse_time(stamps.get("running")),
            finished=_parse_time(stamps.get("finished")),
            usage_seconds=float(seconds) if final and seconds is not None else None,
        )

    def cancel(self, job_id: str) -> None:
        def cancel() -> None:
            job = self._job(job_id)
            job.cancel()

        self._call(f"cancel of job {job_id}", cancel)

    def find_jobs(self, tags: Sequence[str], created_after: datetime | None = None) -> list[str]:
        def search() -> list[str]:
            found: list[str] = []
            skip = 0
            while True:
                page = self._service().jobs(limit=100, skip=skip, job_tags=list(tags),
                                            created_after=created_after)
                found.extend(check_job_id(job.job_id(), f"{self.label}: the IBM Quantum job "
                                                        "listing") for job in page)
                if len(page) < 100:
                    return found
                skip += 100

        return self._call(f"jobs tagged {', '.join(tags)}", search)

    def job_info(self, job_id: str) -> JobInfo:
        def read() -> JobInfo:
            job = self._job(job_id)
            params = job.inputs
            backend = job.backend()
            circuits, shots = [], params.get("shots")
            for pub in params.get("pubs", []):
                circuit = pub[0] if isinstance(pub, (list, tuple)) else getattr(pub, "circuit", pub)
                circuits.append(circuit)
                if isinstance(pub, (list, tuple)) and len(pub) > 2 and pub[2]:
                    shots = pub[2]
            return JobInfo(job_id, getattr(backend, "name", str(backend)), list(job.tags or []),
                           job.creation_date, int(shots) if shots else None, circuits)

        return self._call(f"details of job {job_id}", read)

    def usage(self) -> InstanceUsage:
        data = self._call("instance usage", lambda: self._service().usage())
        limit = data.get("usage_limit_seconds") or data.get("usage_allocation_seconds")
        return InstanceUsage(
            usage_seconds=float(data.get("usage_consumed_seconds", 0.0)),
            limit_seconds=float(limit) if limit else None,
        )


# The client's calls run here, never on the collector's own pool: a collector thread waits
# for its call, and waiting for a thread of one's own pool could wait forever.
def _width(backend: Any) -> int:
    """The backend's qubit count from its configuration (already fetched with the listing).

    ``backend.num_qubits`` would first fetch the backend's properties (one HTTP request per
    backend) and convert them into a ``Target`` (a fifth of a second each for 156 qubits):
    listing the backends to choose one must not cost that for each backend not chosen.
    """
    try:
        return int(backend.configuration().n_qubits)
    except AttributeError:  # a backend without a configuration
        return int(backend.num_qubits)


#: Seconds a backend object, and the calibration it fetched, is reused by one service (a
#: ``qcollect --watch`` that drains a deferred queue for hours fetches it again).
BACKEND_REUSE_SECONDS = 600.0

_WORKERS = WorkerPool("qcourier-ibm-worker")

# RuntimeJobV2's tables (qiskit_ibm_runtime/runtime_job_v2.py, 0.51), for a client that moves them.
_API_TO_JOB_STATUS = {"QUEUED": "QUEUED", "RUNNING": "RUNNING", "COMPLETED": "DONE",
                      "FAILED": "ERROR", "CANCELLED": "CANCELLED"}
_API_TO_JOB_ERROR_MESSAGE = {"FAILED": "Job {} has failed:\n{}"}


def _bounded(timeout: float, workers: int, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` on the client's worker threads, abandoned with
    ``TimeoutError`` after ``timeout`` seconds (a fresh thread replaces one so abandoned)."""
    return _WORKERS.call(lambda: func(*args, **kwargs), timeout, workers)


def _without_client_retries(client: Any, pool_size: int = 10) -> None:
    """Stop the client's transport from retrying anything itself: qcourier's one retry loop
    (``IBMService._call``) decides, knowing the status, ``Retry-After`` and the deadline.

    The client's session retries 5xx five times (0-8 s apart, POST included), connections
    three times, and sleeps out a GET's 429 ``Retry-After`` five times, inside the bounded
    call (eating its timeout) and in each thread on its own; nested in qcourier's retries a
    503 storm was sent ~6x as often as intended, and a POST whose job was created before
    the 5xx made a second job. Without them a POST is never repeated after it may have
    reached the service (its intent line stays, and qcollect finds the one job by its
    request tag), and a 429 holds every thread of the service until the time has passed.

    The connection pool holds ``pool_size`` connections (at least urllib3's 10), so that the
    worker threads' calls do not open and drop connections.
    """
    api = getattr(client, "_active_api_client", None)
    session = getattr(api, "_session", None)
    if session is None or getattr(session, "_qcourier_no_retries", False):
        return
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    size = max(10, pool_size)
    for prefix in ("http://", "https://"):
        # requests' own default: no retry, no read retry.
        session.mount(prefix, HTTPAdapter(max_retries=Retry(0, read=False), pool_maxsize=size))
    session._qcourier_no_retries = True


def _chain(exc: BaseException | None) -> Any:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> tuple[int | None, float | None]:
    """The HTTP status behind a client exception, and its Retry-After in seconds, if any."""
    status, retry_after = None, None
    for err in _chain(exc):
        response = getattr(err, "response", None)
        if response is not None and getattr(response, "status_code", None) is not None:
            status = response.status_code
            header = response.headers.get("Retry-After")
            if header is not None:
                try:
                    retry_after = max(0.0, float(header))
                except ValueError:
                    retry_after = None
            return status, retry_after
        code = getattr(err, "status_code", None)
        if isinstance(code, int) and status is None:
            status = code
    return status, retry_after


def _failed_method(exc: BaseException) -> str | None:
    """The HTTP method of the request that failed, where the exception's chain says."""
    for err in _chain(exc):
        request = getattr(err, "request", None) or getattr(
            getattr(err, "response", None), "request", None)
        method = getattr(request, "method", None)
        if isinstance(method, str):
            return method.upper()
    return None


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _after_label(message: str, label: str) -> str:
    """A message without its leading ``"<label>: "`` (when nested in another one)."""
    return message.removeprefix(f"{label}: ")


def _host_of(err: BaseException) -> str | None:
    """The host a network exception was about, where it says."""
    for attribute in ("conn", "pool"):
        host = getattr(getattr(err, attribute, None), "host", None)
        if host:
            return str(host)
    request = getattr(err, "request", None)
    url = getattr(request, "url", None) or getattr(err, "url", None)
    if isinstance(url, str) and "://" in url:
        from urllib.parse import urlsplit

        return urlsplit(url).hostname
    match = re.search(r"host='([^']+)'", str(err))
    return match.group(1) if match else None


def _is_iam(chain: list[BaseException]) -> bool:
    """Whether the failed request was the IAM token exchange (``POST /identity/token``)."""
    return any("/identity/token" in str(getattr(e, "url", "") or "") for e in chain) or any(
        "/identity/token" in str(e) for e in chain)


def _network_failure(chain: list[BaseException]) -> tuple[str, str] | None:
    """``(what happened, host)`` when the chain holds a connection that failed, else ``None``."""
    import socket
    import ssl

    import requests
    import urllib3.exceptions as u3

    host = next((h for h in map(_host_of, chain) if h), None) or "the service"
    for err in reversed(chain):  # the innermost cause says most
        if isinstance(err, (socket.gaierror, u3.NameResolutionError)):
            return "the host name does not resolve (DNS):", host
        if isinstance(err, (u3.ProxyError, requests.exceptions.ProxyError)):
            return "the proxy refused or failed the connection to", host
        if isinstance(err, (ssl.SSLError, u3.SSLError, requests.exceptions.SSLError)):
            return "the TLS handshake failed with", host
        if isinstance(err, ConnectionRefusedError):
            return "the connection was refused by", host
        if isinstance(err, (u3.ConnectTimeoutError, requests.exceptions.ConnectTimeout)):
            return "the connection timed out to", host
    for err in chain:
        if isinstance(err, (u3.NewConnectionError, ConnectionRefusedError)):
            return "no connection could be made to", host
        if isinstance(err, (u3.ProtocolError, ConnectionResetError, u3.ReadTimeoutError,
                            requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError)):
            return "no answer from", host
    for err in chain:
        if isinstance(err, requests.exceptions.ConnectionError) and not isinstance(
                err, requests.exceptions.RetryError):
            return "no answer from", host
    return None


def _iam_failure(chain: list[BaseException]) -> tuple[int | None, str] | None:
    """``(HTTP status, host)`` of a failed IAM token exchange (``ibm_cloud_sdk_core``'s
    ``ApiException``) in the chain, else ``None``."""
    try:
        from ibm_cloud_sdk_core import ApiException
    except ImportError:
        return None
    for err in chain:
        if isinstance(err, ApiException):
            response = getattr(err, "http_response", None)
            url = getattr(response, "url", None) or ""
            from urllib.parse import urlsplit

            host = urlsplit(url).hostname if "://" in url else None
            code = getattr(err, "status_code", None)
            return (code if isinstance(code, int) else None), host or "the IAM service"
    return None


def _retried_statuses(chain: list[BaseException]) -> str | None:
    """The statuses of a retry storm ("too many 503 error responses"), where said."""
    for err in chain:
        match = re.search(r"too many (\d{3}) error responses", str(err))
        if match:
            return match.group(1)
    return None


def _body_message(response: Any) -> str | None:
    """The message of an error body, IBM's shapes: ``{"errors": [{"message"}]}`` or
    ``{"error": {"message"}}``."""
    if response is None:
        return None
    try:
        body = response.json()
    except Exception:
        return None
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        message = errors[0].get("message")
    else:
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
    return " ".join(str(message).split()) if message else None
