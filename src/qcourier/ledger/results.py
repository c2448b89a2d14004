"""Result files of completed records: read them, and check them against the sha256 the ledger
recorded (a rotating batch per collect run, or all of them for `qcourier ledger check`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qcourier.files import atomic_write_bytes, sha256_file
from qcourier.ledger.record import (
    JobStatus,
    LedgerRecord,
    RecordView,
)
from qcourier.ledger.store import Ledger


class ResultCheck:
    """Whether completed records' result files can still be trusted, cheaply on every run.

    Every run checks that every result file exists (one listing of ``jobs/``), and
    re-hashes ``batch`` of them against the sha256 in the ledger, taking turns over the
    completed records (a cursor in ``cache/result-check.json``), so a study of 100,000 jobs
    costs a run a listing and ``batch`` hashes, and every file is re-hashed once every
    ``n / batch`` runs. ``batch=None`` re-hashes them all. A result file is hashed when it
    is written, so a new one is always right.
    """

    def __init__(self, ledger: Ledger, batch: int | None):
        self.ledger = ledger
        self.batch = batch
        self.state_path = ledger.directory / "cache" / "result-check.json"
        self._listing: set[str] | None = None
        self._position = 0  # index of the next completed record among this run's
        try:
            self.cursor = int(json.loads(self.state_path.read_bytes())["cursor"])
        except (OSError, ValueError, KeyError, TypeError):
            self.cursor = 0

    def problem(self, record: RecordView) -> str | None:
        """Why a completed record's result file cannot be trusted, or None if it can."""
        if record.status is not JobStatus.COMPLETED or not record.result_path:
            return None
        position, self._position = self._position, self._position + 1
        due = self._due(position)
        if not due and self._listed(record.result_path):  # the common case: no Path built
            return None
        path = self.ledger.directory / record.result_path
        if not path.is_file():
            return "its result file is missing"
        if due and sha256_file(path) != record.result_sha256:
            return "its result file does not match the sha256 in the ledger"
        return None

    def _listed(self, relative: str) -> bool:
        """Whether ``jobs/<name>`` is in this run's one listing of ``jobs/``."""
        name = relative[5:] if relative.startswith("jobs/") else ""
        if not name or "/" in name:
            return False  # not where qcourier writes results: looked at on its own
        if self._listing is None:
            try:
                self._listing = set(os.listdir(self.ledger.results_dir))
            except OSError:
                self._listing = set()
        return name in self._listing

    def _due(self, position: int) -> bool:
        if self.batch is None:
            return True
        return self.cursor <= position < self.cursor + self.batch

    def save(self) -> None:
        """Move the cursor past this run's batch (to the start after the last record)."""
        if self.batch is None:
            return
        nxt = self.cursor + self.batch
        nxt = 0 if nxt >= self._position else nxt
        if nxt != self.cursor:
            try:
                atomic_write_bytes(self.state_path, json.dumps({"cursor": nxt}).encode(),
                                   durable=False)
            except OSError:
                pass  # a cache: the next run starts from the same place


def read_result(ledger_dir: Path, record: LedgerRecord) -> tuple[dict[str, Any] | None, str | None]:
    """A record's result file as a dict, or ``(None, why it cannot be read)``."""
    if not record.result_path:
        return None, "no result_path recorded"
    path = Path(ledger_dir) / record.result_path
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    except ValueError as exc:
        return None, f"{path} is not JSON ({exc})"
    if not isinstance(payload, dict):
        return None, f"{path} is not a JSON object"
    return payload, None

