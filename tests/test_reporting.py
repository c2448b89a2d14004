"""The study report: SLIs and series against a hand-built ledger, the CLI, the plots."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qcourier.accounting.plots import write_plots
from qcourier.accounting.report import Distribution, study_report
from qcourier.cli import collect, main, report, submit
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import append

# Relative to the real clock: the CLI computes the budget window at its own "now".
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=1)
LIMITS = {None: 600.0, 0: 100.0, 1: 50.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _surface(state: str, eps: float) -> dict:
    return {"experiment": "surface_code", "logical_state": state, "distance": 3,
            "per_round": [{"rounds": 1, "shots": 100, "logical_error_rate": eps,
                           "logical_error_ci95": [eps / 2, eps * 2], "logical_errors": 1},
                          {"rounds": 2, "shots": 100, "logical_error_rate": 2 * eps,
                           "logical_error_ci95": [eps, eps * 3], "logical_errors": 2}],
            "logical_error_per_round": eps, "logical_error_per_round_stderr": eps / 10}


def _heartbeat(fidelity: float, mad: float) -> dict:
    return {"experiment": "deployment", "width": 3, "shots": 100,
            "p1_measured": [0.02, 0.03, 0.05], "p1_ideal": [0.0, 0.004, 0.015],
            "mean_absolute_deviation": mad, "marginal_fidelity": fidelity,
            "marginal_fidelity_stderr": 0.01}


# (name, experiment, service, key, status, hours after T0 submitted (None: no submission
#  time), queue s, turnaround s, usage s, failure class, result file: dict | "garbage" | None)
JOBS = [
    ("sc1", "surface_code", "local", None, "completed", 0, 10, 100, 5, None, _surface("0", 0.01)),
    ("sc2", "surface_code", "local", None, "completed", 1, 20, 200, 5, None, _surface("+", 0.02)),
    ("sc3", "surface_code", "local", None, "completed", 2, 30, 300, 5, None, _surface("0", 0.03)),
    ("hb1", "deployment", "ibm", 0, "completed", 3, 40, 400, 7, None, _heartbeat(0.9, 0.05)),
    ("hb2", "deployment", "ibm", 0, "completed", 4, 50, 500, 3, None, _heartbeat(0.8, 0.07)),
    ("ghz1", "ghz", "ibm", 1, "completed", 5, 60, 600, 2, None,
     {"experiment": "ghz", "shots": 100, "hellinger_fidelity": 0.95}),
    ("fuser", "bell", "ibm", 1, "failed", 5, 70, 700, 1, "user", None),
    ("fsys", "bell", "ibm", 1, "failed", 6, None, 800, None, "system", None),
    ("canc", "bell", "ibm", 0, "cancelled", 6, None, None, None, None, None),
    ("part", "bell", "local", None, "partial", 7, 80, 900, 4, "system", None),
    ("subf", "bell", "local", None, "submit_failed", None, None, None, None, None, None),
    ("err", "bell", "ibm", 1, "error", 8, None, None, None, None, None),
    ("queued", "deployment", "ibm", 0, "queued", 9, None, None, None, None, None),
    ("old", "bell", "ibm", 0, "completed", -39 * 24, 90, 1000, 50, None, "missing"),
    ("noan", "deployment", "ibm", 0, "completed", 10, None, None, None, None, "no analysis"),
    ("junk", "surface_code", "local", None, "completed", 11, None, None, None, None, "garbage"),
]


def build_ledger(directory: Path) -> Path:
    """The hand-built ledger of JOBS (each record written twice: submitted, then final)."""
    (directory / "jobs").mkdir(parents=True)
    path = directory / "submitted_jobs_20261119_120000.jsonl"
    for (name, experiment, service, key, status, hours, queue, turnaround, usage, failure,
         result) in JOBS:
        submitted = None if hours is None else T0 + timedelta(hours=hours)
        record = LedgerRecord(
            job_id=None if status == "submit_failed" else f"job-{name}", service=service,
            api_key_index=key, backend="fake", experiment_type=experiment, shots=100,
            num_circuits=1, circuit_hash="c", isa_circuit_hash="i", transpiled_depth=1,
            transpiled_gates={}, submission_time=submitted, status=JobStatus.SUBMITTED,
            estimated_qpu_seconds=6.0, logical_state=(result or {}).get("logical_state")
            if isinstance(result, dict) else None, metadata={"rounds": [1, 2]})
        append(path, record)
        final = {"status": JobStatus(status), "queue_seconds": queue, "usage_seconds": usage,
                 "failure_class": failure, "updated_at": NOW - timedelta(hours=1)}
        if turnaround is not None:
            final["completion_time"] = submitted + timedelta(seconds=turnaround)
        if result is not None:
            final["result_path"] = f"jobs/job-{name}.json"
            target = directory / final["result_path"]
            if isinstance(result, dict):
                counts = [{"00": 60, "11": 40}] if experiment != "surface_code" else [
                    {"0" * 17: 90, "1" * 17: 10}, {"0" * 25: 80, "01" * 12 + "1": 20}]
                target.write_text(json.dumps({"counts": counts, "analysis": result}))
            elif result == "no analysis":
                target.write_text(json.dumps({"counts": [{"000": 100}], "analysis": None,
                                              "analysis_error": "ValueError: bad width"}))
            elif result == "garbage":
                target.write_text("{not json")
        append(path, LedgerRecord.model_validate({**record.model_dump(), **final}))
    return directory


@pytest.fixture
def hand_built(tmp_path: Path) -> Path:
    return build_ledger(tmp_path / "ledger")


def _report(directory: Path):
    from qcourier.ledger.store import Ledger

    return study_report(Ledger(directory).fold().records, directory, LIMITS.__getitem__, NOW)


def test_slis_of_a_hand_built_ledger(hand_built: Path):
    r = _report(hand_built)
    assert r.total_jobs == 16
    assert {k: n for k, n in r.by_status.items() if n} == {
        "completed": 9, "failed": 2, "cancelled": 1, "partial": 1, "submit_failed": 1,
        "error": 1, "queued": 1}
    assert r.finished_jobs == 14
    assert r.success_rate == pytest.approx(9 / 14)
    # queue: 10..90 -> median 50; p95 at position 0.95 * 8 = 7.6: 80 + 0.6 * 10
    assert r.queue.count == 9
    assert r.queue.median == pytest.approx(50) and r.queue.p95 == pytest.approx(86)
    # turnaround: 100..900 and 1000 -> median 550; p95 at 0.95 * 9 = 8.55: 900 + 0.55 * 100
    assert r.turnaround.count == 10
    assert r.turnaround.median == pytest.approx(550) and r.turnaround.p95 == pytest.approx(955)
    assert r.failures_by_class == {"system": 2, "user": 1, "unknown": 1}


def test_budget_per_key_comes_from_budget_state(hand_built: Path):
    budget = {(k.state.service, k.state.key_index): k for k in _report(hand_built).budget}
    assert list(budget) == [("ibm", 0), ("ibm", 1), ("local", None)]
    local, key0, key1 = budget["local", None], budget["ibm", 0], budget["ibm", 1]
    # local: three surface-code jobs (5 s each) and the partial one (4 s)
    assert (local.state.used_seconds, local.state.jobs_used, local.state.limit_seconds) == (19, 4, 600)
    # key 0: the heartbeats (7 + 3); the 40-day-old job has left the window; queued reserves 6
    assert (key0.state.used_seconds, key0.state.reserved_seconds) == (10, 6)
    assert key0.state.remaining_seconds == 84
    assert [(t - T0, used) for t, used in key0.burn_down] == [
        (timedelta(hours=3, seconds=400), 7), (timedelta(hours=4, seconds=500), 10)]
    # key 1: ghz (2) and the user failure (1); the system failure recorded no usage
    assert (key1.state.used_seconds, key1.state.jobs_used, key1.state.limit_seconds) == (3, 2, 50)
    assert key1.burn_down[-1][1] == key1.state.used_seconds


def test_experiment_series_and_skipped_result_files(hand_built: Path):
    r = _report(hand_built)
    surface = r.series["surface_code"]
    assert [p["job_id"] for p in surface] == ["job-sc1", "job-sc2", "job-sc3"]
    assert [p["logical_state"] for p in surface] == ["0", "+", "0"]
    assert [p["logical_error_per_round"] for p in surface] == [0.01, 0.02, 0.03]
    assert surface[1]["per_round"][1] == {"rounds": 2, "shots": 100, "logical_error_rate": 0.04,
                                          "logical_error_ci95": [0.02, 0.06]}
    assert [(p["job_id"], p["marginal_fidelity"], p["mean_absolute_deviation"])
            for p in r.series["deployment"]] == [("job-hb1", 0.9, 0.05), ("job-hb2", 0.8, 0.07)]
    assert [p["hellinger_fidelity"] for p in r.series["ghz"]] == [0.95]
    assert r.series["bell"] == []
    skipped = {s["job_id"]: s["reason"] for s in r.skipped_results}
    assert list(skipped) == ["job-old", "job-noan", "job-junk"]
    assert "does not exist" in skipped["job-old"]
    assert skipped["job-noan"] == "no analysis (ValueError: bad width)"
    assert "is not JSON" in skipped["job-junk"]
    latest = r.surface_code_latest()
    assert {s: p["job_id"] for s, p in latest.items()} == {"+": "job-sc2", "0": "job-sc3"}
    summary = r.heartbeat_summary()
    assert summary.pop("drift")["earlier_sessions"] == 1  # too few for the check
    assert summary == {
        "sessions": 2, "latest": 0.8, "latest_job_id": "job-hb2",
        "latest_submission_time": (T0 + timedelta(hours=4)).isoformat(), "min": 0.8, "max": 0.9}


def test_an_empty_ledger_has_no_rates(tmp_path: Path):
    r = study_report([], tmp_path, LIMITS.__getitem__, NOW)
    data = r.to_dict()
    assert data["success_rate"] is None and data["jobs"]["total"] == 0
    assert data["queue_seconds"] == {"count": 0, "median": None, "p95": None}
    assert data["budget"] == [] and data["summary"]["heartbeat"] is None
    assert data["experiments"] == {"heavy_hex_code": [], "surface_code": [], "deployment": [],
                                  "bell": [], "ghz": []}


@pytest.mark.parametrize(("values", "median", "p95"), [
    ([], None, None), ([7.0], 7.0, 7.0), ([1.0, 3.0], 2.0, 2.9),
    (list(range(1, 101)), 50.5, 95.05)])
def test_distribution_percentile_method(values, median, p95):
    dist = Distribution.of(values)
    assert dist.median == (pytest.approx(median) if median is not None else None)
    assert dist.p95 == (pytest.approx(p95) if p95 is not None else None)


def test_plots_of_the_hand_built_ledger(hand_built: Path, tmp_path: Path):
    from qcourier.ledger.store import Ledger

    records = Ledger(hand_built).fold().records
    plots = write_plots(_report(hand_built), records, hand_built, tmp_path / "out")
    names = sorted(p.name for p in plots.written)
    counts = [f"counts_job-{n}.png" for n in ("sc1", "sc2", "sc3", "hb1", "hb2", "ghz1", "noan")]
    assert names == sorted([*counts, "surface_code_logical_error_vs_rounds.png",
                            "heartbeat_p1_vs_ideal.png", "heartbeat_fidelity_over_time.png",
                            "budget_local.png", "budget_ibm_0.png", "budget_ibm_1.png"])
    assert {s["plot"] for s in plots.skipped} == {"counts_job-old.png", "counts_job-junk.png",
                                                  "heavy_hex_code_logical_error_vs_rounds.png"}
    for path in plots.written:
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plots_of_an_empty_ledger_are_skipped_with_reasons(tmp_path: Path):
    report_ = study_report([], tmp_path, LIMITS.__getitem__, NOW)
    plots = write_plots(report_, [], tmp_path, tmp_path / "out")
    assert plots.written == [] and list((tmp_path / "out").iterdir()) == []
    assert len(plots.skipped) == 5 and all(s["reason"] for s in plots.skipped)


# -- the command ------------------------------------------------------------------------------

def test_report_json_shape(invoke, hand_built: Path, monkeypatch):
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS_1", "50")
    result = invoke(report.main, ["--json", "--ledger-dir", hand_built])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"now", "ledger_dir", "jobs", "success_rate", "queue_seconds",
                         "turnaround_seconds", "budget", "failures", "experiments", "summary",
                         "skipped_results", "plots"}
    assert data["plots"] is None
    assert set(data["jobs"]) == {"total", "finished", "by_status"}
    assert set(data["jobs"]["by_status"]) == {s.value for s in JobStatus}
    assert data["success_rate"] == pytest.approx(9 / 14)
    assert data["turnaround_seconds"] == {"count": 10, "median": 550.0,
                                          "p95": pytest.approx(955)}
    assert data["failures"] == {"by_class": {"system": 2, "user": 1, "unknown": 1},
                                "submit_failed": 1, "error": 1}
    key1 = next(k for k in data["budget"] if k["key_index"] == 1)
    assert set(key1) == {"service", "key_index", "limit_seconds", "used_seconds",
                         "reserved_seconds", "remaining_seconds", "jobs_used", "jobs_reserved",
                         "window_start", "now", "burn_down"}
    assert (key1["limit_seconds"], key1["used_seconds"]) == (50.0, 3.0)
    assert set(key1["burn_down"][0]) == {"time", "used_seconds"}
    sc = data["experiments"]["surface_code"][0]
    assert set(sc) == {"job_id", "record_id", "submission_time", "logical_state", "distance",
                       "logical_error_per_round", "logical_error_per_round_stderr", "per_round",
                       "fault_distance", "fit_intercept_eps0", "fit_chi2_per_dof", "fit_withheld"}
    assert datetime.fromisoformat(sc["submission_time"]) == T0
    assert set(data["experiments"]["deployment"][0]) == {
        "job_id", "record_id", "submission_time", "backend", "width", "shots",
        "marginal_fidelity", "marginal_fidelity_stderr", "mean_absolute_deviation",
        "p1_measured", "p1_ideal"}
    assert data["summary"]["heartbeat"]["latest"] == 0.8
    assert set(data["summary"]["surface_code_latest"]) == {"0", "+"}
    assert [s["job_id"] for s in data["skipped_results"]] == ["job-old", "job-noan", "job-junk"]
    assert "Warning: result of job job-junk skipped" in result.stderr


def test_report_text(invoke, hand_built: Path):
    result = invoke(report.main, ["--ledger-dir", hand_built])
    assert result.exit_code == 0, result.output
    lines = {" ".join(line.split()) for line in result.stdout.splitlines()}  # columns: any width
    assert {"success rate 64.3% 9 completed of 14 finished",
            "queue time median 50.0 s over 9 jobs", "queue time p95 86.0 s over 9 jobs",
            "turnaround median 9.2 min over 10 jobs", "turnaround p95 15.9 min over 10 jobs",
            "failures 4 failed, partial, cancelled by class: system 2, user 1, unknown 1",
            "submit_failed / error 1 / 1 never became a job / could not be polled"} <= lines
    out = result.stdout
    assert "|0> d=3  0.0300 ± 0.0030  (job job-sc3" in out
    assert ("Heartbeat marginal fidelity: latest 0.8000 (job job-hb2); min 0.8000, max 0.9000 "
            "over 2") in out
    assert "ghz: latest fidelity 0.950 over 1 job(s)" in out


def test_report_on_an_empty_ledger(invoke, tmp_path: Path):
    result = invoke(main.main, ["report", "--plots", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert "No experiment results yet" in result.stdout
    assert "Wrote 0 plot(s)" in result.stdout and "Skipped heartbeat_p1_vs_ideal.png" in result.stdout


def test_report_does_not_import_matplotlib_without_plots(tmp_path: Path, hand_built: Path):
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom qcourier.cli.main import main\n"
            f"try:\n    main(['report', '--ledger-dir', {str(hand_built)!r}])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'qiskit', "
            "'numpy'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "QCOURIER_SERVICE": "local"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_plots_of_a_completed_local_study(invoke, tmp_path: Path):
    result = invoke(submit.main, ["-e", "both", "-p", "rounds=2", "-p", "width=5",
                                  "--shots", "300", "--repeat", "2", "--force"])
    assert result.exit_code == 0, result.output
    for _ in range(2):  # the second run collects the job the pending cap deferred
        assert invoke(collect.main, []).exit_code == 0
    result = invoke(main.main, ["report", "--plots", "out", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["jobs"]["by_status"]["completed"] == 4 and data["success_rate"] == 1.0
    jobs = [j for e in ("heavy_hex_code", "deployment") for j in data["experiments"][e]]
    expected = {f"counts_{j['job_id']}.png" for j in jobs} | {
        "heavy_hex_code_logical_error_vs_rounds.png", "heartbeat_p1_vs_ideal.png",
        "heartbeat_fidelity_over_time.png", "budget_local.png"}
    assert len(expected) == 8
    written = [Path(p) for p in data["plots"]["written"]]
    assert {p.name for p in written} == expected and data["plots"]["skipped"] == []
    assert {p.name for p in (tmp_path / "out").iterdir()} == expected
    for path in written:
        assert path.stat().st_size > 1000 and path.read_bytes().startswith(PNG_SIGNATURE)
    text = invoke(main.main, ["report", "--plots", "out"]).stdout
    assert "Wrote 8 plot(s):" in text and "Heartbeat marginal fidelity: latest" in text


def test_report_writes_prometheus_metrics_keeping_the_last_poll(invoke, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from qcourier.cli import collect, main, submit

    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    prom = tmp_path / "qcourier.prom"
    invoke(collect.main, ["--prometheus", prom])

    def samples():
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}

    polled = samples()[("qcourier_last_successful_poll_timestamp_seconds", ())]
    result = invoke(main.main, ["report", "--prometheus", prom])
    assert result.exit_code == 0
    after = samples()
    assert after[("qcourier_last_successful_poll_timestamp_seconds", ())] == polled
    assert after[("qcourier_jobs", (("experiment", "bell"), ("status", "completed")))] == 1


def test_ghz_results_of_different_widths_are_separate_series(tmp_path: Path):
    import subprocess

    from conftest import cli_env, collect_jobs, script, submit_jobs

    submit_jobs(tmp_path, "-e", "ghz", "-p", "width=3", "--shots", "50")
    submit_jobs(tmp_path, "-e", "ghz", "-p", "width=4", "--shots", "50")
    collect_jobs()
    env = cli_env(tmp_path)
    done = subprocess.run([script("qcourier"), "report"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ghz width 3: latest fidelity" in done.stdout
    assert "ghz width 4: latest fidelity" in done.stdout
    assert "over 1 job(s)" in done.stdout and "over 2 job(s)" not in done.stdout
    report = subprocess.run([script("qcourier"), "report", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    import json

    widths = sorted(p["width"] for p in json.loads(report.stdout)["experiments"]["ghz"])
    assert widths == [3, 4]


def test_lambda_from_the_latest_d3_and_d5_fits(hand_built: Path):
    report = _report(hand_built)
    def point(job, state, d, eps, err):
        return {"job_id": job, "logical_state": state, "distance": d,
                "logical_error_per_round": eps, "logical_error_per_round_stderr": err}
    report.series["heavy_hex_code"] = [
        point("a", "0", 3, 0.04, 0.004), point("b", "0", 5, 0.05, None),
        point("c", "1", 5, 0.02, 0.002),  # the latest d=5 in the Z basis
        point("d", "+", 3, 0.05, 0.005), point("e", "+", 5, None, None)]  # X: d=5 withheld
    (z,) = report.lambda_factors()
    assert (z["basis"], z["job_id_d3"], z["job_id_d5"]) == ("z", "a", "c")
    assert z["lambda"] == pytest.approx(2.0)
    assert z["lambda_stderr"] == pytest.approx(2.0 * math.sqrt(0.1**2 + 0.1**2))


def test_heartbeat_drift_against_the_study_baseline():
    from qcourier.accounting.report import heartbeat_drift

    def hb(f, shots=2048, backend="fake_fez", se=0.0005):
        return {"marginal_fidelity": f, "shots": shots, "backend": backend, "width": 27,
                "marginal_fidelity_stderr": se}
    earlier = [hb(0.990), hb(0.992), hb(0.991), hb(0.989), hb(0.5, shots=512),
               hb(0.2, backend="fake_torino")]
    steady = heartbeat_drift([*earlier, hb(0.9905)])
    assert steady["earlier_sessions"] == 4 and not steady["drifted"] and abs(steady["z"]) < 1
    sick = heartbeat_drift([*earlier, hb(0.975)])
    assert sick["drifted"] and sick["z"] < -3
    alone = heartbeat_drift([hb(0.99), hb(0.98, shots=512)])
    assert alone["z"] is None and "0 earlier session(s)" in alone["reason"]
