"""An in-process emulator of the IBM Quantum Platform REST API, for the real client.

``IBMEmulator`` serves, on ``http://127.0.0.1:<port>`` (stdlib ``ThreadingHTTPServer`` in a
daemon thread), the endpoints that ``qiskit_ibm_runtime.QiskitRuntimeService`` 0.51 calls, so
qcourier's IBM adapter runs end to end against the *real* client, from this process or from
subprocesses (they connect to the same URL while the emulator lives in the pytest process).

Usage::

    with IBMEmulator(queue_seconds=0.5) as emu:
        for name, value in emu.client_env().items():
            monkeypatch.setenv(name, value)
        service = QiskitRuntimeService(**emu.service_kwargs("good-token-0"))
        backend = service.backend("ibm_fez")
        ...
        assert not [r for r in emu.requests if "/sessions" in r[1]]

Pointing the client here takes ``url=emu.url``, ``url_resolver=url_resolver`` (this module's:
the default resolver rewrites the host and drops the port) and the environment of
:meth:`IBMEmulator.client_env`:

- ``IAM_URL``: the token exchange (``POST /identity/token``) is served here;
- ``GLOBAL_SEARCH_URL`` / ``GLOBAL_CATALOG_URL`` (read by ``ibm_cloud_sdk_core``'s
  ``configure_service``): the instance lookup that ``QiskitRuntimeService.__init__`` always
  makes (``POST /v3/resources/search`` + ``GET /{plan id}``) is served here too, so
  construction behaves as against IBM, including ``InvalidAccountError`` on a bad token and
  ``instance=`` given as a name. ``client_env(global_search=False)`` sets
  ``QISKIT_FUNCTIONS_EXPERIMENTAL=1`` instead, which skips that lookup (then ``instance`` must be
  a CRN, and a bad token is *not* detected at construction: see below);
- ``NO_PROXY``: so a proxy in the environment cannot capture loopback requests.

Backends: ``backends=`` takes fake backend names (``fake_fez``); each is exposed under its real
device name (``ibm_fez``) with the fake's ``conf_*.json`` / ``props_*.json``. Properties are
re-dated so that ``last_update_date`` is ``calibration_age_hours`` ago (attribute, settable at
any time). Queue length = ``set_backend(queue_length=)`` + the emulator's pending jobs there.

Jobs: ``POST /api/v1/jobs`` decodes ``params`` with ``RuntimeDecoder`` (``sampler`` program,
i.e. ``SamplerV2``; the client-side ``executor_sampler.Sampler`` sends program ``executor`` and is
refused with 400) and rejects non-ISA circuits with 400. A job is ``Queued`` for
``queue_seconds``, ``Running`` for ``run_seconds``, then ``Completed`` (or ``Cancelled`` with
reason code 1305, "RAN TOO LONG", when its modelled usage exceeds its ``cost`` =
``max_execution_time``). The first ``GET .../results`` after that simulates the circuits once with
``qcourier.services.simulation.simulate_counts`` (stim for Clifford circuits; noise: the shared
device model from the fake backend's calibration unless ``noisy=False``) and returns a ``PrimitiveResult`` of
``SamplerPubResult``\\s (one ``BitArray`` per classical register, same shot order in every
register so ``join_data()`` keeps correlations), encoded with ``RuntimeEncoder``. Usage model:
``job_overhead_seconds`` (2 s) + ``seconds_per_shot`` (1e-4) x shots x circuits, charged when
the job completes (cancelled/failed: 0 unless ``set_job_state(..., usage_seconds=)``).
``GET /api/v1/instances/usage`` sums it per instance; when the sum reaches
``usage_limit_seconds``, ``POST /jobs`` answers 409 (after the client has warned, from that
same usage endpoint, "This instance has met its usage limit").

Errors are IBM-shaped: ``{"errors": [{"code", "message", "more_info"}], "trace", "status_code"}``
(the client looks for ``{"error": {...}}`` first, falls back to appending the response text to
its message, so the whole body ends up in the exception text). IBM's numeric error codes used
here (1291 job not found, 1352 usage limit, 1202 too many requests, ...) are the emulator's
choice: rely on the HTTP status (``RequestsApiError.status_code``) and the exception type.

What the REAL client (0.51, requests 2.34 / urllib3 2.8) raises, measured here
--------------------------------------------------------------------------------
(2-core box; "service" = ``QiskitRuntimeService``; ``RequestsApiError`` is
``qiskit_ibm_runtime.api.exceptions``, the others ``qiskit_ibm_runtime.exceptions`` unless said)

- **Bad token, at construction** (default ``client_env()``): ``InvalidAccountError``
  (``qiskit_ibm_runtime.accounts.exceptions``) "Unable to retrieve instances. Please check that
  you are using a valid API token.", ``__cause__`` an ``ibm_cloud_sdk_core.ApiException`` (code
  400, IAM "BXNIM0415E"). < 0.1 s. Any IAM failure (5xx too) gives the same.
- **Bad token with the instance lookup skipped** (``client_env(global_search=False)``):
  construction *succeeds* in < 0.1 s (``UserWarning`` "Unable to retrieve IBM Cloud access
  token. API Key will be used instead", then ``Authorization: apikey <key>`` gets 401, which
  ``_discover_backends_from_instance`` swallows: log "Invalid instance"). Every later call then
  waits ~60 s in the IAM token manager's pacing (``paced_request_token``: a failed IAM request
  leaves ``request_time`` set, so the next caller sleeps until 60 s have passed) and raises
  ``QiskitBackendNotFoundError`` (``service.backend``) or ``IBMNotAuthorizedError`` (the rest).
  No answer of the API avoids this: the pacing is armed by the failed IAM exchange itself. The
  global search lookup (what IBM really does) is what makes it fast; an adapter that skips it
  can check the key first: ``IAMTokenManager(key, url=iam_url).request_token()`` raises
  ``ApiException`` (400) at once.
- **401 from the API on a token IAM accepted** (``fail(..., 401)``): ``IBMNotAuthorizedError``,
  immediately, raw even from ``service.job`` (it is not a ``RequestsApiError``). Exception:
  ``GET /backends`` errors are swallowed (``backends()`` is ``[]``).
- **Job not found (404)**: ``service.job(id)`` -> ``RuntimeJobNotFound`` (after trying the GET
  on the service's other instances' clients, if any); through a ``RuntimeJobV2`` already held
  (``status()``, ``result()``) -> raw ``RequestsApiError``, ``status_code == 404``. Immediate.
- **409 on submit** (usage limit): ``IBMRuntimeError`` "Failed to run program: 409 Client
  Error: Conflict ... <body>" (``_run`` wraps every ``RequestsApiError`` but a 404, which
  becomes ``RuntimeProgramNotFound``). Not retried, immediate.
- **429 on submit**: ``IBMRuntimeError`` "Failed to run program: 429 Client Error: Too Many
  Requests ...". Not retried, ``Retry-After`` ignored, immediate.
- **429 on a GET**: without ``Retry-After``, ``RequestsApiError`` ``status_code == 429``
  (``IBMRuntimeError`` "Failed to retrieve job" from ``service.job``), immediate. With
  ``Retry-After: n``, urllib3 sleeps n s and retries 5 times, then hands back the last answer:
  the same exceptions after 5 x n s.
- **5xx (500/502/503/504/520/521/522/524) until retries run out**: retried 5 times, POST
  included, sleeping 0, 1, 2, 4, 8 s (or ``Retry-After`` each time on a 503): ~15 s, then
  ``RequestsApiError`` with ``status_code == -1`` and "Max retries exceeded ... too many 503
  error responses" (raw from ``backend()``/``status()``/``result()``; ``IBMRuntimeError`` from
  ``service.job`` and submissions). Two failures then success take ~1 s and are invisible to
  the caller; a POST whose job was made before the 5xx makes a second job
  (``fail(..., after=True)``).
- **Hung server**: no read timeout on GETs (connect timeout 5 s): a call blocks as long as the
  server does. POST /jobs has a 900 s timeout, IAM token requests 60 s.
- **Failed / cancelled job**: ``result()`` raises ``RuntimeJobFailureError`` ("Unable to
  retrieve job result. Error code <c>; <reason>"), ``RuntimeJobMaxTimeoutError`` for reason code
  1305, ``RuntimeInvalidStateError`` for a cancelled job; ``cancel()`` of a final job ->
  ``RuntimeInvalidStateError`` (409).

Other observations: ``least_busy()`` on a service made with an instance uses the
``/backends`` listing cached at construction (queue lengths do not refresh). A job's
``status()`` stops asking the server once final. A 404 on ``POST /jobs`` becomes
``RuntimeProgramNotFound``. Each submission first calls ``GET /instances/usage`` and
``GET /backends/{b}/status``; ``service.job(id)`` also fetches ``/backends/{b}/configuration``
(and ``backend.properties()`` the properties) to rebuild the backend; ``job.error_message()``
calls ``GET /jobs/{id}/results`` on a failed job (answered here with the reason as text);
``SamplerV2(...)`` emits a ``DeprecationWarning`` at construction (since 0.50).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/api/v1"
JOB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
MORE_INFO = "https://cloud.ibm.com/apidocs/quantum-computing#error-handling"
FINAL = ("Completed", "Failed", "Cancelled")
STATUSES = ("Queued", "Running", *FINAL)
USAGE_WINDOW = timedelta(days=28)
_DEFAULT_MESSAGES = {
    400: ("1200", "Bad request."),
    401: ("1201", "Invalid credentials."),
    403: ("1200", "You are not authorized to perform this action."),
    404: ("1291", "Not found."),
    409: ("1352", "Job create exceeds usage limits: usage exceeds instance limit."),
    429: ("1202", "Too many requests received."),
}
_TARGETS: dict[str, Any] = {}  # fake backend name -> Target (2-3 s to build: shared across emulators)
_NOISE: dict[str, Any] = {}  # fake backend name -> qcourier.circuits.noise.DeviceNoise
_TARGETS_LOCK = threading.Lock()
# One simulation at a time: stim's first sampler, made from two threads at once, deadlocks
# (stim 1.16), and the client may now fetch several results at once.
_SIMULATION_LOCK = threading.Lock()


def url_resolver(url: str, instance: str | None, private_endpoint: bool | None = False,
                 channel: str | None = None) -> str:
    """The ``url_resolver`` for ``QiskitRuntimeService``: the API lives at ``<url>/api/v1``."""
    return url.rstrip("/") + API


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned-in-effect JWT (the client decodes it without verifying the signature)."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "emulator"}).encode())
    body = _b64url(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64url(secrets.token_bytes(32))}"


def ibm_error(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An error body in the IBM Cloud API shape."""
    default_code, default_message = _DEFAULT_MESSAGES.get(status, ("1000", "Internal error."))
    return {
        "errors": [{"code": code or default_code, "message": message or default_message,
                    "more_info": MORE_INFO}],
        "trace": uuid.uuid4().hex,
        "status_code": status,
    }


