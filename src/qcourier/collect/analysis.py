"""A finished job's analysis: its experiment's numbers from the counts, with the circuits and
the calibration it ran under; and the experiment's one-line headline of them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.errors import QcourierError
from qcourier.ledger.store import Ledger
from qcourier.provenance import load_snapshot
from qcourier.services.workers import CPU_LOCK
from qcourier.submit.dispatch import load_circuits

if TYPE_CHECKING:
    from qcourier.ledger.record import LedgerRecord


@functools.lru_cache(maxsize=4)
def _snapshot(directory: Path, sha: str) -> dict[str, Any] | None:
    # Snapshots are content-addressed (their name is their sha256): safe to keep, and a
    # device's whole calibration is costly to read again for every job.
    return load_snapshot(directory, sha)


@functools.lru_cache(maxsize=256)
def _calibration(directory: Path, sha: str, qubits: tuple[int, ...]) -> Any:
    """The calibration of ``qubits`` in snapshot ``sha`` (None if the snapshot is gone)."""
    from qcourier.experiments.base import calibration_for_qubits

    snapshot = _snapshot(directory, sha)
    return None if snapshot is None else calibration_for_qubits(snapshot, qubits)


def _run_context(ledger: Ledger, record: LedgerRecord) -> Any:
    """The ISA circuits (hash-checked) and the calibration snapshot a record ran with;
    either is None when the ledger no longer holds it (the analysis says what is missing)."""
    from qcourier.experiments.base import RunContext

    try:
        circuits = load_circuits(ledger, record)
    except QcourierError:
        circuits = None
    snapshot = (_snapshot(ledger.snapshots_dir, record.backend_snapshot_sha256)
                if record.backend_snapshot_sha256 else None)
    return RunContext(circuits, snapshot)


def analyse(
    ledger: Ledger, record: LedgerRecord, counts: list[dict[str, int]]
) -> tuple[dict[str, Any] | None, str | None]:
    """Run the record's experiment analysis; return (analysis, None) or (None, error)."""
    from qcourier.experiments import get_experiment

    try:
        experiment = get_experiment(record.experiment_type)
        calibration = None
        if record.backend_snapshot_sha256:
            calibration = _calibration(ledger.snapshots_dir, record.backend_snapshot_sha256,
                                       tuple(record.metadata.get("physical_qubits", [])))
        metadata = dict(record.metadata, logical_state=record.logical_state)
        extra = {"run": _run_context(ledger, record)} if experiment.needs_run else {}
        with CPU_LOCK:  # collectors analyse on several threads; see CPU_LOCK
            return experiment.analyse(metadata, counts, calibration, **extra), None
    except Exception as exc:  # an analysis bug must not lose the counts
        return None, f"{type(exc).__name__}: {exc}"


def headline(experiment_type: str, analysis: dict[str, Any] | None) -> str | None:
    """The experiment's one-line summary of an analysis (None if it has none, or fails:
    a summary is a courtesy, and must never cost a collected result)."""
    if analysis is None:
        return None
    from qcourier.experiments import get_experiment

    try:
        return get_experiment(experiment_type).headline(analysis)
    except Exception:  # noqa: BLE001 - see the docstring
        return None
