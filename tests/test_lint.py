"""ruff (configured in pyproject.toml) finds nothing in the code, the tests and the scripts.

A name used only on a terminal path once crashed every interactive run while the suite
stayed green; pyflakes' undefined-name check (F821) finds that class of bug without running
the path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install '.[test]')")
    done = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_would_catch_an_undefined_name(tmp_path: Path):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install '.[test]')")
    bad = tmp_path / "bad.py"
    bad.write_text("def console():\n    return Console()\n")
    done = subprocess.run([ruff, "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "F821" in done.stdout
