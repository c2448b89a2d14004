"""ruff and mypy (configured in pyproject.toml) find nothing in the code (ruff: also the tests and scripts).

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


@pytest.mark.slow
def test_mypy_finds_nothing(tmp_path: Path):
    """mypy, as configured in pyproject.toml (lenient: annotated code is checked)."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_would_catch_a_wrong_type(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def half(x: int) -> int:\n    return x / 2\n")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                           str(bad)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Incompatible return value type" in done.stdout
