"""A ledger record: the pydantic model of one line.

Only what writes or validates whole lines imports this module (and pydantic): a fold read
from the index keeps :mod:`qcourier.ledger.summary` objects, and the statuses live in
:mod:`qcourier.ledger.status`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcourier.ledger.status import JobStatus, new_record_id, utc_now

SCHEMA_VERSION = 1


class LedgerRecord(BaseModel):
    """One job as the ledger knows it. Each ledger line is one whole ``LedgerRecord``.

    Unknown fields (written by a newer qcourier) are kept, not dropped.
    """

    # defer_build: the validator is built on first use, not on import, so commands that
    # read only the fold index (status, a qcollect with nothing to do) start faster.
    model_config = ConfigDict(extra="allow", defer_build=True)

    schema_version: int = SCHEMA_VERSION
    record_id: str = Field(default_factory=new_record_id)
    job_id: str | None = None
    status: JobStatus = JobStatus.SUBMITTED
    service: str
    backend: str
    experiment_type: str
    logical_state: str | None = None
    shots: int
    num_circuits: int
    circuit_hash: str
    isa_circuit_hash: str
    transpiled_depth: int
    transpiled_gates: dict[str, int]
    submission_time: datetime | None = None
    updated_at: datetime = Field(default_factory=utc_now)
    api_key_index: int | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    tags: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    backend_snapshot_sha256: str | None = None
    calibration_age_hours: float | None = None
    estimated_qpu_seconds: float | None = None
    max_execution_time: int | None = None
    request_id: str | None = None  # also a job tag: finds the job if the process died
    retry_of: str | None = None  # record_id of the failed record this one retries
    retry_count: int = 0
    failure_class: str | None = None  # "system" (not charged, worth retrying) or "user"
    recovered: bool = False  # written by `qcourier recover` from the service's own records
    # After collection:
    completion_time: datetime | None = None
    error: str | None = None
    result_path: str | None = None
    result_sha256: str | None = None
    usage_seconds: float | None = None
    queue_seconds: float | None = None

    def as_json(self, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """The record's JSON values as its ledger line holds them: every field, or only
        ``fields``, in that order (the one projection of a record to JSON)."""
        data = self.model_dump(mode="json")
        return data if fields is None else {name: data[name] for name in fields}

    def to_line(self) -> str:
        """The record as one JSON line, newline included."""
        return self.model_dump_json() + "\n"

    def evolve(self, now: datetime | None = None, **changes: Any) -> LedgerRecord:
        """A copy with ``changes`` applied and ``updated_at`` set to ``now`` (default: the
        current time)."""
        data = self.model_dump()
        data.update(changes)
        data["updated_at"] = now or utc_now()
        return LedgerRecord.model_validate(data)


def summarise_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]
