"""Dispatch: putting one ledger record's job on its service, crash-safely and within limits.

The intent protocol. Before the service is called, an intent line (status ``submitting``)
is appended with a fresh request id, which is also a job tag (``request:<id>``). When the
service answers with a job id, the ``submitted`` line follows. If the process dies in
between, :func:`resolve_intent` (run by every ``qcollect``) asks the service for the job
carrying that tag and completes the record, or, when no such job has appeared after a
grace period, marks it ``submit_failed``. A submission is never retried blindly: only an
HTTP 429 (the job was certainly not created) is retried inside the IBM adapter, so one
intent never becomes two jobs.

Circuits are stored content-addressed as ``<ledger>/circuits/<isa_circuit_hash>.qpy``, so a
``deferred`` job (or a retry of a failed one) can be submitted later by another process with
exactly the circuits that were planned.

The queue: at most ``max_pending`` jobs per service and key are pending (submitted, queued,
running, or in an intent) at once, and at most ``per_minute`` submissions are made per key
in any 60 seconds. Jobs beyond that are recorded as ``deferred``; ``qcollect`` submits them
as slots free up.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from qcourier.errors import QcourierError
from qcourier.files import atomic_write_bytes, path_under
from qcourier.ledger import store as ledger_mod
from qcourier.ledger.status import JobStatus, utc_now
from qcourier.ledger.store import Ledger
from qcourier.services.base import (
    InvalidJobIdError,
    QuantumService,
    ServiceError,
    TransientServiceError,
    check_job_id,
)

if TYPE_CHECKING:
    from qcourier.config import Settings
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.summary import RecordView

if TYPE_CHECKING:
    from filelock import FileLock
    from qiskit import QuantumCircuit

CIRCUITS_DIR = "circuits"
#: How long a submission waits for another process submitting for the same key.
KEY_LOCK_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class QueuePolicy:
    """Limits per service and key, and how long an unresolved intent may wait."""

    max_pending: int = 3
    per_minute: int = 5
    intent_grace: timedelta = timedelta(minutes=10)


# -- circuits ------------------------------------------------------------------------------------

def store_circuits(ledger: Ledger, isa_hash: str, circuits: list[QuantumCircuit]) -> Path:
    """Store a job's ISA circuits once, under their hash."""
    from io import BytesIO

    from qiskit import qpy

    path = path_under(ledger.directory / CIRCUITS_DIR, isa_hash, ".qpy")
    if not path.exists():
        buffer = BytesIO()
        qpy.dump(circuits, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


def load_circuits(ledger: Ledger, record: LedgerRecord) -> list[QuantumCircuit]:
    """The stored ISA circuits of a record, checked against its ``isa_circuit_hash``.

    Raises:
        QcourierError: they are missing or do not match the hash.
    """
    from qiskit import qpy

    from qcourier.provenance import circuit_hash

    path = path_under(ledger.directory / CIRCUITS_DIR, record.isa_circuit_hash, ".qpy")
    try:
        with open(path, "rb") as fh:
            circuits = list(qpy.load(fh))
    except (OSError, ValueError) as exc:
        raise QcourierError(f"circuits of record {record.record_id} unreadable at {path}: {exc}") from None
    if circuit_hash(circuits) != record.isa_circuit_hash:
        raise QcourierError(f"circuits at {path} do not match record {record.record_id}'s hash")
    return circuits


# -- the queue -----------------------------------------------------------------------------------

def queue_key(record: RecordView) -> tuple[str, int | None]:
    """Which service and key a record's job belongs to (limits apply per key)."""
    return (record.service, record.api_key_index)


def open_slots(records: Iterable[RecordView], policy: QueuePolicy, now: datetime) -> int:
    """How many more jobs one key may submit now, given its records."""
    pending = recent = 0
    minute_ago = now - timedelta(seconds=60)
    for record in records:
        if record.status.is_pending or record.status is JobStatus.SUBMITTING:
            pending += 1
        if (record.submission_time is not None and record.submission_time > minute_ago
                and record.status is not JobStatus.DEFERRED):
            recent += 1
    return max(0, min(policy.max_pending - pending, policy.per_minute - recent))


def key_lock(ledger: Ledger, service: str, key_index: int | None,
             timeout: float = KEY_LOCK_TIMEOUT_SECONDS) -> FileLock:
    """The lock that serialises spending on one key from every process using this ledger.

    Held from the fold that the budget guard and the queue limits read to the intent line of
    the last job they let through, so that N processes submitting at once see each other's
    intents and spend at most the budget (``qsubmit`` against ``qsubmit``, and against a
    ``qcollect`` draining the deferred queue).
    """
    from filelock import FileLock

    which = "local" if service == "local" or key_index is None else str(key_index)
    return FileLock(str(ledger.directory / f".submit-{service}-{which}.lock"), timeout=timeout)


# -- the intent protocol ------------------------------------------------------------------------

def job_tags(record: LedgerRecord, batch: str, request_id: str) -> list[str]:
    """The tags of a job: qcourier's, its experiment, batch, request and circuit hash."""
    return ["qcourier", f"experiment:{record.experiment_type}", f"batch:{batch}",
            f"request:{request_id}", f"circuit:{record.circuit_hash}"]


def submit_record(
    service: QuantumService, path: Path, record: LedgerRecord, circuits: list[QuantumCircuit],
    clock: Callable[[], datetime] = utc_now,
) -> LedgerRecord:
    """Submit a planned or deferred record's job under an intent line; return the new state.
    ``clock`` gives the time of each line it writes.

    Raises:
        TransientServiceError: the service may or may not have created the job; the intent
            stays, and :func:`resolve_intent` settles it later. When the failure proves that
            nothing was made (``nothing_done``: a 429, a connection never made), the intent
            is settled as ``submit_failed`` at once, freeing its pending slot and budget.
        ServiceError: the service refused the job, or answered with an id that is not a
            job id; the record is now ``submit_failed``.
    """
    request_id = secrets.token_hex(8)
    now = clock()
    batch = path.stem.removeprefix("submitted_jobs_")
    intent = record.evolve(now, status=JobStatus.SUBMITTING, request_id=request_id, job_id=None,
                           tags=job_tags(record, batch, request_id), submission_time=now,
                           error=None)
    ledger_mod.append(path, intent)
    try:
        job_id = check_job_id(
            service.submit(record.backend, circuits, record.shots, intent.tags,
                           record.max_execution_time),
            f"the {service.name} service's answer to a submission")
    except ServiceError as exc:
        if isinstance(exc, TransientServiceError) and not exc.nothing_done:
            raise
        error = str(exc)
        if isinstance(exc, InvalidJobIdError):
            error += (f"; a job may exist on the service with tag request:{request_id}: "
                      "check it there")
        ledger_mod.append(path, intent.evolve(clock(), status=JobStatus.SUBMIT_FAILED,
                                              error=error))
        raise
    submitted = intent.evolve(clock(), status=JobStatus.SUBMITTED, job_id=job_id)
    ledger_mod.append(path, submitted)
    return submitted


def resolve_intent(
    service: QuantumService, path: Path, record: LedgerRecord, policy: QueuePolicy, now: datetime
) -> LedgerRecord | None:
    """Settle an intent left by a process that died: the job it made, or ``submit_failed``.

    Returns the updated record, or ``None`` while the grace period has not passed.

    Raises:
        ServiceError: the service could not be asked (try again next time).
    """
    try:
        found = sorted(check_job_id(job_id, f"the {service.name} service's job listing")
                       for job_id in service.find_jobs(["qcourier",
                                                        f"request:{record.request_id}"]))
    except InvalidJobIdError as exc:  # never trusted as a file name: settled, with why
        updated = record.evolve(status=JobStatus.SUBMIT_FAILED, error=str(exc))
        ledger_mod.append(path, updated)
        return updated
    if found:
        note = None if len(found) == 1 else f"several jobs carry request:{record.request_id}: {found}"
        updated = record.evolve(status=JobStatus.SUBMITTED, job_id=found[0], error=note)
        ledger_mod.append(path, updated)
        return updated
    started = record.submission_time or record.updated_at
    if now - started < policy.intent_grace:
        return None
    updated = record.evolve(
        status=JobStatus.SUBMIT_FAILED,
        error=f"no job carries tag request:{record.request_id} {policy.intent_grace} after the "
              "intent: the submission never reached the service",
    )
    ledger_mod.append(path, updated)
    return updated


def queue_policy(settings: Settings, max_pending: int | None = None) -> QueuePolicy:
    """The queue limits the settings (or an explicit ``--max-pending``) give."""
    return QueuePolicy(max_pending=max_pending or settings.max_pending,
                       per_minute=settings.submissions_per_minute,
                       intent_grace=timedelta(seconds=settings.intent_grace_seconds))

