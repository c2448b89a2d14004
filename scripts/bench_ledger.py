#!/usr/bin/env python
"""Benchmark folding a large ledger: ``Ledger.fold``, ``qcourier status`` and ``qcollect``.

Builds a synthetic ledger of ``--records`` completed jobs across ``--files`` ledger files
(realistic lines: surface-code and heartbeat records of about 1.5 KB, each with its result
file), then times, each case in a fresh process and ``--repeats`` times (median shown):

- **bare loop**: ``json.loads`` over every line of every file (the yardstick of issue 7);
- **fold, index cold**: ``Ledger.fold()`` with ``cache/`` removed first (what the first
  fold after an upgrade, or after ``rm -r cache``, pays: every line validated, index built);
- **fold, index warm**: ``Ledger.fold()`` again (what every later run pays);
- **qcourier status**: the command, output to a pipe (its default table of the latest 100
  jobs plus the counts), and ``qcourier status --json`` (every record);
- **qcollect**: ``qcollect --poll-all`` on the same ledger plus 10 pending jobs on a local
  service, against the same 10 pending jobs in an otherwise empty ledger: the difference is
  what the 100,000 final records cost a collector run.

The command cases are timed against the bare loop run the same way (a fresh interpreter),
so interpreter start-up is in both. Peak memory is each process's max RSS (``wait4``).

Usage::

    python scripts/bench_ledger.py                 # 100,000 records, 100 files, 3 repeats
    python scripts/bench_ledger.py --quick         # 10,000 records, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BARE_LOOP = """
import json, sys
from pathlib import Path
n = 0
for path in sorted(Path(sys.argv[1]).glob("submitted_jobs_*.jsonl")):
    for line in path.read_bytes().split(b"\\n"):
        if line:
            json.loads(line)
            n += 1
