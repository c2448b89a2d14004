"""Helpers of the team store's tests: machines (ledger directories) writing records."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from s3server import S3Study

from qcourier.ledger import store as L
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.store.objects import ObjectStore, StoreLocation

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def store_of(study: S3Study, **options) -> ObjectStore:
    return ObjectStore(StoreLocation.parse(study.url, study.server.endpoint), **options)


def make_record(**overrides) -> LedgerRecord:
    data = dict(service="local", backend="fake_fez", experiment_type="bell", shots=100,
                num_circuits=1, circuit_hash="a" * 64, isa_circuit_hash="b" * 64,
                transpiled_depth=5, transpiled_gates={"cz": 1}, job_id="j" * 20,
                status=JobStatus.QUEUED, submission_time=T0, updated_at=T0)
    data.update(overrides)
    return LedgerRecord(**data)


def write_files(ledger: Ledger, files: int, per_file: int, tag: str = "m") -> list[LedgerRecord]:
    """``files`` ledger files of ``per_file`` queued records each, named apart by ``tag``."""
    ledger.ensure_writable()
    records = []
    for n in range(files):
        path = ledger.directory / f"submitted_jobs_20261101_{tag}{n:05d}.jsonl"
        batch = [make_record(job_id=f"{tag}{n:05d}x{i:04d}job") for i in range(per_file)]
        L.append(path, batch)
        records += batch
    return records


def complete(ledger: Ledger, record: LedgerRecord, payload: bytes,
             at: datetime | None = None) -> LedgerRecord:
    """Record ``record`` completed on ``ledger`` with a result file holding ``payload``
    (appended where a collector appends: the file its latest line is in)."""
    name = f"{record.job_id}.json"
    (ledger.results_dir).mkdir(parents=True, exist_ok=True)
    (ledger.results_dir / name).write_bytes(payload)
    done = record.model_copy(update={
        "status": JobStatus.COMPLETED, "result_path": f"jobs/{name}",
        "result_sha256": hashlib.sha256(payload).hexdigest(),
        "updated_at": at or record.updated_at + timedelta(hours=1),
        "completion_time": at or record.updated_at + timedelta(hours=1)})
    entry = ledger.fold().entries[record.record_id]
    L.append(entry.path, done)
    return done


def statuses(ledger: Ledger) -> dict[str, str]:
    return {rid: e.summary.status.value for rid, e in ledger.fold().entries.items()}


def put_raw(study: S3Study, key: str, body: bytes) -> None:
    """An object written behind qcourier's back (a foreign tool, a damaged upload)."""
    study.client().put_object(Bucket=study.bucket, Key=f"{study.prefix}/{key}", Body=body)


def circuit_file(ledger: Ledger, isa_hash: str = "b" * 64, data: bytes = b"QISKIT-qpy") -> Path:
    path = ledger.directory / "circuits" / f"{isa_hash}.qpy"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """A command as a real process (it must end within 5 minutes)."""
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
