"""A job's statuses in the ledger, and what every record is stamped with (UTC times, record
ids).

No pydantic here (nor in :mod:`qcourier.ledger.summary`): the commands' ``--help`` and a fold
read from the index need only these, and importing pydantic would cost them a good part of
their start-up.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import StrEnum


class JobStatus(StrEnum):
    """A job's status in the ledger."""

    DEFERRED = "deferred"  # planned, waiting for a free pending slot (qcollect submits it)
    SUBMITTING = "submitting"  # intent: the service is being asked; the job id is not known yet
    SUBMIT_FAILED = "submit_failed"  # the intent never became a job
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"  # finished with fewer shots than asked for
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"  # could not be polled, or the service does not know the job

    @property
    def is_final(self) -> bool:
        """Whether collection is over for a job in this status."""
        return self in FINAL_STATUSES

    @property
    def is_pending(self) -> bool:
        """Whether the job is still on its way at the service."""
        return self in (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def is_open(self) -> bool:
        """Whether the record still needs qcollect: on its way, in an intent, or deferred."""
        return self.is_pending or self in (JobStatus.SUBMITTING, JobStatus.DEFERRED)


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED,
                            JobStatus.CANCELLED, JobStatus.SUBMIT_FAILED})

#: The name of every status, in the order above (what ``--status`` accepts).
STATUS_NAMES: tuple[str, ...] = tuple(status.value for status in JobStatus)


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC time (a naive one is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def new_record_id() -> str:
    """A stable, unique id for a ledger record (independent of the service's job id): 8 random
    bytes from the OS, in hex (what ``secrets.token_hex(8)`` gives, without its imports)."""
    return os.urandom(8).hex()
