#!/usr/bin/env python
"""Benchmark qcollect's polling of many pending jobs on a slow service.

Target (issue 7): 200 pending jobs on a service answering each call in 100 ms are polled in
at most 0.1x the sequential time, with a bounded worker pool (default 8), backing off on
429, with ledger appends serialised and whole.

Setup: ``--jobs`` small jobs are submitted to a local service in a temporary ledger; the
local service then answers every call after ``--latency`` seconds (as IBM's API does over
the network). Each case times one ``collect_pending`` run (fold included), ``--repeats``
times, on a fresh copy of the ledger; medians are shown. Two situations:

- **all still queued** (the common cron run): nothing to download, only states to learn;
- **all finished** (the worst run): every job's result and metrics to download and record.
  The service simulates the jobs beforehand, so the timings are the collector's.

Cases: **sequential** is qcollect before issue 7: one call at a time and a status call per
job. **pool only** adds the worker pool (8 workers) but no listing; **qcollect** is the
default (a listing of states, then the pool for what the listing leaves). A last case
runs the default against a service limited to ``--rate-limit`` calls per second: it shows
the calls refused with 429, and the most calls the service served in any one second.

Usage::

    python scripts/bench_polling.py                 # 200 jobs, 100 ms, 3 repeats (~5 min)
    python scripts/bench_polling.py --quick         # 40 jobs, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from qcourier.collect.run import CollectOptions, collect_pending
from qcourier.experiments import get_experiment
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.services.base import TransientServiceError
from qcourier.services.local import LocalService, LocalServiceConfig
from qcourier.services.workers import DEFAULT_WORKERS
from qcourier.submit.dispatch import QueuePolicy
from qcourier.submit.plan import SubmitOptions, plan_submission
from qcourier.submit.run import LedgerTarget, submit_plan


class Service(LocalService):
    """The local service, with the listing switched off on request and its calls counted."""

    def __init__(self, config: LocalServiceConfig, listing: bool = True):
        super().__init__(config)
        self.listing = listing
        self.served: list[float] = []
        self.refused = 0
        self._lock = threading.Lock()

    def job_states(self, job_ids, created_after=None):
        return super().job_states(job_ids, created_after) if self.listing else {}

    def _network_call(self) -> None:
        try:
            super()._network_call()
        except TransientServiceError:
            with self._lock:
                self.refused += 1
            raise
        with self._lock:
            self.served.append(time.monotonic())


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def prepare(root: Path, jobs: int, queued: bool) -> None:
    """A ledger of ``jobs`` submitted bell jobs and the local service holding them."""
    service = LocalService(LocalServiceConfig(root=root / "service", seed=5,
                                              queue_seconds=3600 if queued else 0,
                                              run_seconds=0))
    experiment = get_experiment("bell")
    options = SubmitOptions(repeat=jobs, force=True,
                            policy=QueuePolicy(max_pending=jobs, per_minute=jobs))
    plan = plan_submission(service, [(experiment, experiment.Params(shots=20))], options)
    submit_plan(LedgerTarget(Ledger(root / "ledger")), plan, existing=[], options=options)
    ids = [r.job_id for r in Ledger(root / "ledger").fold().summaries]
    for job_id in ids:  # the service runs the jobs now, so that no timing includes it
        service.job_status(job_id)
    if queued:  # one collection first, so the ledger already says "queued"
        collect_pending(service, Ledger(root / "ledger"))


def run_case(template: Path, work: Path, *, latency: float, listing: bool, workers: int,
             rate_limit: float | None = None) -> tuple[float, Service, int]:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work)
    queued = (work / "queued").exists()
    service = Service(LocalServiceConfig(root=work / "service", seed=5,
                                         queue_seconds=3600 if queued else 0, run_seconds=0,
                                         latency_seconds=latency,
                                         rate_limit_per_second=rate_limit), listing=listing)
    start = time.perf_counter()
    report = collect_pending(service, Ledger(work / "ledger"), CollectOptions(workers=workers))
    elapsed = time.perf_counter() - start
    expected = JobStatus.QUEUED if queued else JobStatus.COMPLETED
    done = sum(1 for o in report.outcomes if o.record.status is expected)
    if report.exit_code != 0 or done != len(report.outcomes):
        raise SystemExit(f"a collection failed: {[o.message for o in report.outcomes if o.failed][:3]}")
    return elapsed, service, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--rate-limit", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="40 jobs, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeats = 40, 1

    import qiskit

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, qiskit {qiskit.__version__}")
    print(f"{args.jobs} jobs, {args.latency * 1000:.0f} ms per service call, "
          f"{args.repeats} repeat(s), medians\n")
    top = Path(tempfile.mkdtemp(prefix="qcourier-bench-poll-"))
    try:
        print("| situation | case | workers | median s | x sequential | target |")
        print("|---|---|---:|---:|---:|---|")
        for situation, queued in (("all still queued", True), ("all finished", False)):
            template = top / ("queued" if queued else "finished")
            prepare(template, args.jobs, queued)
            if queued:
                (template / "queued").touch()
            cases = [("sequential (before issue 7)", False, 1),
                     ("pool only, no listing", False, args.workers),
                     ("qcollect (listing + pool)", True, args.workers)]
            medians = {}
            for name, listing, workers in cases:
                times = [run_case(template, top / "work", latency=args.latency, listing=listing,
                                  workers=workers)[0] for _ in range(args.repeats)]
                medians[name] = statistics.median(times)
                ratio = medians[name] / medians[cases[0][0]]
                target = "" if workers == 1 else (
                    f"<= 0.1: {'met' if ratio <= 0.1 else 'MISSED'}" if listing else "")
                print(f"| {situation} | {name} | {workers} | {medians[name]:.2f} | "
                      f"{ratio:.3f} | {target} |", flush=True)
            elapsed, service, done = run_case(template, top / "work", latency=args.latency,
                                              listing=True, workers=args.workers,
                                              rate_limit=args.rate_limit)
            print(f"| {situation} | qcollect, service limited to {args.rate_limit:g} calls/s | "
                  f"{args.workers} | {elapsed:.2f} | {elapsed / medians[cases[0][0]]:.3f} | "
                  f"{service.refused} calls refused (429), at most "
                  f"{most_in_one_second(service.served)} served in any 1 s; {done} jobs done |",
                  flush=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
