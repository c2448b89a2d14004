"""Recovery of lost ledger records from the service's own records of qcourier's jobs.

Every qcourier job carries the tag ``qcourier`` and, in its first circuit's metadata, the
experiment, parameters, job-unit metadata and logical circuit hash it was built from. A job
that no ledger file knows (its JSONL was deleted or lost) is rebuilt from that into a full
ledger record marked ``recovered``, in a new ledger file, so that ``qcollect`` collects and
analyses it like any other. Jobs whose request id belongs to an unsettled intent are left to
``qcollect``, which settles intents itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qcourier.circuits.transpile import describe_transpiled
from qcourier.ledger import store as ledger_mod
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus, as_utc
from qcourier.ledger.store import Ledger
from qcourier.services.base import QuantumService, ServiceError
from qcourier.submit.dispatch import store_circuits


@dataclass
class RecoveryReport:
    """What a recovery found: per service key, the jobs rebuilt and what went wrong."""

    recovered: list[LedgerRecord] = field(default_factory=list)
    known: int = 0
    failures: list[str] = field(default_factory=list)
    ledger_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def recover(services: list[QuantumService], ledger: Ledger, since: datetime | None = None,
            dry_run: bool = False) -> RecoveryReport:
    """Write ledger records for the services' qcourier jobs that no ledger file knows
    (created after ``since``, if given; naive: UTC)."""
    since = as_utc(since) if since is not None else None
    fold = ledger.fold()
    known_jobs = {r.job_id for r in fold.summaries if r.job_id}
    open_intents = {r.request_id for r in fold.summaries
                    if r.status is JobStatus.SUBMITTING and r.request_id}
    report = RecoveryReport()
    for service in services:
        try:
            found = service.find_jobs(["qcourier"], created_after=since)
        except ServiceError as exc:
            report.failures.append(str(exc))
            continue
        for job_id in sorted(found):
            if job_id in known_jobs:
                report.known += 1
                continue
            try:
                info = service.job_info(job_id)
                record = record_from_info(service, job_id, info)
            except ServiceError as exc:
                report.failures.append(str(exc))
                continue
            if record.request_id in open_intents:
                continue  # qcollect settles its intent
            report.recovered.append(record)
            if info.circuits and not dry_run:
                # analyses that model the circuit that ran (heavy_hex_code) read it from here
                store_circuits(ledger, record.isa_circuit_hash, list(info.circuits))
    if report.recovered and not dry_run:
        report.ledger_path = ledger.new_file()
        ledger_mod.append(report.ledger_path, report.recovered)
    return report


def rebuild_record(service: QuantumService, job_id: str) -> LedgerRecord:
    """A ledger record for a job, from what the service knows of it."""
    return record_from_info(service, job_id, service.job_info(job_id))


def record_from_info(service: QuantumService, job_id: str, info: Any) -> LedgerRecord:
    """A ledger record for a job from the service's ``job_info`` of it."""
    tags = {t.partition(":")[0]: t.partition(":")[2] for t in info.tags if ":" in t}
    meta: dict[str, Any] = {}
    if info.circuits:
        meta = dict((getattr(info.circuits[0], "metadata", None) or {}).get("qcourier") or {})
    unit = dict(meta.get("unit") or {})
    logical_state = unit.pop("logical_state", None)
    # the same description of the ISA circuits as at submission (qpy size: not needed here)
    described = describe_transpiled(list(info.circuits), 0)
    unit["physical_qubits"] = described.physical_qubits
    unit["circuit_depths"] = described.circuit_depths
    isa_hash = described.isa_circuit_hash
    return LedgerRecord(
        job_id=job_id,
        status=JobStatus.SUBMITTED,
        service=service.name,
        api_key_index=service.api_key_index,
        backend=info.backend,
        experiment_type=meta.get("experiment") or tags.get("experiment") or "unknown",
        logical_state=None if logical_state is None else str(logical_state),
        shots=info.shots or 0,
        num_circuits=len(info.circuits),
        circuit_hash=meta.get("circuit_hash") or tags.get("circuit") or isa_hash,
        isa_circuit_hash=isa_hash,
        transpiled_depth=max(described.circuit_depths, default=0),
        transpiled_gates=described.transpiled_gates,
        submission_time=info.created,
        tags=info.tags,
        request_id=tags.get("request"),
        params=dict(meta.get("params") or {}),
        metadata=unit,
        backend_snapshot_sha256=meta.get("backend_snapshot_sha256"),
        recovered=True,
    )