class _Reply(Exception):
    """Raised by a route to answer at once with ``status`` and ``body``."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _fake_backend(fake_name: str) -> Any:
    from qiskit_ibm_runtime import fake_provider

    for cls_name in dir(fake_provider):
        cls = getattr(fake_provider, cls_name)
        if cls_name.lower() == fake_name.replace("_", "").lower() and isinstance(cls, type):
            return cls()
    raise ValueError(f"no fake backend named {fake_name!r}")


def _target(fake_name: str) -> Any:
    with _TARGETS_LOCK:
        if fake_name not in _TARGETS:
            _TARGETS[fake_name] = _fake_backend(fake_name).target
        return _TARGETS[fake_name]


def _device_noise(fake_name: str) -> Any:
    """The shared device noise model of the fake backend (all qubits), loaded once."""
    import json

    from qcourier.circuits.noise import DeviceNoise

    with _TARGETS_LOCK:
        if fake_name not in _NOISE:
            fake = _fake_backend(fake_name)
            snapshot = json.loads(json.dumps(fake.properties().to_dict(), default=str))
            _NOISE[fake_name] = DeviceNoise.from_snapshot(snapshot, dt=fake.dt)
        return _NOISE[fake_name]


class _Backend:
    def __init__(self, fake_name: str):
        from pathlib import Path

        fake = _fake_backend(fake_name)
        folder = Path(fake.dirname)
        self.fake_name = fake_name
        self.conf: dict[str, Any] = json.loads((folder / fake.conf_filename).read_text())
        self.props: dict[str, Any] = json.loads((folder / fake.props_filename).read_text())
        self.name: str = "ibm_" + fake_name.removeprefix("fake_")
        self.conf["backend_name"] = self.props["backend_name"] = self.name
        self.queue_length = 0
        self.operational = True
        self.status_msg = "active"


class IBMEmulator:
    """The IBM Quantum Platform REST API (the part the client uses), on loopback.

    Args:
        backends: fake backend names; each is served as ``ibm_<name>``.
        tokens: API key -> instance name. The instance's CRN is :meth:`instance_crn`.
        queue_seconds: how long a new job stays ``Queued``.
        run_seconds: how long it then stays ``Running``.
        usage_limit_seconds: per-instance limit (28-day window); at or above it, ``POST /jobs``
            answers 409.
        calibration_age_hours: age of the served properties' ``last_update_date``.
        noisy: simulate with the fake backend's errors (else noiseless).
        jobs_per_minute: if set, more ``POST /jobs`` per API key in 60 s answer 429 with
            ``Retry-After`` (IBM documents 5 a minute on the Open Plan).

    Attributes:
        url: ``http://127.0.0.1:<port>`` once started (also the IAM and global search host).
        api_url: ``url + "/api/v1"``: the API base (what ``url_resolver`` returns; give it as
            ``url`` to a client whose resolver returns the URL verbatim).
        extra_usage: instance name -> seconds to add to its usage (e.g. to start near the
            limit).
        errors: tracebacks of exceptions raised while handling a request (answered with 500,
            which the client retries for ~15 s): assert it is empty.
        requests: ``(method, path, data)`` of every request, in order; ``path`` without the
            query string; ``data`` is the JSON body, the form (API key redacted), the parsed
            query string (``{name: [values]}``) for a GET with one, else ``{}``.
        request_times: ``(method, path, clock())`` of every request, in order.
        clock: what ``request_times`` reads (default ``time.monotonic``; settable, e.g. to the
            fake clock of the client's rate gate).
        jobs: job id -> record: ``backend``, ``program_id``, ``tags``, ``cost``, ``created``
            (epoch), ``instance`` (name), ``crn``, ``token_index`` (position of the key in
            ``tokens``), ``shots`` (per PUB), ``num_circuits``, ``usage_seconds`` (modelled),
            ``override`` (forced state), ``params`` (raw JSON), ``pubs`` (decoded), ``result``.
    """

    job_overhead_seconds = 2.0
    seconds_per_shot = 1e-4
    token_ttl_seconds = 3600

    def __init__(
        self,
        backends: tuple[str, ...] | list[str] = ("fake_fez", "fake_marrakesh"),
        tokens: dict[str, str] | None = None,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        usage_limit_seconds: float = 600.0,
        calibration_age_hours: float = 1.0,
        noisy: bool = True,
        jobs_per_minute: int | None = None,
    ):
        self.tokens = dict(tokens if tokens is not None
                           else {"good-token-0": "instance-0", "good-token-1": "instance-1"})
        self.queue_seconds = queue_seconds
        self.run_seconds = run_seconds
        self.usage_limit_seconds = usage_limit_seconds
        self.calibration_age_hours = calibration_age_hours
        self.noisy = noisy
        self.jobs_per_minute = jobs_per_minute
        self.backends: dict[str, _Backend] = {}
        for fake_name in backends:
            backend = _Backend(fake_name)
            self.backends[backend.name] = backend
        self.url = ""
        self.api_url = ""
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.request_times: list[tuple[str, str, float]] = []
        self.clock: Callable[[], float] = time.monotonic
        self.jobs: dict[str, dict[str, Any]] = {}
        self.extra_usage: dict[str, float] = {}
        self.errors: list[str] = []
        self._faults: list[dict[str, Any]] = []
        #: Ids the next ``POST /jobs`` answers give, in order (a hostile or broken server).
        self.next_job_ids: list[str] = []
        #: Jobs whose usage status stays ``pending`` although they are final, as IBM's can for
        #: a while: their metrics report 0 s, ``"status": "pending"``, and their usage is not
        #: in the instance's yet. Remove an id to let its figure arrive.
        self.usage_pending: set[str] = set()
        self._access: dict[str, str] = {}  # access token -> API key
        self._posts: dict[str, list[float]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        #: Requests held by a hang right now.
        self.hanging = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> IBMEmulator:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.api_url = self.url + API
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="ibm-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (hung requests are released) and close the socket."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> IBMEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- client side
    def instance_crn(self, instance: str) -> str:
        """The CRN of an instance name (as found in ``tokens``)."""
        return f"crn:v1:bluemix:public:quantum-computing:us-east:a/0e0e0e0e0e0e:{instance}::"

    def client_env(self, global_search: bool = True) -> dict[str, str]:
        """Environment a client process needs (not the API key). See the module docstring."""
        loopback = "127.0.0.1,localhost"
        env = {"IAM_URL": self.url, "NO_PROXY": loopback, "no_proxy": loopback}
        if global_search:
            env["GLOBAL_SEARCH_URL"] = self.url + "/global-search"
            env["GLOBAL_CATALOG_URL"] = self.url + "/global-catalog"
        else:
            env["QISKIT_FUNCTIONS_EXPERIMENTAL"] = "1"
        return env

    def service_kwargs(self, token: str = "good-token-0", instance: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``QiskitRuntimeService`` (instance: the key's, as a CRN)."""
        if instance is None:
            instance = self.instance_crn(self.tokens.get(token, "unknown"))
        return {"channel": "ibm_quantum_platform", "token": token, "url": self.url,
                "url_resolver": url_resolver, "instance": instance}

    # ----------------------------------------------------------------- knobs
    def fail(self, method: str, path_regex: str, status: int, count: int = 1,
             body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             after: bool = False) -> None:
        """Answer the next ``count`` requests matching ``method`` and ``re.search(path_regex,
        path)`` (path without query string, e.g. ``/api/v1/jobs``; anchor with ``$``) with
        ``status``, an IBM-shaped body (or ``body``) and ``headers`` (e.g.
        ``{"Retry-After": "1"}``). With ``after=True`` the request is first handled normally
        (a ``POST /jobs`` creates its job) and only the answer is lost: the server-side
        duplicate that the client's retry of a 5xx ``POST`` can cause."""
        with self._lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "count": count, "status": status, "body": body,
                                 "headers": headers or {}, "after": after})

    def hang(self, method: str, path_regex: str, seconds: float, count: int = 1,
             until: threading.Event | None = None) -> None:
        """Delay the answer to the next ``count`` matching requests by ``seconds``, or until
        ``until`` is set if that comes first (``hanging`` counts the requests held now)."""
        with self._lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "count": count, "hang": seconds, "until": until})

    def _hold(self, seconds: float, until: threading.Event | None) -> None:
        """Hold a request ``seconds``, or until ``until`` is set, or the server stops."""
        with self._lock:
            self.hanging += 1
        try:
            deadline = time.monotonic() + seconds
            while not self._stopping.is_set() and not (until is not None and until.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                (until or self._stopping).wait(min(left, 0.05))
        finally:
            with self._lock:
                self.hanging -= 1

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_job_state(self, job_id: str, status: str | None, reason: str | None = None,
                      reason_code: int | None = None, usage_seconds: float | None = None) -> None:
        """Force a job's ``state.status`` (``Queued``/``Running``/``Completed``/``Failed``/
        ``Cancelled``), with ``reason``/``reason_code`` (1305 + ``Cancelled`` = ran too long);
        ``None`` goes back to the time-based states. ``usage_seconds`` is what the job is
        charged (default: the model for ``Completed``, 0 otherwise)."""
        with self._lock:
            job = self.jobs[job_id]
            if status is None:
                job["override"] = None
                return
            status = status.capitalize()
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}")
            job["override"] = {"status": status, "reason": reason, "reason_code": reason_code,
                               "at": time.time(), "usage_seconds": usage_seconds}

    def add_job(self, tags: list[str] | tuple[str, ...] = (), token: str = "good-token-0",
                backend: str | None = None, created: float | None = None) -> str:
        """A job made here directly, not through ``POST /jobs`` (listings of many jobs in a
        fraction of a second): no circuits, so its result is an empty ``PrimitiveResult``.
        ``created`` is an epoch (default now); returns the job id."""
        backend = backend or next(iter(self.backends))
        with self._lock:
            instance = self.tokens[token]
            job_id = "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(20))
            self.jobs[job_id] = {
                "id": job_id, "backend": backend, "program_id": "sampler", "tags": list(tags),
                "cost": None, "created": time.time() if created is None else created,
                "instance": instance, "crn": self.instance_crn(instance),
                "token_index": list(self.tokens).index(token), "shots": [],
                "circuits_per_pub": [], "num_circuits": 0, "num_qubits": [],
                "circuit_depths": [], "usage_seconds": self.job_overhead_seconds,
                "override": None, "params": {"pubs": [], "version": 2}, "pubs": [],
                "result": None, "lock": threading.Lock(),
            }
        return job_id

    def forget_job(self, job_id: str) -> None:
        """Drop a job: the next request about it gets 404."""
        with self._lock:
            self.jobs.pop(job_id, None)

    def set_backend(self, name: str, queue_length: int | None = None,
                    operational: bool | None = None, status_msg: str | None = None) -> None:
        """Change an ``ibm_*`` backend's reported queue length / status."""
        with self._lock:
            backend = self.backends[name]
            if queue_length is not None:
                backend.queue_length = queue_length
            if operational is not None:
                backend.operational = operational
            if status_msg is not None:
                backend.status_msg = status_msg

    def usage_seconds(self, instance: str) -> float:
        """Usage of an instance (name) over the last 28 days."""
        with self._lock:
            since = time.time() - USAGE_WINDOW.total_seconds()
            total = self.extra_usage.get(instance, 0.0)
            for job in self.jobs.values():
                if (job["instance"] == instance and job["created"] >= since
                        and job["id"] not in self.usage_pending):
                    total += self._state(job)["usage"] or 0.0
            return round(total, 6)

    # ----------------------------------------------------------------- job model
    def _state(self, job: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Status, reason, timestamps and charged usage of a job now."""
        now = time.time() if now is None else now
        created = job["created"]
        running_at = created + self.queue_seconds
        done_at = running_at + self.run_seconds
        state: dict[str, Any] = {"status": "Queued", "reason": None, "reason_code": None,
                                 "running": None, "finished": None, "usage": None}
        override = job.get("override")
        if override:
            state.update(status=override["status"], reason=override["reason"],
                         reason_code=override["reason_code"])
            if override["status"] != "Queued":
                state["running"] = min(running_at, override["at"])
            if override["status"] in FINAL:
                state["finished"] = override["at"]
                default = job["usage_seconds"] if override["status"] == "Completed" else 0.0
                state["usage"] = (override["usage_seconds"] if override["usage_seconds"] is not None
                                  else default)
            return state
        if now >= running_at:
            state.update(status="Running", running=running_at)
        if now >= done_at:
            state["finished"] = done_at
            if job["cost"] and job["usage_seconds"] > job["cost"]:
                state.update(status="Cancelled", reason="RAN TOO LONG", reason_code=1305,
                             usage=float(job["cost"]))
            else:
                state.update(status="Completed", usage=job["usage_seconds"])
        return state

    def _job_json(self, job: dict[str, Any], with_params: bool = False) -> dict[str, Any]:
        state = self._state(job)
        usage = state["usage"] or 0.0
        out = {
            "id": job["id"],
            "backend": job["backend"],
            "state": {"status": state["status"], "reason": state["reason"],
                      "reason_code": state["reason_code"]},
            "status": state["status"],
            "program": {"id": job["program_id"]},
            "created": _iso(job["created"]),
            "runtime": "",
            "tags": list(job["tags"]),
            "cost": job["cost"],
            "session_id": None,
            "private": False,
            "user_id": "emulator-user",
            "estimated_running_time_seconds": job["usage_seconds"],
            "usage": {"quantum_seconds": usage, "seconds": usage},
            "bss": {"seconds": usage},
        }
        if with_params:
            out["params"] = job["params"]
        return out

    def _metrics(self, job: dict[str, Any]) -> dict[str, Any]:
        state = self._state(job)
        final = state["status"] in FINAL and job["id"] not in self.usage_pending
        usage = state["usage"] if final else 0.0
        return {
            "timestamps": {
                "created": _iso(job["created"]),
                "running": _iso(state["running"]) if state["running"] else None,
                "finished": _iso(state["finished"]) if state["finished"] else None,
            },
            "bss": {"seconds": usage},
            "usage": {"quantum_seconds": usage, "seconds": usage,
                      "qpu_charge_time_seconds": usage, "status": "final" if final else "pending"},
            "executions": sum(job["circuits_per_pub"]) * max(job["shots"] or [0]),
            "num_circuits": job["num_circuits"],
            "num_qubits": job["num_qubits"],
            "circuit_depths": job["circuit_depths"],
            "caller": "qiskit_ibm_runtime~sampler.py",
        }

    def _result(self, job: dict[str, Any]) -> str:
        """The ``RuntimeEncoder`` text of the job's ``PrimitiveResult`` (simulated once)."""
        with job["lock"]:
            if job["result"] is None:
                with _SIMULATION_LOCK:
                    job["result"] = self._simulate(job)
            return job["result"]

    def _simulate(self, job: dict[str, Any]) -> str:
        import numpy as np
        from qiskit.primitives import BitArray, DataBin, PrimitiveResult, SamplerPubResult
        from qiskit_ibm_runtime.json import RuntimeEncoder

        from qcourier.services.simulation import simulate_counts

        noise = _device_noise(self.backends[job["backend"]].fake_name) if self.noisy else None
        pub_results = []
        for p, (circuit, values, shots) in enumerate(job["pubs"]):
            values = np.asarray(values, dtype=float)
            shape = values.shape[:-1] if values.ndim else ()
            per_register: dict[str, list[Any]] = {creg.name: [] for creg in circuit.cregs if creg.size}
            for b, index in enumerate(np.ndindex(*shape)):
                bound = (circuit.assign_parameters(dict(zip(circuit.parameters, values[index])))
                         if circuit.num_parameters else circuit)
                seed = int.from_bytes(hashlib.sha256(f"{job['id']}/{p}/{b}".encode()).digest()[:4], "big")
                counts, _ = simulate_counts(bound, shots, seed, noise, engine="stim")
                outcomes = list(counts)
                order = np.repeat(np.arange(len(outcomes)), [counts[o] for o in outcomes])
                np.random.default_rng(seed).shuffle(order)
                for creg in circuit.cregs:
                    if not creg.size:
                        continue
                    where = [circuit.find_bit(bit).index for bit in creg]
                    width = circuit.num_clbits
                    samples = ["".join(o.zfill(width)[width - 1 - i] for i in reversed(where))
                               for o in outcomes]
                    rows = BitArray.from_samples(samples, creg.size).array
                    per_register[creg.name].append(rows[order])
            fields = {}
            for creg in circuit.cregs:
                if creg.size:
                    arrays = np.stack(per_register[creg.name]).reshape(*shape, shots, -1)
                    fields[creg.name] = BitArray(arrays, creg.size)
            pub_results.append(SamplerPubResult(
                DataBin(shape=shape, **fields),
                metadata={"circuit_metadata": circuit.metadata or {}},
            ))
        result = PrimitiveResult(pub_results, metadata={"version": 2})
        return json.dumps(result, cls=RuntimeEncoder)

    def _submit(self, api_key: str, instance: str, body_text: str) -> dict[str, Any]:
        from qiskit_ibm_runtime.json import RuntimeDecoder

        raw = json.loads(body_text)
        program_id = raw.get("program_id")
        if program_id != "sampler":
            raise _Reply(400, ibm_error(400, f"Program {program_id!r} is not supported by the "
                                             "emulator (only 'sampler', i.e. SamplerV2).", "1500"))
        if raw.get("session_id") or raw.get("start_session"):
            raise _Reply(400, ibm_error(400, "Sessions are not available in this emulator.", "1217"))
        backend = self.backends.get(raw.get("backend") or "")
        if backend is None:
            raise _Reply(400, ibm_error(400, f"Backend {raw.get('backend')} not found.", "1007"))
        decoded = json.loads(body_text, cls=RuntimeDecoder)["params"]
        default_shots = (decoded.get("options") or {}).get("default_shots") or 4096
        pubs = []
        for pub in decoded["pubs"]:
            circuit, values, shots = pub[0], pub[1] if len(pub) > 1 else [], pub[2] if len(pub) > 2 else None
            pubs.append((circuit, values, int(shots or default_shots)))
        target = _target(backend.fake_name)
        for circuit, _, _ in pubs:
            for inst in circuit.data:
                name = inst.operation.name
                if name == "barrier":
                    continue
                qargs = tuple(circuit.find_bit(q).index for q in inst.qubits)
                if not target.instruction_supported(name, qargs):
                    raise _Reply(400, ibm_error(
                        400, f"The instruction {name} on qubits {qargs} is not supported by the "
                             f"target device {backend.name}; transpile the circuit first.", "1517"))
        import numpy as np

        circuits_per_pub = [int(np.prod(np.asarray(v).shape[:-1])) if np.asarray(v).ndim else 1
                            for _, v, _ in pubs]
        usage = self.job_overhead_seconds + sum(
            n * shots * self.seconds_per_shot for n, (_, _, shots) in zip(circuits_per_pub, pubs))
        with self._lock:
            if self.usage_seconds(instance) >= self.usage_limit_seconds:
                raise _Reply(409, ibm_error(409))
            if self.jobs_per_minute is not None:
                now = time.time()
                recent = [t for t in self._posts.get(api_key, []) if t > now - 60]
                if len(recent) >= self.jobs_per_minute:
                    retry = max(1, int(60 - (now - recent[0])) + 1)
                    raise _Reply(429, ibm_error(429, f"Too many job submissions: limit is "
                                                     f"{self.jobs_per_minute} per minute."),
                                 {"Retry-After": str(retry)})
                self._posts[api_key] = recent + [now]
            job_id = (self.next_job_ids.pop(0) if self.next_job_ids
                      else "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(20)))
            self.jobs[job_id] = {
                "id": job_id,
                "backend": backend.name,
                "program_id": program_id,
                "tags": list(raw.get("tags") or []),
                "cost": raw.get("cost"),
                "created": time.time(),
                "instance": instance,
                "crn": self.instance_crn(instance),
                "token_index": list(self.tokens).index(api_key),
                "shots": [shots for _, _, shots in pubs],
                "circuits_per_pub": circuits_per_pub,
                "num_circuits": sum(circuits_per_pub),
                "num_qubits": [c.num_qubits for c, _, _ in pubs],
                "circuit_depths": [c.depth() for c, _, _ in pubs],
                "usage_seconds": round(usage, 6),
                "override": None,
                "params": raw["params"],
                "pubs": pubs,
                "result": None,
                "lock": threading.Lock(),
            }
        return {"id": job_id, "backend": backend.name}

    # ----------------------------------------------------------------- routing
    def _route(self, handler: _Handler, method: str, path: str, query: dict[str, list[str]],
               body_text: str) -> tuple[int, Any, dict[str, str]]:
        if path == "/identity/token" and method == "POST":
            return self._iam(parse_qs(body_text))
        api_key = self._authenticate(handler)
        if path.startswith("/global-search/") or path.startswith("/global-catalog/"):
            return self._global(api_key, path)
        if not path.startswith(API + "/"):
            raise _Reply(404, ibm_error(404, f"No route for {method} {path}."))
        instance = self.tokens[api_key]
        crn = handler.headers.get("Service-CRN")
        if crn and crn != self.instance_crn(instance):
            raise _Reply(403, ibm_error(403, "The API key has no access to instance " + crn + "."))
        rel = path[len(API):]
        if rel.startswith("/sessions"):
            raise _Reply(400, ibm_error(400, "Sessions are not available in this emulator.", "1217"))
        if rel == "/backends" and method == "GET":
            return 200, {"devices": [self._device(b) for b in self.backends.values()]}, {}
        match = re.fullmatch(r"/backends/([^/]+)/(configuration|properties|status)", rel)
        if match and method == "GET":
            backend = self.backends.get(match[1])
            if backend is None:
                raise _Reply(404, ibm_error(404, f"Backend {match[1]} not found.", "1007"))
            return 200, self._backend_doc(backend, match[2]), {}
        if rel == "/instances/usage" and method == "GET":
            return 200, self._usage_doc(instance), {}
        if rel == "/jobs" and method == "POST":
            return 200, self._submit(api_key, instance, body_text), {}
        if rel == "/jobs" and method == "GET":
            return 200, self._list_jobs(instance, query), {}
        match = re.fullmatch(r"/jobs/([^/]+)(/results|/metrics|/cancel|/logs|/tags)?", rel)
        if match:
            return self._job_route(instance, method, match[1], match[2] or "", query, body_text)
        raise _Reply(404, ibm_error(404, f"No route for {method} {path}."))

    def _authenticate(self, handler: _Handler) -> str:
        auth = handler.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        with self._lock:
            if scheme.lower() == "bearer" and value in self._access:
                api_key = self._access[value]
                try:
                    claims = json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))
                except ValueError:
                    claims = {}
                if claims.get("exp", 0) > time.time() and api_key in self.tokens:
                    return api_key
            if scheme.lower() == "apikey" and value in self.tokens:
                return value
        raise _Reply(401, ibm_error(401))

    def _iam(self, form: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        api_key = (form.get("apikey") or [""])[0]
        if (form.get("grant_type") or [""])[0] != "urn:ibm:params:oauth:grant-type:apikey":
            return 400, {"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty.",
                         "context": {"requestId": uuid.uuid4().hex}}, {}
        if api_key not in self.tokens:
            return 400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.",
                         "context": {"requestId": uuid.uuid4().hex}}, {}
        now = int(time.time())
        exp = now + self.token_ttl_seconds
        token = _jwt({"iam_id": f"IBMid-{list(self.tokens).index(api_key)}", "sub": "emulator",
                      "iat": now, "exp": exp, "iss": self.url + "/identity"})
        with self._lock:
            self._access[token] = api_key
        return 200, {"access_token": token, "refresh_token": "not-supported", "token_type": "Bearer",
                     "expires_in": self.token_ttl_seconds, "expiration": exp, "scope": "ibm openid"}, {}

    def _global(self, api_key: str, path: str) -> tuple[int, Any, dict[str, str]]:
        if path.startswith("/global-search/"):
            instance = self.tokens[api_key]
            return 200, {"items": [{
                "crn": self.instance_crn(instance), "name": instance, "tags": [],
                "service_plan_unique_id": "open-plan",
                "doc": {"extensions": {"instance_limit_seconds": self.usage_limit_seconds}},
            }], "search_cursor": None, "limit": 100}, {}
        return 200, {"id": path.rsplit("/", 1)[-1], "overview_ui": {"en": {"display_name": "Open"}},
                     "metadata": {"pricing": {"type": "free"}}}, {}

    def _pending_on(self, name: str) -> int:
        return sum(1 for job in list(self.jobs.values())
                   if job["backend"] == name and self._state(job)["status"] in ("Queued", "Running"))

    def _device(self, backend: _Backend) -> dict[str, Any]:
        return {
            "name": backend.name,
            "status": {"name": "online" if backend.operational else "offline",
                       "reason": backend.status_msg},
            "is_simulator": False,
            "qubits": backend.conf["n_qubits"],
            "physical_qubits": backend.conf["n_qubits"],
            "processor_type": backend.conf.get("processor_type"),
            "clops": backend.conf.get("clops_h"),
            "queue_length": backend.queue_length + self._pending_on(backend.name),
            "class": "device",
        }

    def _backend_doc(self, backend: _Backend, what: str) -> dict[str, Any]:
        if what == "configuration":
            return backend.conf
        if what == "status":
            return {"state": backend.operational, "status": backend.status_msg, "message": "",
                    "length_queue": backend.queue_length + self._pending_on(backend.name),
                    "backend_version": backend.conf.get("backend_version", "1.0.0")}
        stamp = (datetime.now(timezone.utc) - timedelta(hours=self.calibration_age_hours)).isoformat()
        props = copy.deepcopy(backend.props)

        def redate(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("date", "last_update_date") and isinstance(value, str):
                        node[key] = stamp
                    else:
                        redate(value)
            elif isinstance(node, list):
                for item in node:
                    redate(item)

        redate(props)
        return props

    def _usage_doc(self, instance: str) -> dict[str, Any]:
        consumed = self.usage_seconds(instance)
        now = datetime.now(timezone.utc)
        return {
            "instance_id": self.instance_crn(instance),
            "plan_id": "open-plan",
            "usage_consumed_seconds": consumed,
            "usage_limit_seconds": self.usage_limit_seconds,
            "usage_allocation_seconds": None,
            "usage_limit_reached": consumed >= self.usage_limit_seconds,
            "usage_period": {"start_time": (now - USAGE_WINDOW).isoformat(),
                             "end_time": now.isoformat()},
        }

    def _list_jobs(self, instance: str, query: dict[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str | None:
            return (query.get(name) or [None])[0]

        tags = set(query.get("tags", []))
        with self._lock:
            jobs = [j for j in self.jobs.values() if j["instance"] == instance]
        if tags:
            jobs = [j for j in jobs if tags <= set(j["tags"])]
        if one("backend"):
            jobs = [j for j in jobs if j["backend"] == one("backend")]
        if one("program"):
            jobs = [j for j in jobs if j["program_id"] == one("program")]
        if one("pending") is not None:
            want = one("pending") == "true"
            jobs = [j for j in jobs if (self._state(j)["status"] not in FINAL) == want]
        for name, keep in (("created_after", lambda c, t: c >= t), ("created_before", lambda c, t: c <= t)):
            if one(name):
                bound = datetime.fromisoformat(one(name).replace("Z", "+00:00"))
                if bound.tzinfo is None:
                    bound = bound.replace(tzinfo=timezone.utc)
                jobs = [j for j in jobs if keep(j["created"], bound.timestamp())]
        jobs.sort(key=lambda j: j["created"], reverse=one("sort") != "ASC")
        offset = int(one("offset") or 0)
        limit = int(one("limit") or 200)
        page = jobs[offset:offset + limit]
        return {"jobs": [self._job_json(j) for j in page], "count": len(jobs),
                "offset": offset, "limit": limit}

    def _job_route(self, instance: str, method: str, job_id: str, what: str,
                   query: dict[str, list[str]], body_text: str) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or job["instance"] != instance:
            raise _Reply(404, ibm_error(404, f"Job not found. Job ID: {job_id}", "1291"))
        if what == "" and method == "GET":
            return 200, self._job_json(job, with_params=(query.get("exclude_params") != ["true"])), {}
        if what == "" and method == "DELETE":
            self.forget_job(job_id)
            return 204, None, {}
        if what == "/results" and method == "GET":
            state = self._state(job)
            if state["status"] == "Completed":
                return 200, _Text(self._result(job)), {}
            if state["status"] in FINAL:
                reason = state["reason"] or "no reason given"
                return 200, _Text(f"Job {state['status'].lower()}: {reason}"), {}
            raise _Reply(400, ibm_error(400, f"Job {job_id} has no results yet "
                                             f"(status {state['status']}).", "1290"))
        if what == "/metrics" and method == "GET":
            return 200, self._metrics(job), {}
        if what == "/logs" and method == "GET":
            return 200, _Text(""), {}
        if what == "/tags" and method == "PUT":
            with self._lock:
                job["tags"] = list(json.loads(body_text or "{}").get("tags", []))
            return 204, None, {}
        if what == "/cancel" and method == "POST":
            with self._lock:
                if self._state(job)["status"] in FINAL:
                    raise _Reply(409, ibm_error(409, f"Job {job_id} is in a final state and "
                                                     "cannot be cancelled.", "1305"))
                self.set_job_state(job_id, "Cancelled", reason="Cancelled by user")
            return 204, None, {}
        raise _Reply(405, ibm_error(405, f"{method} not allowed here."))

    def _take_faults(self, method: str, path: str) -> tuple[dict[str, Any] | None,
                                                           dict[str, Any] | None]:
        """The hang and the failure that apply to this request, consuming them."""
        hang, failure = None, None
        with self._lock:
            for fault in list(self._faults):
                if fault["method"] != method or not fault["regex"].search(path):
                    continue
                if "hang" in fault:
                    if hang:
                        continue
                    hang = fault
                elif failure is None:
                    failure = fault
                else:
                    continue
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self._faults.remove(fault)
        return hang, failure


class _Text(str):
    """A plain-text response body."""


class _Handler(BaseHTTPRequestHandler):
    emu: IBMEmulator
    server_version = "IBMEmulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        emu = self.emu
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        body_text = self.rfile.read(length).decode() if length else ""
        emu.requests.append((method, path, self._logged(method, query, body_text)))
        emu.request_times.append((method, path, emu.clock()))
        hang, failure = emu._take_faults(method, path)
        if hang:
            emu._hold(hang["hang"], hang["until"])
        try:
            if failure is not None and failure["after"]:
                try:
                    emu._route(self, method, path, query, body_text)
                except _Reply:
                    pass
            if failure is not None:
                raise _Reply(failure["status"], failure["body"] or ibm_error(failure["status"]),
                             failure["headers"])
            status, body, headers = emu._route(self, method, path, query, body_text)
        except _Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        except Exception as exc:  # a bug or a bad request body: answer 500, as a server would
            emu.errors.append(traceback.format_exc())
            status, body, headers = 500, ibm_error(500, f"{type(exc).__name__}: {exc}"), {}
        self._send(status, body, headers)

    def _logged(self, method: str, query: dict[str, list[str]], body_text: str) -> dict[str, Any]:
        if body_text:
            try:
                return json.loads(body_text)
            except ValueError:
                form = parse_qs(body_text)
                if "apikey" in form:
                    form["apikey"] = ["***"]
                return form
        return query if method == "GET" else {}

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        if body is None:
            payload, ctype = b"", None
        elif isinstance(body, _Text):
            payload, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            payload, ctype = json.dumps(body).encode(), "application/json"
        try:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
            pass
