"""matplotlib is the ``plots`` extra (issue 16): without it ``report --plots`` is one clear
error naming the extra, and the study page is written without its plots."""

from __future__ import annotations

import sys
from pathlib import Path

from qcourier.cli.main import main as group


def test_report_plots_without_matplotlib_names_the_extra(invoke, monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    result = invoke(group, ["report", "--plots", tmp_path / "plots"])
    assert (result.exit_code, result.stderr) == (1, (
        "Error: plots need matplotlib, which is not installed: pip install 'qcourier[plots]'\n"))
    page = tmp_path / "study.html"
    assert invoke(group, ["report", "--html", page]).exit_code == 0
    assert "Plots need matplotlib: pip install &#x27;qcourier[plots]&#x27;" in page.read_text()


def test_report_plots_with_matplotlib(invoke, tmp_path: Path):
    result = invoke(group, ["report", "--plots", tmp_path / "plots"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "plots").is_dir()