print(n)
"""

FOLD = """
import sys
from pathlib import Path
from qcourier.ledger.store import Ledger
fold = Ledger(Path(sys.argv[1])).fold()
print(len(fold.entries))
"""


def build_ledger(directory: Path, records: int, files: int, pending: int = 0,
                 service_dir: Path | None = None, *, start: datetime | None = None,
                 step: timedelta = timedelta(minutes=1), first: int = 0) -> None:
    """Write ``records`` completed records over ``files`` files, plus ``pending`` queued jobs.

    The records are submitted ``step`` apart from ``start`` (default: so that the last one
    finished 29 days ago, outside the 28-day budget window), their job ids numbered from
    ``first`` (so that several calls can fill one ledger).
    """
    from qcourier.ledger.record import LedgerRecord
    from qcourier.ledger.status import JobStatus, new_record_id

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jobs").mkdir(exist_ok=True)
    t0 = start or datetime.now(UTC) - timedelta(days=29) - step * records
    templates = [
        LedgerRecord(
            service="local", backend="fake_fez", experiment_type="surface_code",
            logical_state="+", shots=4096, num_circuits=6, circuit_hash="f" * 64,
            isa_circuit_hash="e" * 64, transpiled_depth=503,
            transpiled_gates={"cz": 1968, "measure": 222, "reset": 270, "rz": 2032, "sx": 3635},
            tags=["qcourier", "experiment:surface_code", "batch:20261001_000000",
                  "request:d3cb3aade6cb49db", "circuit:" + "f" * 64],
            params={"shots": 4096, "distance": 3, "rounds": 6, "logical_state": "+"},
            metadata={"distance": 3, "rounds": [1, 2, 3, 4, 5, 6], "basis": "x",
                      "num_detectors": [8, 16, 24, 32, 40, 48],
                      "num_measurements": [17, 25, 33, 41, 49, 57],
                      "physical_qubits": list(range(116, 136)),
                      "circuit_depths": [73, 151, 226, 289, 400, 503]},
            backend_snapshot_sha256="a" * 64, calibration_age_hours=12.5,
            estimated_qpu_seconds=8.3, max_execution_time=30, git_commit="b" * 40,
            git_dirty=False),
        LedgerRecord(
            service="local", backend="fake_fez", experiment_type="deployment", shots=2048,
            num_circuits=1, circuit_hash="c" * 64, isa_circuit_hash="d" * 64,
            transpiled_depth=110, transpiled_gates={"cz": 26, "measure": 27, "rz": 107, "sx": 54},
            tags=["qcourier", "experiment:deployment", "batch:20261001_000000",
                  "request:03ecbd26ab787a36", "circuit:" + "c" * 64],
            params={"shots": 2048, "width": 27, "step": 0.123},
            metadata={"width": 27, "step": 0.123, "physical_qubits": list(range(2, 29)),
                      "circuit_depths": [110]},
            backend_snapshot_sha256="a" * 64, calibration_age_hours=12.5,
            estimated_qpu_seconds=2.57, max_execution_time=30, git_commit="b" * 40,
            git_dirty=False),
    ]
    result_body = b'{"counts": [{"0": 1}]}'
    import hashlib

    result_sha = hashlib.sha256(result_body).hexdigest()
    per_file = records // files
    n = 0
    for f in range(files):
        lines = []
        for _ in range(per_file):
            template = templates[n % 2]
            job_id = f"j{first + n:019d}"
            (directory / "jobs" / f"{job_id}.json").write_bytes(result_body)
            submitted = t0 + step * n
            record = template.model_copy(update={
                "record_id": new_record_id(), "job_id": job_id, "status": JobStatus.COMPLETED,
                "submission_time": submitted, "updated_at": submitted + timedelta(minutes=5),
                "completion_time": submitted + timedelta(minutes=5), "usage_seconds": 7.9,
                "queue_seconds": 240.0, "result_path": f"jobs/{job_id}.json",
                "result_sha256": result_sha, "request_id": new_record_id()})
            lines.append(record.to_line())
            n += 1
        name = f"submitted_jobs_{(t0 + step * n).strftime('%Y%m%d_%H%M%S')}.jsonl"
        (directory / name).write_text("".join(lines))
    if pending:
        submit_pending(directory, service_dir, pending)


def submit_pending(directory: Path, service_dir: Path, count: int) -> None:
    """``count`` small jobs on a local service that stay queued for an hour, in the ledger."""
    subprocess.run([sys.executable, "-m", "qcourier", "submit", "--experiment", "bell",
                    "--shots", "10", "--repeat", str(count), "--force", "--max-pending",
                    str(count), "--allow-over-budget"], check=True, capture_output=True,
                   env=_env(directory, service_dir, queue_seconds=3600))


def _env(directory: Path, service_dir: Path | None, queue_seconds: float = 0) -> dict[str, str]:
    env = dict(os.environ, QCOURIER_LEDGER_DIR=str(directory), QCOURIER_SERVICE="local",
               QCOURIER_LOCAL_QUEUE_SECONDS=str(queue_seconds), QCOURIER_LOCAL_RUN_SECONDS="0",
               QCOURIER_SUBMISSIONS_PER_MINUTE="1000", NO_COLOR="1")
    if service_dir is not None:
        env["QCOURIER_LOCAL_SERVICE_DIR"] = str(service_dir)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: modules byte-compiled once
    return env


def timed(argv: list[str], env: dict[str, str] | None = None, before=None,
          ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of ``argv`` in a fresh process (which must
    exit with one of ``ok``)."""
    if before is not None:
        before()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def median_of(repeats: int, argv: list[str], env=None, before=None) -> tuple[float, float]:
    runs = [timed(argv, env, before) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--pending", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 records, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats = 10_000, 1

    import qiskit

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, qiskit {qiskit.__version__}")
    print(f"ledger: {args.records:,} completed records in {args.files} files, "
          f"{args.repeats} repeat(s), medians\n")
    work = Path(tempfile.mkdtemp(prefix="qcourier-bench-ledger-"))
    try:
        big, small = work / "big", work / "small"
        service = work / "service"
        start = time.perf_counter()
        build_ledger(big, args.records, args.files)
        size_mb = sum(p.stat().st_size for p in big.glob("*.jsonl")) / 2**20
        print(f"built in {time.perf_counter() - start:.0f} s: {size_mb:.0f} MB of JSONL\n")
        py = sys.executable
        env = _env(big, service)
        cache = big / "cache"

        def cold() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        rows = []
        bare = median_of(args.repeats, [py, "-c", BARE_LOOP, str(big)], env)
        rows.append(("bare json.loads loop", *bare, None))
        rows.append(("Ledger.fold(), index cold",
                     *median_of(args.repeats, [py, "-c", FOLD, str(big)], env, before=cold), 3.0))
        rows.append(("Ledger.fold(), index warm",
                     *median_of(args.repeats, [py, "-c", FOLD, str(big)], env), 3.0))
        rows.append(("qcourier status (warm)",
                     *median_of(args.repeats, [py, "-m", "qcourier", "status"], env), 3.0))
        rows.append(("qcourier status --json (warm)",
                     *median_of(args.repeats, [py, "-m", "qcourier", "status", "--json"], env),
                     3.0))
        print("| case | median s | peak RSS MB | x bare loop | target |")
        print("|---|---:|---:|---:|---|")
        for name, seconds, rss, target in rows:
            ratio = seconds / bare[0]
            verdict = "" if target is None else (
                f"<= {target:g}x and < 300 MB: {'met' if ratio <= target and rss < 300 else 'MISSED'}")
            print(f"| {name} | {seconds:.3f} | {rss:.0f} | {ratio:.2f} | {verdict} |")

        if args.pending:
            submit_pending(big, service, args.pending)
            small.mkdir()
            submit_pending(small, service, args.pending)
            collect = [py, "-m", "qcourier", "collect", "--poll-all", "--quiet"]
            with_big = median_of(args.repeats, collect, _env(big, service, 3600))
            alone = median_of(args.repeats, collect, _env(small, service, 3600))
            print(f"\n| qcollect --poll-all, {args.pending} pending jobs | median s | peak RSS MB |")
            print("|---|---:|---:|")
            print(f"| alone in the ledger | {alone[0]:.3f} | {alone[1]:.0f} |")
            print(f"| beside {args.records:,} final records | {with_big[0]:.3f} | {with_big[1]:.0f} |")
            print(f"| cost of the final records | {with_big[0] - alone[0]:+.3f} | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
