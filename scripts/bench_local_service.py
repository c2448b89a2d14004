#!/usr/bin/env python
"""Benchmark qcourier's local service against qiskit-ibm-runtime's local testing mode.

Three measurements, printed as markdown tables:

1. **Demo**: the real console scripts, as a user runs them: ``qsubmit --experiment both``
   then ``qcollect`` until it reports ``Pending: 0``, in a temporary directory, with zero
   queue and run delays. Wall time of the submit, of the collects and of both, against the
   60 s target. Unless ``--no-split``, also each experiment on its own.

2. **Same circuits, both simulators**: the ``both`` circuits are built and transpiled for
   FakeFez with :func:`qcourier.circuits.transpile.transpile`; then, each in a fresh worker process
   (so no cache of an earlier run helps, as with a fresh ``qcollect``), timed from loading
   the backend to having the counts:

   - qcourier: ``LocalService.submit`` + ``job_status`` until final + ``job_result``;
   - reference: ``SamplerV2(mode=FakeFez()).run(pubs, shots=N).result()``, including
     ``FakeFez()`` and its noise-model build (what a user pays on every such job).

   The reference can take hours at full shots. It is first run on a few shots, then on
   more, each run only if its predicted time fits ``--runtime-budget``; when it cannot
   reach the full shots, its full-shot time is *extrapolated* linearly from its last two
   runs (fixed cost + per-shot cost), and the table says so.

3. **Agreement**: Hellinger fidelity between the two simulators' counts for each circuit,
   with as a baseline the Hellinger fidelity between two qcourier runs with different seeds
   and the same shot counts (what shot noise alone gives), the mean per-bit difference of
   P(1), the Hellinger fidelity to the ideal distribution where it is known (deployment),
   and for the surface code the decoded detection-event fraction and logical error rate.
   Full-distribution Hellinger fidelities over 27- or 57-bit outcomes are dominated by shot
   noise (almost every shot is a distinct bitstring); hence the baseline, the per-bit
   metric, and (``--agreement-width``) a narrower deployment circuit run at full shots on
   both simulators.

Usage::

    python scripts/bench_local_service.py                # full size (the reference takes long)
    python scripts/bench_local_service.py --skip-runtime # qcourier only, about a minute or two
    python scripts/bench_local_service.py --quick        # small sizes, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

DEMO_TARGET_SECONDS = 60.0
SPEEDUP_TARGET = 10.0
BACKEND = "fake_fez"
#: Parameters of ``--quick``: small enough that even the reference takes seconds.
QUICK_PARAMS = {
    "surface_code": {"shots": 64, "rounds": 2},
    "deployment": {"shots": 64, "width": 6},
}
EXPERIMENTS = ("surface_code", "deployment")
MAX_COLLECTS = 100

QCOURIER_SEED = 1
BASELINE_SEED = 2
RUNTIME_SEED = 3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def assignments_for(name: str, quick: bool) -> list[str]:
    """``key=value`` parameters for an experiment or the ``both`` group."""
    if not quick:
        return []
    from qcourier.experiments import expand

    out: list[str] = []
    for experiment in expand(name):
        for key, value in QUICK_PARAMS[experiment].items():
            item = f"{key}={value}"
            if item not in out:
                out.append(item)
    return out


# -- 1. the demo through the console scripts ----------------------------------------------------


@dataclass
class DemoRun:
    experiment: str
    submit_seconds: float
    collect_seconds: float
    collect_calls: int

    @property
    def total_seconds(self) -> float:
        return self.submit_seconds + self.collect_seconds


def console_script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"console script {name!r} not found next to {sys.executable} or on PATH")
    return found


def run_demo(experiment: str, params: list[str], workdir: Path) -> DemoRun:
    """``qsubmit`` then ``qcollect`` until nothing is pending, in ``workdir``."""
    env = dict(os.environ)
    env.update(
        QCOURIER_SERVICE="local",
        QCOURIER_LEDGER_DIR=str(workdir / "ledger"),
        QCOURIER_LOCAL_SERVICE_DIR=str(workdir / "local_service"),
        QCOURIER_LOCAL_QUEUE_SECONDS="0",
        QCOURIER_LOCAL_RUN_SECONDS="0",
    )
    submit = [console_script("qsubmit"), "--experiment", experiment]
    for item in params:
        submit += ["--param", item]
    start = time.perf_counter()
    done = subprocess.run(submit, cwd=workdir, env=env, capture_output=True, text=True)
    submit_seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(submit)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")

    collect = [console_script("qcollect")]
    start = time.perf_counter()
    for calls in range(1, MAX_COLLECTS + 1):
        done = subprocess.run(collect, cwd=workdir, env=env, capture_output=True, text=True)
        match = re.search(r"Pending: (\d+)/(\d+)", done.stdout)
        if match is None:
            raise RuntimeError(f"qcollect printed no 'Pending:' line ({done.returncode}):\n"
                               f"{done.stderr}{done.stdout}")
        if int(match.group(1)) == 0:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"jobs still pending after {MAX_COLLECTS} qcollect runs")
    collect_seconds = time.perf_counter() - start
    if "ERROR" in done.stdout or "FAILED" in done.stdout:
        log(f"warning: qcollect reported a failed job:\n{done.stdout}")
    return DemoRun(experiment, submit_seconds, collect_seconds, calls)


def bench_demo(names: list[str], quick: bool, repeats: int) -> dict[str, list[DemoRun]]:
    runs: dict[str, list[DemoRun]] = {}
    for name in names:
        for i in range(repeats):
            with tempfile.TemporaryDirectory(prefix="qcourier-bench-demo-") as tmp:
                log(f"demo: qsubmit --experiment {name} + qcollect (run {i + 1}/{repeats})")
                run = run_demo(name, assignments_for(name, quick), Path(tmp))
                log(f"  submit {run.submit_seconds:.1f} s, collect {run.collect_seconds:.1f} s "
                    f"({run.collect_calls} qcollect call(s))")
                runs.setdefault(name, []).append(run)
    return runs


# -- 2. the same circuits on both simulators ----------------------------------------------------


@dataclass
class Case:
    name: str
    experiment: Any
    metadata: dict[str, Any]
    circuits: list[Any]  # ISA circuits
    shots: int
    timed: bool = True  # part of the speed comparison at the chosen sizes


@dataclass
class SimRun:
    """One worker run: counts per circuit and where the time went."""

    shots: int
    seconds: float
    counts: list[dict[str, int]]
    detail: dict[str, float] = field(default_factory=dict)


def build_cases(quick: bool, agreement_width: int) -> list[Case]:
    from qcourier.circuits.transpile import transpile
    from qcourier.experiments import resolve
    from qcourier.services.fake_backends import fake_backend

    backend = fake_backend(BACKEND)
    cases = []
    for experiment, params in resolve("both", assignments_for("both", quick)):
        for unit in experiment.build(params):
            log(f"transpiling {experiment.name} ({len(unit.circuits)} circuit(s)) for {BACKEND}")
            cases.append(Case(experiment.name, experiment, dict(unit.metadata),
                              transpile(unit.circuits, backend), unit.shots))
    if agreement_width:
        experiment, params = resolve("deployment", [f"width={agreement_width}"])[0]
        for unit in experiment.build(params):
            cases.append(Case(f"deployment (width {agreement_width})", experiment,
                              dict(unit.metadata), transpile(unit.circuits, backend), unit.shots,
                              timed=False))
    return cases


def run_worker(kind: str, circuits: list[Any], shots: int, seed: int, workdir: Path,
               timeout: float | None = None) -> SimRun:
    """Run one simulation in a fresh process of this script (``--worker``)."""
    from qiskit import qpy

    workdir.mkdir(parents=True, exist_ok=True)
    qpy_path = workdir / "circuits.qpy"
    with open(qpy_path, "wb") as fh:
        qpy.dump(circuits, fh)
    spec = {"qpy": str(qpy_path), "shots": shots, "seed": seed,
            "root": str(workdir / "local_service")}
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, str(spec_path), str(out_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    out = json.loads(out_path.read_text())
    return SimRun(shots, out["seconds"], out["counts"], out.get("detail", {}))


def worker_main(kind: str, spec_path: str, out_path: str) -> None:
    """Inside a worker process: load the circuits, simulate them, write counts and timings.

    The common heavy imports (qiskit, Aer, the fake provider) happen before the clock starts
    for both kinds; loading the backend and building noise models happen after it.
    """
    warnings.simplefilter("ignore")
    import qiskit_aer  # noqa: F401
    from qiskit import qpy
    from qiskit_ibm_runtime import SamplerV2
    from qiskit_ibm_runtime.fake_provider import FakeFez

    spec = json.loads(Path(spec_path).read_text())
    with open(spec["qpy"], "rb") as fh:
        circuits = qpy.load(fh)
    shots, seed = spec["shots"], spec["seed"]
    detail: dict[str, float] = {}

    if kind == "qcourier":
        from qcourier.services.local import LocalService, LocalServiceConfig

        service = LocalService(LocalServiceConfig(root=Path(spec["root"]), queue_seconds=0.0,
                                                  run_seconds=0.0, seed=seed))
        start = time.perf_counter()
        job_id = service.submit(BACKEND, circuits, shots)
        submitted = time.perf_counter()
        while not (report := service.job_status(job_id)).state.is_final:
            time.sleep(0.01)
        if report.state.value != "DONE":
            raise RuntimeError(f"job {job_id} ended {report.state.value}: {report.message}")
        counts = service.job_result(job_id).counts
        seconds = time.perf_counter() - start
        detail = {"submit": submitted - start, "simulate_and_fetch": seconds - (submitted - start)}
    elif kind == "runtime":
        start = time.perf_counter()
        backend = FakeFez()
        loaded = time.perf_counter()
        # Building the noise model happens on the backend's first run anyway; doing it here
        # (private method, guarded) only splits the time, it adds nothing to the total.
        if hasattr(backend, "_setup_sim"):
            backend._setup_sim()
        built = time.perf_counter()
        sampler = SamplerV2(mode=backend, options={"simulator": {"seed_simulator": seed}})
        result = sampler.run(circuits, shots=shots).result()
        counts = [{k.replace(" ", ""): int(v) for k, v in pub.join_data().get_counts().items()}
                  for pub in result]
        seconds = time.perf_counter() - start
        detail = {"backend": loaded - start, "noise_model": built - loaded,
                  "sample": seconds - (built - start)}
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    Path(out_path).write_text(json.dumps({"seconds": seconds, "counts": counts, "detail": detail}))


@dataclass
class RuntimeMeasurement:
    """The reference on one case: its runs (increasing shots) and the full-shot time."""

    runs: list[SimRun]
    full_shots: int

    @property
    def last(self) -> SimRun:
        return self.runs[-1]

    @property
    def complete(self) -> bool:
        return self.last.shots >= self.full_shots

    @property
    def seconds(self) -> float:
        """Time at full shots: measured, or extrapolated from the last two runs."""
        if self.complete:
            return self.last.seconds
        return self.last.seconds + self.per_shot * (self.full_shots - self.last.shots)

    @property
    def per_shot(self) -> float:
        if len(self.runs) < 2:  # one point: all its time counted as per-shot (an upper bound)
            return self.last.seconds / self.last.shots
        a, b = self.runs[-2], self.runs[-1]
        return max((b.seconds - a.seconds) / (b.shots - a.shots), 0.0)

    def how(self) -> str:
        if self.complete:
            return f"measured at {self.full_shots} shots"
        if len(self.runs) < 2:
            return (f"extrapolated linearly from {self.last.shots} shots "
                    f"({self.last.seconds:.0f} s)")
        a, b = self.runs[-2], self.runs[-1]
        return (f"extrapolated from {a.shots} shots ({a.seconds:.0f} s) and {b.shots} shots "
                f"({b.seconds:.0f} s): {self.per_shot:.3g} s/shot")


def measure_runtime(case: Case, budget: float, workdir: Path, first: int = 2, growth: int = 16,
                    safety: float = 1.25) -> RuntimeMeasurement:
    """Run the reference on growing shot counts while the next run's predicted time fits."""
    full = case.shots
    shots = min(first, full)
    runs: list[SimRun] = []
    while True:
        log(f"runtime local mode: {case.name}, {len(case.circuits)} PUB(s) x {shots} shots")
        run = run_worker("runtime", case.circuits, shots, RUNTIME_SEED, workdir / f"runtime_{shots}",
                         timeout=max(4 * budget, 600))
        log(f"  {run.seconds:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in run.detail.items())})")
        runs.append(run)
        measurement = RuntimeMeasurement(runs, full)
        if measurement.complete:
            return measurement
        slope = measurement.per_shot * safety
        fits = shots + int((budget - run.seconds) / slope) if slope > 0 else full
        if fits >= full:
            nxt = full
        else:
            nxt = min(shots * growth, fits)
        if nxt < 2 * shots:
            log(f"  stopping at {shots} shots: {full} would take about "
                f"{measurement.seconds:.0f} s (budget {budget:.0f} s per run)")
            return measurement
        shots = nxt


