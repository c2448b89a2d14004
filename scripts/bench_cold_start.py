#!/usr/bin/env python
"""Benchmark the start-up of the commands that run most, against importing the IBM client.

Targets (issue 16), against the time of ``python -c "import qiskit_ibm_runtime"``:
``qcollect --poll-all`` on a ledger whose jobs are all final (nothing pending) and
``qcourier status`` at most 0.10x; ``qcourier --help``, ``qsubmit --help`` and
``qcollect --help`` at most 0.05x.

Every case runs as a fresh process, as a user or cron runs it (the installed console
scripts next to this interpreter), ``--repeats`` times, interleaved with the reference so
that the machine's load affects both alike; medians are shown. The ledger is a synthetic
study of ``--jobs`` completed jobs with their result files, folded once beforehand (as
any earlier qcollect run leaves it). A last column says which heavy packages (qiskit,
qiskit_ibm_runtime, numpy, stim, pymatching, matplotlib, rich, pydantic, pydantic_settings,
asyncio) each command imported, read from ``python -X importtime``.

Usage::

    python scripts/bench_cold_start.py              # 15 repeats
    python scripts/bench_cold_start.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_ledger import build_ledger  # noqa: E402

HEAVY = ("qiskit", "qiskit_ibm_runtime", "numpy", "stim", "pymatching", "matplotlib", "rich",
         "pydantic", "pydantic_settings", "asyncio")


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-1000:]}")
    return elapsed


def heavy_imports(argv: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    modules = {m.group(1).split(".")[0]
               for m in re.finditer(r"^import time:.*\|\s*([\w.]+)$", done.stderr, re.M)}
    return [name for name in HEAVY if name in modules]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()

    import qiskit

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, qiskit {qiskit.__version__}")
    work = Path(tempfile.mkdtemp(prefix="qcourier-bench-start-"))
    try:
        ledger = work / "ledger"
        build_ledger(ledger, args.jobs, 1)
        env = dict(os.environ, QCOURIER_LEDGER_DIR=str(ledger), QCOURIER_SERVICE="local",
                   QCOURIER_LOCAL_SERVICE_DIR=str(work / "service"), NO_COLOR="1")
        # As installed by pip, modules are byte-compiled: a shell that forbids writing .pyc
        # files would have every run compile qcourier's modules again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cases = {  # name: (argv, target ratio)
            "qcollect --poll-all (all final)": ([script("qcollect"), "--poll-all"], 0.10),
            "qcourier status": ([script("qcourier"), "status"], 0.10),
            "qcourier --help": ([script("qcourier"), "--help"], 0.05),
            "qsubmit --help": ([script("qsubmit"), "--help"], 0.05),
            "qcollect --help": ([script("qcollect"), "--help"], 0.05),
        }
        reference = [sys.executable, "-c", "import qiskit_ibm_runtime"]
        for argv, _ in cases.values():
            run(argv, env)  # warm the page cache, the .pyc files and the fold index
        run(reference, env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        times["reference"] = []
        for _ in range(args.repeats):
            times["reference"].append(run(reference, env))
            for name, (argv, _) in cases.items():
                times[name].append(run(argv, env))
        ref = statistics.median(times["reference"])
        print(f"{args.repeats} interleaved runs each, medians; a ledger of {args.jobs} final jobs\n")
        print("| command | median s | x import qiskit_ibm_runtime | target | heavy imports |")
        print("|---|---:|---:|---|---|")
        print(f'| python -c "import qiskit_ibm_runtime" | {ref:.3f} | 1.000 | | |')
        for name, (argv, target) in cases.items():
            median = statistics.median(times[name])
            ratio = median / ref
            met = "met" if ratio <= target else "MISSED"
            heavy = ", ".join(heavy_imports(argv, env)) or "none"
            print(f"| {name} | {median:.3f} | {ratio:.3f} | <= {target:.2f}: {met} | {heavy} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
