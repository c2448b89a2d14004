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