def bench_qcourier(case: Case, repeats: int, workdir: Path) -> list[SimRun]:
    runs = []
    for i in range(repeats):
        log(f"qcourier local service: {case.name}, {len(case.circuits)} circuit(s) x "
            f"{case.shots} shots (run {i + 1}/{repeats})")
        run = run_worker("qcourier", case.circuits, case.shots, QCOURIER_SEED, workdir / f"qc_{i}")
        log(f"  {run.seconds:.2f} s")
        runs.append(run)
    return runs


# -- 3. agreement --------------------------------------------------------------------------------


def hellinger(a: dict[str, int], b: dict[str, int]) -> float:
    from qiskit.quantum_info import hellinger_fidelity

    return float(hellinger_fidelity(a, b))


def p1_per_bit(counts: dict[str, int]) -> list[float]:
    shots = sum(counts.values())
    width = len(next(iter(counts)))
    ones = [0] * width
    for key, n in counts.items():
        for i, bit in enumerate(reversed(key)):
            if bit == "1":
                ones[i] += n
    return [o / shots for o in ones]


def mean_abs_dp1(a: dict[str, int], b: dict[str, int]) -> float:
    pa, pb = p1_per_bit(a), p1_per_bit(b)
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


def ideal_fidelity(case: Case, counts: dict[str, int]) -> float | None:
    if case.experiment.name != "deployment":
        return None
    from qcourier.experiments.deployment import ideal_p1, ideal_probability
    from qcourier.experiments.statistics import hellinger_fidelity_to

    p1 = ideal_p1(int(case.metadata["width"]), float(case.metadata["step"]))
    return hellinger_fidelity_to(counts, lambda key: ideal_probability(key, p1))


