"""Every test runs in its own directory, with every path and setting pointed at tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcourier.cli._common import AppState
from qcourier.ledger.store import Ledger
from qcourier.services.local import LocalService, LocalServiceConfig

CLEARED = [
    "QCOURIER_LEDGER_DIR", "QCOURIER_SERVICE", "QCOURIER_LOCAL_SERVICE_DIR",
    "QCOURIER_LOCAL_QUEUE_SECONDS", "QCOURIER_LOCAL_RUN_SECONDS", "QCOURIER_LOCAL_FAILURE_RATE",
    "QCOURIER_LOCAL_SEED", "QCOURIER_LOCAL_NOISE", "QCOURIER_LOCAL_CLIFFORD_ENGINE", "IBM_QUANTUM_TOKEN",
    "QCOURIER_LOCAL_LATENCY_SECONDS", "QCOURIER_LOCAL_RATE_LIMIT",
]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = tmp_path (so no stray .env is read), settings pointed inside it."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QCOURIER_LEDGER_DIR", str(tmp_path / "ledger"))
    monkeypatch.setenv("QCOURIER_LOCAL_SERVICE_DIR", str(tmp_path / "service"))
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "0")
    monkeypatch.setenv("QCOURIER_LOCAL_RUN_SECONDS", "0")
    monkeypatch.setenv("QCOURIER_SERVICE", "local")  # a saved qiskit account must not matter
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger")


@pytest.fixture
def service(tmp_path: Path) -> LocalService:
    return LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=0,
                                           run_seconds=0, seed=7))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner):
    """Run a click command with a fresh AppState; returns the click Result."""

    def run(command, args, state: AppState | None = None):
        return runner.invoke(command, [str(a) for a in args], obj=state or AppState(),
                             catch_exceptions=False)

    return run


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for running the console scripts as real subprocesses."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        QCOURIER_LEDGER_DIR=str(tmp_path / "ledger"),
        QCOURIER_LOCAL_SERVICE_DIR=str(tmp_path / "service"),
        QCOURIER_LOCAL_QUEUE_SECONDS="0",
        QCOURIER_LOCAL_RUN_SECONDS="0",
        QCOURIER_SERVICE="local",
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def script(name: str) -> str:
    """Path of a console script installed beside this interpreter."""
    return str(Path(sys.executable).with_name(name))


def submit_process(tmp_path: Path, *args: str, **env: str) -> list[dict]:
    """Run ``qsubmit ARGS`` as a real process (it must succeed); the ledger's records."""
    import subprocess

    done = subprocess.run([script("qsubmit"), *args], env=cli_env(tmp_path, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return ledger_records(tmp_path / "ledger")


def ledger_records(ledger_dir: Path) -> list[dict]:
    """The latest line of every record in a ledger directory, in first-written order."""
    import json

    latest: dict[str, dict] = {}
    for path in sorted(ledger_dir.glob("submitted_jobs_*.jsonl")):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            latest[data["record_id"]] = data
    return list(latest.values())
