"""Benchmark the team store: a study of 10,000 jobs from 3 machines on SeaweedFS (loopback).

Each machine's ledger is written directly (no service, nothing simulated): 10,000 jobs over
3 machines, in ledger files of 25 jobs (one qsubmit --repeat 25 each), every job with three
lines (submitted, queued, completed) and a small result file; one ISA circuit file and one
calibration snapshot per ledger file. The three machines push; then, as real ``qcourier``
processes:

- **first sync of a new machine**: ``qcourier sync`` in an empty directory (pulls every
  segment and result), beside copying a local directory that holds the same files
  (``cp -r``: what the study costs to bring onto a machine without a store);
- **incremental sync with 10 new jobs**: one machine writes 10 jobs and syncs (push), the new
  machine syncs (pull), beside a ``qcourier sync`` with nothing new;
- **qcourier status over the union** (pulled segments + local files; with the store set, so
  it lists the bucket first), beside ``qcourier status`` on one local directory holding the
  same 10,000 jobs in local files, no store; and the same for a ``qcollect`` with nothing
  pending (over the union its working set is made from the full fold).

Usage: python scripts/bench_store_sync.py [JOBS] (default 10000). Prints a markdown table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3  # noqa: E402

from qcourier.ledger.record import LedgerRecord  # noqa: E402
from qcourier.ledger.status import JobStatus  # noqa: E402

MACHINES = 3
PER_FILE = 25
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def write_machine(directory: Path, tag: str, jobs: int) -> None:
    """``jobs`` completed jobs in files of :data:`PER_FILE`, with their results, circuits
    and snapshots."""
    for folder in ("jobs", "circuits", "snapshots"):
        (directory / folder).mkdir(parents=True, exist_ok=True)
    for n in range(0, jobs, PER_FILE):
        isa = hashlib.sha256(f"{tag}{n}".encode()).hexdigest()
        (directory / "circuits" / f"{isa}.qpy").write_bytes(os.urandom(2000))
        import gzip

        calibration = json.dumps({"backend": "fake_fez", "n": n}, sort_keys=True,
                                 separators=(",", ":")).encode()
        snap = hashlib.sha256(calibration).hexdigest()
        (directory / "snapshots" / f"{snap}.json.gz").write_bytes(gzip.compress(calibration,
                                                                                mtime=0))
        lines = []
        for i in range(n, min(n + PER_FILE, jobs)):
            job = f"{tag}{i:06d}jobid00000"
            when = T0 + timedelta(minutes=i)
            base = LedgerRecord(service="local", backend="fake_fez", experiment_type="bell",
                                shots=100, num_circuits=1, circuit_hash=isa,
                                isa_circuit_hash=isa, transpiled_depth=5,
                                transpiled_gates={"cz": 1}, job_id=job,
                                backend_snapshot_sha256=snap, status=JobStatus.SUBMITTED,
                                submission_time=when, updated_at=when,
                                estimated_qpu_seconds=2.0)
            result = json.dumps({"job_id": job, "counts": [{"00": 51, "11": 49}]}).encode()
            (directory / "jobs" / f"{job}.json").write_bytes(result)
            lines += [base, base.model_copy(update={"status": JobStatus.QUEUED,
                                                    "updated_at": when + timedelta(seconds=5)}),
                      base.model_copy(update={
                          "status": JobStatus.COMPLETED, "updated_at": when + timedelta(hours=1),
                          "completion_time": when + timedelta(hours=1),
                          "result_path": f"jobs/{job}.json",
                          "result_sha256": hashlib.sha256(result).hexdigest(),
                          "usage_seconds": 2.0, "queue_seconds": 3000.0})]
        name = f"submitted_jobs_{(T0 + timedelta(minutes=n)).strftime('%Y%m%d_%H%M%S')}_{tag}"
        (directory / f"{name}.jsonl").write_text("".join(r.to_line() for r in lines))


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return elapsed


def median_of(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    return statistics.median(timed(argv, env) for _ in range(runs))


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    bin_dir = Path(sys.executable).parent
    qcourier = str(bin_dir / "qcourier")
    qcollect = str(bin_dir / "qcollect")
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = SeaweedS3(work / "s3").start()
    try:
        server.create_bucket("bench")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("QCOURIER_", "AWS_"))}
        store = {"QCOURIER_STORE": "s3://bench/study", "QCOURIER_S3_ENDPOINT": server.endpoint,
                 "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                 "AWS_DEFAULT_REGION": "us-east-1", "QCOURIER_SERVICE": "local",
                 "QCOURIER_CACHE_DIR": str(work / "cache")}

        def env(ledger: Path, with_store: bool = True) -> dict[str, str]:
            return {**base, **(store if with_store else {k: store[k] for k in (
                "QCOURIER_SERVICE", "QCOURIER_CACHE_DIR")}), "QCOURIER_LEDGER_DIR": str(ledger)}

        share = [jobs // MACHINES + (i < jobs % MACHINES) for i in range(MACHINES)]
        alone = work / "alone"  # one directory holding every machine's files, no store
        for i, count in enumerate(share):
            write_machine(work / f"m{i}", f"m{i}", count)
            shutil.copytree(work / f"m{i}", alone, dirs_exist_ok=True)
        push_times = [timed([qcourier, "sync"], env(work / f"m{i}")) for i in range(MACHINES)]
        for i in range(MACHINES):  # every machine up to date with the others
            timed([qcourier, "sync"], env(work / f"m{i}"))
        rows = []
        new = work / "new"
        first = timed([qcourier, "sync"], env(new))
        start = time.perf_counter()
        shutil.copytree(alone, work / "copied")
        copied = time.perf_counter() - start
        rows.append(("first sync of a new machine", first, f"cp -r of the directory: {copied:.2f}"))

        write_machine(work / "m0-more", "x0", 10)
        for path in (work / "m0-more").rglob("*"):
            if path.is_file():
                target = work / "m0" / path.relative_to(work / "m0-more")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        pushed = timed([qcourier, "sync"], env(work / "m0"))
        pulled = timed([qcourier, "sync"], env(new))
        idle = median_of([qcourier, "sync"], env(new))
        rows.append(("incremental sync, 10 new jobs: push (writer)", pushed,
                     f"sync with nothing new: {idle:.2f}"))
        rows.append(("incremental sync, 10 new jobs: pull (new machine)", pulled, ""))
        timed([qcourier, "status"], env(new))  # the fold index made once, as any first run
        timed([qcourier, "status"], env(alone, with_store=False))
        union = median_of([qcourier, "status", "--limit", "0"], env(new))
        union_offline = median_of([qcourier, "status", "--limit", "0"], env(new, False))
        local = median_of([qcourier, "status", "--limit", "0"], env(alone, with_store=False))
        rows.append(("qcourier status over the union (store set: lists it first)", union,
                     f"local directory alone: {local:.2f}"))
        rows.append(("qcourier status over the union (store unset)", union_offline, ""))
        timed([qcollect], env(new, False))
        timed([qcollect], env(alone, with_store=False))
        collect_union = median_of([qcollect], env(new))
        collect_local = median_of([qcollect], env(alone, with_store=False))
        rows.append(("qcollect over the union, nothing pending (pull, fold, push)",
                     collect_union, f"local directory alone: {collect_local:.2f}"))
        segments = sum(1 for p in (new / "store" / "remote").rglob("*.jsonl") if p.is_file())
        print(f"{jobs} jobs from {MACHINES} machines ({segments} pulled segments, "
              f"{jobs} results); initial pushes: "
              + ", ".join(f"{t:.2f} s" for t in push_times) + " (each also pulls the "
              "machines before it)")
        print()
        print("| work | with the store (s) | beside it, local only (s) |")
        print("|---|---:|---|")
        for name, seconds, beside in rows:
            print(f"| {name} | {seconds:.2f} | {beside} |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
