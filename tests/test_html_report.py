"""The study page: self-contained, escaped, and rendered by headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qcourier.cli import collect, report, submit

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)


def _job_ids(tmp_path: Path) -> list[str]:
    from conftest import ledger_records

    return [r["job_id"] for r in ledger_records(tmp_path / "ledger") if r.get("job_id")]


def _study(invoke) -> None:
    invoke(submit.main, ["--experiment", "bell", "--shots", "100", "--repeat", "2"])
    assert invoke(collect.main, []).exit_code == 0


def test_page_is_self_contained_and_lists_jobs(invoke, tmp_path: Path):
    _study(invoke)
    page = tmp_path / "study.html"
    assert invoke(report.main, ["--html", page]).exit_code == 0
    text = page.read_text()
    assert "<img class='plot'" in text and "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert all(j in text for j in _job_ids(tmp_path))
    assert "Generated 20" in text


def test_collect_refreshes_page(invoke, tmp_path: Path):
    page = tmp_path / "out" / "study.html"
    (tmp_path / "qcourier-plan.toml").write_text("[targets.bell]\nsessions = 4\n")
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    assert invoke(collect.main, ["--html", page]).exit_code == 0
    (job_id,) = _job_ids(tmp_path)
    assert job_id in page.read_text()
    assert "bell: 1/4 (declared)" in page.read_text()


def test_values_are_escaped():
    from qcourier.accounting.page import _e

    assert _e("<script>alert('x')</script>") == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it "
                    "with apt-get install -y chromium)")
def test_page_in_headless_chromium(invoke, tmp_path: Path):
    _study(invoke)
    page = tmp_path / "study.html"
    assert invoke(report.main, ["--html", page]).exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    shot = tmp_path / "study.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2000",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert all(j in dom for j in _job_ids(tmp_path))
    assert dom.count("data:image/png;base64,") >= 1
    assert "id=\"jobs\"" in dom and "completed" in dom


def test_collect_page_shows_the_plan_given_with_plan(invoke, tmp_path: Path):
    page = tmp_path / "study.html"
    plan = tmp_path / "plans" / "study.toml"
    plan.parent.mkdir()
    plan.write_text("[targets.bell]\nsessions = 3\n")
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    assert invoke(collect.main, ["--html", page, "--plan", plan]).exit_code == 0
    assert "<ul id='plan'>" in page.read_text() and "bell: 1/3 (declared)" in page.read_text()


@pytest.mark.parametrize("args, message", [
    (["--plan", "missing.toml", "--html", "p.html"], "plan file missing.toml not found"),
    (["--plan", "missing.toml"], "--plan is for the page: give it with --html FILE"),
])
def test_collect_plan_errors_before_collecting(invoke, tmp_path: Path, args, message):
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    result = invoke(collect.main, args)
    assert result.exit_code == 2 and message in result.stderr
    from conftest import ledger_records

    assert {r["status"] for r in ledger_records(tmp_path / "ledger")} == {"submitted"}


def _section(dom: str, element_id: str) -> str:
    """The DOM from the element with this id up to the next heading."""
    start = dom.index(f'id="{element_id}"')
    end = dom.find("<h2", start + 1)
    return dom[start:] if end < 0 else dom[start:end]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it "
                    "with apt-get install -y chromium)")
def test_heavy_hex_and_heartbeat_page_in_headless_chromium(invoke, tmp_path: Path):
    """Real heavy-hex code and heartbeat jobs on the local service, collected by qcollect
    --html --plan; the page as Chromium renders it: job ids, both result tables, the drift
    line, the plan and the plots; a screenshot."""
    import json

    from conftest import ledger_records

    (tmp_path / "plan.toml").write_text(
        "[targets.deployment]\neffect_size = 0.44\npower = 0.8\nmethod = \"paired\"\n"
        "[targets.heavy_hex_code]\nsessions = 12\n")
    out = invoke(submit.main, ["--experiment", "both", "--shots", "200", "-p", "rounds=2",
                               "-p", "width=5", "--json"])
    assert out.exit_code == 0, out.stderr
    jobs = {j["experiment_type"]: j["job_id"] for j in json.loads(out.stdout)["jobs"]}
    assert set(jobs) == {"heavy_hex_code", "deployment"}
    page = tmp_path / "study.html"
    assert invoke(collect.main, ["--html", page, "--plan", tmp_path / "plan.toml"]).exit_code == 0
    assert {r["status"] for r in ledger_records(tmp_path / "ledger")} == {"completed"}

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    shot = tmp_path / "heavy_hex_study.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,4000",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout

    jobs_table = _section(dom, "jobs")
    assert jobs["heavy_hex_code"] in jobs_table and jobs["deployment"] in jobs_table
    heavy_hex = _section(dom, "heavy_hex_code")
    assert "<table>" in heavy_hex and jobs["heavy_hex_code"] in heavy_hex
    assert "logical error / round" in heavy_hex
    assert "usable round count" in heavy_hex  # two round counts: why the fit is withheld
    heartbeat = _section(dom, "heartbeat")
    assert "<table>" in heartbeat and jobs["deployment"] in heartbeat
    assert "marginal fidelity" in heartbeat
    assert "Drift check:" in _section(dom, "drift")
    plan = _section(dom, "plan")
    assert "heavy_hex_code: 1/12" in plan and "deployment: 1/42" in plan
    plots = {name for name in ("heavy_hex_code_logical_error_vs_rounds",
                               "heartbeat_fidelity_over_time", "heartbeat_p1_vs_ideal",
                               "budget_local")
             if f'alt="{name}" src="data:image/png;base64,' in dom}
    assert len(plots) == 4, plots