@dataclass
class Agreement:
    ref_shots: int
    hellinger: list[float]  # qcourier vs reference, per circuit
    baseline: list[float]  # qcourier vs qcourier (other seed, reference's shots)
    dp1: list[float]
    dp1_baseline: list[float]
    ideal_qcourier: list[float | None]
    ideal_runtime: list[float | None]
    decoded: list[dict[str, Any]] | None = None  # surface code: per-round figures


def agreement(case: Case, ours: SimRun, baseline: SimRun, ref: SimRun) -> Agreement:
    n = len(case.circuits)
    result = Agreement(
        ref.shots,
        [hellinger(ours.counts[i], ref.counts[i]) for i in range(n)],
        [hellinger(ours.counts[i], baseline.counts[i]) for i in range(n)],
        [mean_abs_dp1(ours.counts[i], ref.counts[i]) for i in range(n)],
        [mean_abs_dp1(ours.counts[i], baseline.counts[i]) for i in range(n)],
        [ideal_fidelity(case, ours.counts[i]) for i in range(n)],
        [ideal_fidelity(case, ref.counts[i]) for i in range(n)],
    )
    if case.experiment.name == "surface_code":
        ours_a = case.experiment.analyse(case.metadata, ours.counts, None)
        ref_a = case.experiment.analyse(case.metadata, ref.counts, None)
        result.decoded = [
            {"rounds": o["rounds"], "shots": (o["shots"], r["shots"]),
             "detection_event_fraction": (o["detection_event_fraction"], r["detection_event_fraction"]),
             "logical_error_rate": (o["logical_error_rate"], r["logical_error_rate"]),
             "logical_error_ci95": (o["logical_error_ci95"], r["logical_error_ci95"])}
            for o, r in zip(ours_a["per_round"], ref_a["per_round"], strict=True)
        ]
    return result


