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
from s3server import s3_server, s3_study  # noqa: F401 - fixtures of the store's tests

CLEARED = [
    "QCOURIER_LEDGER_DIR", "QCOURIER_SERVICE", "QCOURIER_LOCAL_SERVICE_DIR",
    "QCOURIER_LOCAL_QUEUE_SECONDS", "QCOURIER_LOCAL_RUN_SECONDS", "QCOURIER_LOCAL_FAILURE_RATE",
    "QCOURIER_LOCAL_SEED", "QCOURIER_LOCAL_NOISE", "QCOURIER_LOCAL_CLIFFORD_ENGINE", "IBM_QUANTUM_TOKEN",
    "QCOURIER_LOCAL_LATENCY_SECONDS", "QCOURIER_LOCAL_RATE_LIMIT",
    # the team store: never the user's bucket, profile or key
    "QCOURIER_STORE", "QCOURIER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "QCOURIER_STORE_TIMEOUT", "QCOURIER_STORE_WORKERS",
]


def _freeze_what_every_test_imports() -> None:
    """Import the heavy packages nearly every test process uses, then ``gc.freeze()``: the
    garbage collector no longer scans their millions of objects in each of its full
    collections, only what the tests make (about a tenth less CPU over the suite; in a
    sample of three files, 35.9 s of CPU without, 31.7 s with). Only where tests run: an
    xdist controller runs none, and would only be held up starting its workers."""
    import gc

    import pymatching  # noqa: F401
    import qiskit  # noqa: F401
    import qiskit_aer  # noqa: F401
    import qiskit_ibm_runtime  # noqa: F401
    import stim  # noqa: F401

    gc.collect()
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    runs_tests_here = (hasattr(config, "workerinput")  # an xdist worker
                       or not config.getoption("numprocesses", default=None))  # no workers
    if runs_tests_here:
        _freeze_what_every_test_imports()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (pyproject's default): half as many again as the CPUs this
    process may use. Many tests spend much of their time waiting for the processes they
    start, for servers, or out an IBM client's back-off, so a worker more keeps the CPUs
    busy (on 2 CPUs, a sample of the slowest files: 79 s with 2 workers, 62 s with 3, 64 s
    with 4)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) * 3 // 2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the whole run, so that the local service's fake devices are
    described once (not by every process a test starts), and never in the user's own cache.
    Under pytest-xdist the workers share it (its files are written atomically)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "qcourier-cache"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> Path:
    """cwd = tmp_path (so no stray .env is read), settings pointed inside it (the cache: at
    the run's own)."""
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
    monkeypatch.setenv("QCOURIER_CACHE_DIR", str(cache_dir))
    return tmp_path


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger")


@pytest.fixture
def service(tmp_path: Path, cache_dir: Path) -> LocalService:
    return LocalService(LocalServiceConfig(root=tmp_path / "service", queue_seconds=0,
                                           run_seconds=0, seed=7, cache_dir=cache_dir))


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


def submit_jobs(tmp_path: Path, *args: str, **env: str) -> list[dict]:
    """``qsubmit ARGS`` (it must succeed) with these settings over the test's; the ledger's
    records.

    It runs qsubmit's command in this process: this is the setup of tests whose subject is
    another command's process, which a qsubmit process would cost a second or two of
    start-up and transpiler plugins each. The tests of qsubmit as a process (killed,
    racing, in a repository) start it themselves.
    """
    run_command("submit", args, env)
    return ledger_records(tmp_path / "ledger")


def collect_jobs(**env: str) -> None:
    """``qcollect`` (it must succeed) in this process, with these settings over the test's:
    setup, as :func:`submit_jobs` is."""
    run_command("collect", (), env)


def run_command(name: str, args, env: dict[str, str]) -> None:
    from qcourier.cli import collect, submit

    command = {"submit": submit.main, "collect": collect.main}[name]
    result = CliRunner().invoke(command, [str(a) for a in args], env=env, obj=AppState(),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def finish_local_jobs(tmp_path: Path) -> None:
    """Let every job of the test's local service finish now, whatever its queue and run
    times: a test that watches a job wait releases it at an observed point, not after a
    wall-clock guess. (The spec file is the job's whole state; it is rewritten atomically,
    as the service writes it.)"""
    import json

    from qcourier.files import atomic_write_bytes

    for path in (tmp_path / "service").glob("*.json"):
        if "." in path.stem:  # <id>.result.json, <id>.error.json: not specs
            continue
        spec = json.loads(path.read_text())
        spec.update(queue_seconds=0, run_seconds=0)
        atomic_write_bytes(path, json.dumps(spec, indent=1).encode())


def ledger_records(ledger_dir: Path) -> list[dict]:
    """The latest line of every record in a ledger directory, in first-written order."""
    import json

    latest: dict[str, dict] = {}
    for path in sorted(ledger_dir.glob("submitted_jobs_*.jsonl")):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            latest[data["record_id"]] = data
    return list(latest.values())
