#!/usr/bin/env python
"""Benchmark a ``qcollect`` run that has little to do beside many final records (issue 16).

Three ledgers, each with the same open jobs on a local service — ``--pending`` jobs queued
for an hour, and ``--deferred`` jobs waiting behind them that the budget guard refuses on
every run (so the drain and the guard run too) — and:

- **alone**: nothing else;
- **beside N final**: ``--records`` completed records in ``--files`` files, all finished
  before the 28-day budget window;
- **beside N final, K in the window**: the same, the last ``--in-window`` of them (one
  file) finished in the window.

Each ledger is collected once first (the index is built, the jobs go from submitted to
queued, as any earlier cron run leaves them), then ``qcollect --poll-all --quiet`` is timed
``--repeats`` times, each in a fresh process, interleaved between the ledgers; medians.
Each run polls the open jobs, finds nothing changed, and appends nothing.

Then the submission's guard: ``qsubmit -e bell --force``, which the same budget refuses
(after planning, under the key's lock: dedupe skipped by ``--force``, guard, nothing
written), timed the same way.

The ledgers are built by a child process, so that each timed process's peak RSS
(``wait4``) is its own, not inherited from a large parent.

Usage::

    python scripts/bench_collect_incremental.py                # 100,000 records, 9 repeats
    python scripts/bench_collect_incremental.py --quick        # 10,000 records, 3 repeats
    PYTHONPATH=/path/to/other/checkout/src python scripts/bench_collect_incremental.py
                                                 # the same against another version's code
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ledger import _env, build_ledger, timed  # noqa: E402

#: The budget of every key (s): the pending jobs' reservations leave less than a bell job
#: needs, so every run's guard refuses the deferred ones.
BUDGET_SECONDS = "22"


def prepare(directory: Path, service: Path, pending: int, deferred: int) -> None:
    """Submit ``pending`` jobs that stay queued and ``deferred`` ones behind them."""
    env = _env(directory, service, queue_seconds=3600)
    submit = [sys.executable, "-m", "qcourier", "submit", "--experiment", "bell", "--shots",
              "10", "--force", "--max-pending", str(pending), "--allow-over-budget"]
    subprocess.run([*submit, "--repeat", str(pending)], check=True, capture_output=True, env=env)
    if deferred:
        subprocess.run([*submit, "--repeat", str(deferred)], check=True, capture_output=True,
                       env=env)


def collect_env(directory: Path, service: Path, pending: int, deferred: int) -> dict[str, str]:
    env = _env(directory, service, queue_seconds=3600)
    env.update(QCOURIER_MAX_PENDING=str(pending + deferred), QCOURIER_BUDGET_SECONDS=BUDGET_SECONDS)
    return env


def build(work: Path, records: int, files: int, in_window: int) -> None:
    """The three ledgers' final records (in a child process: see the module)."""
    now = datetime.now(UTC)
    old = records - in_window
    (work / "alone").mkdir()
    build_ledger(work / "final", records, files)
    build_ledger(work / "window", old, files - 1,
                 start=now - timedelta(days=29) - timedelta(minutes=old))
    # The last file: one job every 10 minutes, the last an hour ago (about a week).
    step = timedelta(minutes=10)
    build_ledger(work / "window", in_window, 1, start=now - timedelta(hours=1) - step * in_window,
                 step=step, first=old)


def table(title: str, times: dict[str, list[float]], rss: dict[str, float],
          target: float | None = None) -> None:
    base = statistics.median(times["alone"])
    print(f"| {title} | median s | peak RSS MB | x alone |{' target |' if target else ''}")
    print(f"|---|---:|---:|---:|{'---|' if target else ''}")
    for name, runs in times.items():
        median = statistics.median(runs)
        ratio = median / base
        verdict = ""
        if target:
            verdict = "" if name == "alone" else (
                f"<= {target:g}x: {'met' if ratio <= target else 'MISSED'}")
            verdict = f" {verdict} |"
        print(f"| {name} | {median:.3f} | {rss[name]:.0f} | {ratio:.2f} |{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--in-window", type=int, default=1000)
    parser.add_argument("--pending", type=int, default=10)
    parser.add_argument("--deferred", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="10,000 records, 3 repeats")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the ledgers here and keep them (for profiling)")
    parser.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats = 10_000, 3
    if args.build is not None:
        build(args.build, args.records, args.files, args.in_window)
        return

    from importlib.metadata import version

    import qcourier

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, qiskit {version('qiskit')}; qcourier from "
          f"{Path(qcourier.__file__).parent}")
    print(f"{args.pending} pending + {args.deferred} deferred jobs; {args.records:,} final "
          f"records in {args.files} files; {args.repeats} repeats, medians\n")
    work = args.keep or Path(tempfile.mkdtemp(prefix="qcourier-bench-collect-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        service = work / "service"
        cases = {
            "alone": work / "alone",
            f"beside {args.records:,} final": work / "final",
            f"beside {args.records:,} final, {args.in_window:,} in the window": work / "window",
        }
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(work), "--records",
                        str(args.records), "--files", str(args.files), "--in-window",
                        str(args.in_window)], check=True)
        for directory in cases.values():
            prepare(directory, service, args.pending, args.deferred)
        print(f"built in {time.perf_counter() - start:.0f} s\n")
        collect = [sys.executable, "-m", "qcourier", "collect", "--poll-all", "--quiet"]
        envs = {name: collect_env(d, service, args.pending, args.deferred)
                for name, d in cases.items()}
        for env in envs.values():  # the first run: index built, submitted -> queued
            timed(collect, env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        rss: dict[str, float] = {name: 0.0 for name in cases}
        for _ in range(args.repeats):
            for name, env in envs.items():
                seconds, peak = timed(collect, env)
                times[name].append(seconds)
                rss[name] = max(rss[name], peak)
        table(f"qcollect --poll-all, {args.pending} pending + {args.deferred} deferred jobs",
              times, rss, target=1.5)
        submit = [sys.executable, "-m", "qcourier", "submit", "--experiment", "bell", "--shots",
                  "10", "--force"]
        for env in envs.values():  # the transpilation cached, as after any earlier run
            timed(submit, env, ok=(1,))
        times = {name: [] for name in cases}
        rss = {name: 0.0 for name in cases}
        for _ in range(args.repeats):
            for name, env in envs.items():
                seconds, peak = timed(submit, env, ok=(1,))  # refused by the budget guard
                times[name].append(seconds)
                rss[name] = max(rss[name], peak)
        print()
        table("qsubmit -e bell --force, refused by the budget guard", times, rss)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