# -- machine and output ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f"{int(mem) / 1024 ** 2:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cores (nproc)": str(usable),
        "CPU": cpu,
        "memory": memory,
        "OS": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for package in ("qcourier", "qiskit", "qiskit-aer", "qiskit-ibm-runtime", "stim", "pymatching",
                    "numpy"):
        try:
            info[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            info[package] = "not installed"
    import qcourier

    repo = Path(qcourier.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
        info["qcourier commit"] = commit[:90] + (" (src/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["qcourier commit"] = "unknown"
    extra = sorted(k for k in os.environ if k.startswith("QCOURIER_") or k.startswith("OMP_"))
    if extra:
        info["environment"] = ", ".join(f"{k}={os.environ[k]}" for k in extra)
    return info


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.2f}" if s < 10 else f"{s:.1f}" if s < 1000 else f"{s:,.0f}"


def fmt_range(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def seconds_summary(values: list[float]) -> str:
    if len(values) == 1:
        return fmt_seconds(values[0])
    return f"{fmt_seconds(statistics.median(values))} (min {fmt_seconds(min(values))})"


def report(args: argparse.Namespace, info: dict[str, str], demo: dict[str, list[DemoRun]],
           cases: list[Case], ours: dict[str, list[SimRun]], ref: dict[str, RuntimeMeasurement],
           agree: dict[str, Agreement]) -> str:
    out = []
    size = "quick (small sizes)" if args.quick else "default sizes"
    out.append(f"## qcourier local service benchmark ({size}, {args.repeats} repeat(s))\n")
    out.append(table(["", ""], [[k, v] for k, v in info.items()]))

    if demo:
        out.append("\n### Demo: `qsubmit --experiment X` then `qcollect` until `Pending: 0` "
                   "(queue/run delay 0)\n")
        rows = []
        for name, runs in demo.items():
            total = statistics.median(r.total_seconds for r in runs)
            verdict = (f"{'met' if total <= DEMO_TARGET_SECONDS else 'MISSED'} "
                       f"({total / DEMO_TARGET_SECONDS:.0%} of 60 s)") if name == "both" else ""
            rows.append([name, seconds_summary([r.submit_seconds for r in runs]),
                         seconds_summary([r.collect_seconds for r in runs]),
                         str(max(r.collect_calls for r in runs)),
                         seconds_summary([r.total_seconds for r in runs]), verdict])
        out.append(table(["experiment", "qsubmit s", "qcollect s", "qcollect calls", "total s",
                          "60 s target"], rows))
        if args.repeats > 1:
            out.append("\nWith several repeats: median (min).")

    if ours:
        out.append("\n### Same ISA circuits (FakeFez): qcourier LocalService vs "
                   "`SamplerV2(mode=FakeFez())`\n")
        rows = []
        for case in cases:
            if case.name not in ours:
                continue
            q = [r.seconds for r in ours[case.name]]
            m = ref.get(case.name)
            ratio = f"{m.seconds / statistics.median(q):,.0f}x" if m else "-"
            if m and not m.complete:
                ratio += " (est.)"
            rows.append([case.name + ("" if case.timed else " [agreement case]"),
                         str(len(case.circuits)), str(case.shots), seconds_summary(q),
                         (fmt_seconds(m.seconds) + ("" if m.complete else " (est.)")) if m else "skipped",
                         ratio, m.how() if m else "-"])
        out.append(table(["case", "PUBs", "shots", "qcourier s", "runtime local s", "speed-up",
                          "runtime time is"], rows))
        timed = [c for c in cases if c.timed and c.name in ours]
        if ref and all(c.name in ref for c in timed):
            q_sum = sum(statistics.median(r.seconds for r in ours[c.name]) for c in timed)
            r_sum = sum(ref[c.name].seconds for c in timed)
            est = any(not ref[c.name].complete for c in timed)
            out.append(f"\nAll default-size cases together: qcourier {fmt_seconds(q_sum)} s, runtime "
                       f"local {fmt_seconds(r_sum)} s{' (partly extrapolated)' if est else ''}: "
                       f"{r_sum / q_sum:,.0f}x ({'met' if r_sum / q_sum >= SPEEDUP_TARGET else 'MISSED'}"
                       f" the {SPEEDUP_TARGET:.0f}x target).")
        details = []
        for case in cases:
            for label, runs in (("qcourier", ours.get(case.name, [])),
                                ("runtime", ref[case.name].runs if case.name in ref else [])):
                for r in runs:
                    if r.detail:
                        parts = ", ".join(f"{k} {fmt_seconds(v)} s" for k, v in r.detail.items())
                        details.append(f"- {case.name}, {label}, {r.shots} shots: "
                                       f"{fmt_seconds(r.seconds)} s = {parts}")
        if details:
            out.append("\nWhere the time went (every run):\n")
            out.extend(details)

    if agree:
        out.append("\n### Agreement of the output distributions\n")
        rows = []
        for case in cases:
            a = agree.get(case.name)
            if a is None:
                continue
            ideal_q = [x for x in a.ideal_qcourier if x is not None]
            ideal_r = [x for x in a.ideal_runtime if x is not None]
            rows.append([case.name, f"{case.shots} / {a.ref_shots}", fmt_range(a.hellinger),
                         fmt_range(a.baseline), fmt_range(a.dp1, 4), fmt_range(a.dp1_baseline, 4),
                         fmt_range(ideal_q) if ideal_q else "-", fmt_range(ideal_r) if ideal_r else "-"])
        out.append(table(["case", "shots qcourier / runtime", "Hellinger(qcourier, runtime)",
                          "Hellinger(qcourier, qcourier') baseline", "mean |dP1| vs runtime",
                          "mean |dP1| baseline", "Hellinger(qcourier, ideal)",
                          "Hellinger(runtime, ideal)"], rows))
        out.append("\nSeveral PUBs: mean (min-max) over PUBs. qcourier' is qcourier with another "
                   "seed at the runtime run's shots: the shot-noise-only baseline. mean |dP1|: "
                   "mean over classical bits of the difference in P(bit = 1).")
        for case in cases:
            a = agree.get(case.name)
            if a is None or not a.decoded:
                continue
            out.append(f"\n{case.name}, decoded with the experiment's own analysis "
                       "(PyMatching, default decoder priors), qcourier / runtime:\n")
            rows = []
            for d in a.decoded:
                (lo_q, hi_q), (lo_r, hi_r) = d["logical_error_ci95"]
                rows.append([str(d["rounds"]), "{} / {}".format(*d["shots"]),
                             "{:.4f} / {:.4f}".format(*d["detection_event_fraction"]),
                             f"{d['logical_error_rate'][0]:.4f} [{lo_q:.3f}, {hi_q:.3f}] / "
                             f"{d['logical_error_rate'][1]:.4f} [{lo_r:.3f}, {hi_r:.3f}]"])
            out.append(table(["rounds", "shots", "detection-event fraction",
                              "logical error rate [95% CI]"], rows))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeat the qcourier measurements (demo and service) N times; the "
                             "runtime reference runs once (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes ({QUICK_PARAMS}) to smoke-test the script")
    parser.add_argument("--skip-runtime", action="store_true",
                        help="skip qiskit-ibm-runtime's local testing mode (the slow reference)")
    parser.add_argument("--skip-demo", action="store_true", help="skip the console-script demo")
    parser.add_argument("--no-split", action="store_true",
                        help="time the demo for 'both' only, not also each experiment alone")
    parser.add_argument("--runtime-budget", type=float, default=900.0, metavar="SECONDS",
                        help="largest predicted time of one reference run; beyond it the "
                             "full-shot time is extrapolated (default 900)")
    parser.add_argument("--agreement-width", type=int, default=12, metavar="N",
                        help="also compare a width-N deployment circuit at full shots on both "
                             "simulators (0: no; default 12; not with --quick)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the raw figures (no counts) to this JSON file")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(*args.worker)
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    warnings.simplefilter("ignore", DeprecationWarning)

    info = machine()
    demo = {}
    if not args.skip_demo:
        names = ["both"] + ([] if args.no_split else list(EXPERIMENTS))
        demo = bench_demo(names, args.quick, args.repeats)

    cases = build_cases(args.quick, 0 if args.quick else args.agreement_width)
    ours: dict[str, list[SimRun]] = {}
    ref: dict[str, RuntimeMeasurement] = {}
    agree: dict[str, Agreement] = {}
    with tempfile.TemporaryDirectory(prefix="qcourier-bench-sim-") as tmp:
        root = Path(tmp)
        for index, case in enumerate(cases):
            ours[case.name] = bench_qcourier(case, args.repeats, root / f"case{index}")
        for index, case in enumerate(cases):
            if args.skip_runtime:
                break
            # --quick sizes take seconds: no need to feel the way up from a few shots.
            measurement = measure_runtime(case, args.runtime_budget, root / f"case{index}",
                                          first=case.shots if args.quick else 2)
            ref[case.name] = measurement
            log(f"  runtime at {case.shots} shots: {measurement.seconds:.1f} s ({measurement.how()})")
            baseline = run_worker("qcourier", case.circuits, measurement.last.shots, BASELINE_SEED,
                                  root / f"case{index}" / "baseline")
            agree[case.name] = agreement(case, ours[case.name][0], baseline, measurement.last)

    text = report(args, info, demo, cases, ours, ref, agree)
    print(text, flush=True)
    if args.json:
        raw = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "demo": {k: [vars(r) | {"total_seconds": r.total_seconds} for r in v] for k, v in demo.items()},
            "qcourier": {k: [{"shots": r.shots, "seconds": r.seconds, "detail": r.detail} for r in v]
                         for k, v in ours.items()},
            "runtime": {k: {"full_shots": m.full_shots, "seconds_at_full_shots": m.seconds,
                            "complete": m.complete, "how": m.how(),
                            "runs": [{"shots": r.shots, "seconds": r.seconds, "detail": r.detail}
                                     for r in m.runs]} for k, m in ref.items()},
            "agreement": {k: vars(a) for k, a in agree.items()},
        }
        args.json.write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
