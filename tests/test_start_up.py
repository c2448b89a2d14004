"""The commands that run most start without the heavy packages (issue 16).

``qcourier --help``, ``qsubmit --help``, ``qcollect --help``, ``qcourier status`` and a
``qcollect`` with nothing to do must not import qiskit, the IBM client, a simulator or numpy
(nor rich off a terminal): their start-up is budgeted against importing qiskit-ibm-runtime
(``scripts/bench_cold_start.py``). The ``--help`` pages import no pydantic either; the commands
that read the settings do, for pydantic-settings (the project's settings library), but they
never build the ledger record's model: they read final records through their summaries. ``qcourier experiments`` needs the
experiments' pydantic parameters, but no qiskit. What a process imported is read from ``python -X
importtime``, so these tests check the design, never the machine's speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, script

from qcourier.cli import collect, submit
from qcourier.ledger.store import Ledger

SCIENCE = ("qiskit", "qiskit_ibm_runtime", "qiskit_aer", "numpy", "stim", "pymatching",
           "matplotlib")
HEAVY = (*SCIENCE, "pydantic", "pydantic_core", "rich", "asyncio")


def imported(argv: list[str], env: dict[str, str], cwd: Path, *, modules: bool = False
             ) -> set[str]:
    """The top-level packages (or, with ``modules``, the modules) a console script imported,
    as ``-X importtime`` lists them."""
    done = subprocess.run([sys.executable, "-X", "importtime", script(argv[0]), *argv[1:]],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {m.group(1)
             for m in re.finditer(r"^import time:.*\|\s*([\w.]+)$", done.stderr, re.M)}
    return names if modules else {name.split(".")[0] for name in names}


@pytest.fixture
def study(tmp_path: Path, invoke) -> Path:
    """A ledger whose jobs are all completed, folded since its last line was written (as the
    run after the one that collected them leaves it: lines not yet in the fold index are
    validated, which takes pydantic)."""
    assert invoke(submit.main, ["-e", "bell", "--shots", "20", "--repeat", "2"]).exit_code == 0
    assert invoke(collect.main, []).exit_code == 0
    Ledger(tmp_path / "ledger").fold()
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["qcourier", "--help"], ["qsubmit", "--help"], ["qcollect", "--help"],
], ids=" ".join)
def test_the_help_pages_import_no_heavy_package(study: Path, argv: list[str]):
    heavy = imported(argv, cli_env(study), study) & set(HEAVY)
    assert heavy == set(), f"{' '.join(argv)} imported {sorted(heavy)}"


@pytest.mark.parametrize("argv", [
    ["qcourier", "status"], ["qcourier", "status", "--json"], ["qcollect", "--poll-all"],
    ["qcollect", "--quiet"],
], ids=" ".join)
def test_the_commands_that_run_most_import_no_science_nor_the_record_model(study: Path,
                                                                          argv: list[str]):
    names = imported(argv, cli_env(study), study, modules=True)
    heavy = {name.split(".")[0] for name in names} & {*SCIENCE, "rich"}
    assert heavy == set(), f"{' '.join(argv)} imported {sorted(heavy)}"
    assert "qcourier.ledger.record" not in names, f"{' '.join(argv)} built the record model"


def test_listing_the_experiments_imports_neither_qiskit_nor_a_simulator(study: Path):
    heavy = imported(["qcourier", "experiments"], cli_env(study), study) & set(SCIENCE)
    assert heavy == set(), f"qcourier experiments imported {sorted(heavy)}"


def test_the_check_sees_a_heavy_import(study: Path):
    """The tests above must be able to fail: a command that validates records builds the
    record model."""
    names = imported(["qcourier", "ledger", "check"], cli_env(study), study, modules=True)
    assert "qcourier.ledger.record" in names


def test_the_local_service_submits_and_simulates_without_the_ibm_client(tmp_path: Path,
                                                                       invoke):
    """qiskit-ibm-runtime costs a process a second. Once a fake device is described in the
    cache, a qcollect that simulates its jobs never imports it, nor does a qsubmit whose
    transpilation is cached. (Transpiling does: qiskit loads every installed transpiler
    plugin, qiskit-ibm-runtime's among them, when it builds a pass manager.)"""
    assert invoke(submit.main, ["-e", "bell", "--shots", "20"]).exit_code == 0
    env = cli_env(tmp_path)
    for argv in (["qsubmit", "-e", "bell", "--shots", "20", "--force"], ["qcollect"]):
        modules = imported(argv, env, tmp_path)
        assert "qiskit" in modules, argv
        assert "qiskit_ibm_runtime" not in modules, argv
    assert "Completed: 2/2" in subprocess.run([script("qcollect")], env=env, cwd=tmp_path,
                                              capture_output=True, text=True).stdout
