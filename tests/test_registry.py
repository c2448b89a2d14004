"""Tests of the experiment registry: names, groups, --param parsing, entry-point plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import qcourier.experiments as registry
from qcourier.errors import UsageError
from qcourier.experiments import available, expand, get_experiment, resolve
from qcourier.experiments.canaries import BellExperiment, GHZExperiment
from qcourier.experiments.deployment import DeploymentExperiment
from qcourier.experiments.heavy_hex_memory import HeavyHexCodeExperiment
from qcourier.experiments.surface_code import SurfaceCodeExperiment

BUILTINS = {"bell", "ghz", "heavy_hex_code", "surface_code", "deployment"}


@pytest.fixture(autouse=True)
def fresh_registry():
    available.cache_clear()
    yield
    available.cache_clear()


def test_builtins_available():
    found = available()
    assert BUILTINS <= set(found)
    assert found["bell"] is BellExperiment
    assert found["ghz"] is GHZExperiment
    assert found["surface_code"] is SurfaceCodeExperiment
    assert found["deployment"] is DeploymentExperiment
    assert set(registry.choices()) >= BUILTINS | {"both"}


def test_resolve_group_both():
    resolved = resolve("both", [])
    assert [e.name for e, _ in resolved] == ["heavy_hex_code", "deployment"]
    assert isinstance(resolved[0][0], HeavyHexCodeExperiment)
    assert isinstance(resolved[1][0], DeploymentExperiment)
    # defaults are kept
    assert resolved[0][1].distance == 3
    assert resolved[1][1].width == 27


def test_resolve_single():
    ((experiment, params),) = resolve("ghz", ["width=3"])
    assert experiment.name == "ghz" and params.width == 3


def test_param_applies_only_where_it_exists():
    (sc, sc_params), (dep, dep_params) = resolve("both", ["distance=5"])
    assert sc.name == "heavy_hex_code" and sc_params.distance == 5
    assert dep.name == "deployment"
    assert "distance" not in type(dep_params).model_fields
    assert dep_params == type(dep_params)()


def test_params_for_both_experiments():
    (_, sc_params), (_, dep_params) = resolve("both", ["rounds=2", " width = 4 ", "step=0.5"])
    assert sc_params.rounds == 2
    assert dep_params.width == 4 and dep_params.step == 0.5


def test_shots_override_applies_to_all():
    (_, sc_params), (_, dep_params) = resolve("both", ["distance=5"], shots=77)
    assert sc_params.shots == 77 and dep_params.shots == 77
    (_, sc_default), (_, dep_default) = resolve("both", [])
    assert sc_default.shots == 4096 and dep_default.shots == 2048


def test_shots_override_validated():
    with pytest.raises(UsageError, match="shots"):
        resolve("bell", [], shots=0)


def test_unknown_experiment_lists_valid_names():
    with pytest.raises(UsageError) as info:
        resolve("teleportation", [])
    message = str(info.value)
    assert "teleportation" in message
    for name in BUILTINS | {"both"}:
        assert name in message
    with pytest.raises(UsageError):
        get_experiment("teleportation")
    with pytest.raises(UsageError):
        expand("teleportation")


def test_unknown_parameter_names_valid_ones():
    with pytest.raises(UsageError) as info:
        resolve("both", ["colour=red"])
    message = str(info.value)
    assert "colour" in message
    for field in ("distance", "rounds", "logical_state", "width", "step", "shots"):
        assert field in message


def test_parameter_of_other_experiment_rejected():
    with pytest.raises(UsageError, match="distance"):
        resolve("deployment", ["distance=5"])


def test_distance_must_be_3_or_5():
    with pytest.raises(UsageError) as info:
        resolve("surface_code", ["distance=4"])
    message = str(info.value)
    assert "distance" in message
    assert "3" in message and "5" in message


@pytest.mark.parametrize("assignment", ["rounds=0", "rounds=26", "logical_state=2",
                                        "rounds=abc", "width=1"])
def test_bad_values(assignment):
    with pytest.raises(UsageError) as info:
        resolve("both", [assignment])
    assert assignment.split("=")[0] in str(info.value)


@pytest.mark.parametrize("assignment", ["distance", "=5", " =5", ""])
def test_malformed_param(assignment):
    with pytest.raises(UsageError, match="key=value"):
        resolve("both", [assignment])


@pytest.mark.parametrize("state", ["0", "1", "+", "-"])
def test_logical_states_accepted(state):
    ((_, params),) = resolve("surface_code", [f"logical_state={state}"])
    assert params.logical_state == state


# --- third-party experiments through entry points ---------------------------------------------

PLUGIN_MODULE = '''
from typing import Any

from pydantic import Field

from qcourier.experiments.base import Experiment, ExperimentParams, JobUnit


class ToyParams(ExperimentParams):
    shots: int = Field(10, gt=0)
    angle: float = 0.0


class ToyExperiment(Experiment):
    name = "toy"
    description = "a third-party toy"
    Params = ToyParams

    def build(self, params):
        from qiskit import QuantumCircuit

        qc = QuantumCircuit(1, 1)
        qc.rx(params.angle, 0)
        qc.measure(0, 0)
        return [JobUnit([qc], params.shots, {"angle": params.angle})]

    def analyse(self, metadata, counts, calibration) -> dict[str, Any]:
        return {"experiment": self.name}


class ImpostorBell(ToyExperiment):
    name = "bell"


class NotAnExperiment:
    pass
'''


def _make_distribution(root: Path, package: str, entry_points: dict[str, str]) -> None:
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy.py").write_text(PLUGIN_MODULE)
    dist_info = root / f"{package}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n"
    )
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[qcourier.experiments]\n{lines}\n")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A tiny installed distribution (unique package name) registering experiments."""

    def install(entry_points_for: dict[str, str]) -> str:
        package = f"qc_plugin_{tmp_path.name.replace('-', '_')}"
        root = tmp_path / "site"
        root.mkdir()
        _make_distribution(
            root, package,
            {name: f"{package}.toy:{attr}" for name, attr in entry_points_for.items()},
        )
        monkeypatch.syspath_prepend(str(root))
        available.cache_clear()
        return package

    yield install
    for name in list(sys.modules):
        if name.startswith("qc_plugin_"):
            del sys.modules[name]


def test_plugin_listed_and_resolvable(plugin):
    package = plugin({"toy": "ToyExperiment"})
    found = available()
    assert "toy" in found
    assert found["toy"].__module__ == f"{package}.toy"
    assert BUILTINS <= set(found)
    assert "toy" in registry.choices()
    ((experiment, params),) = resolve("toy", ["angle=0.25"], shots=5)
    assert experiment.name == "toy"
    assert params.angle == 0.25 and params.shots == 5
    with pytest.raises(UsageError, match="angle"):
        resolve("toy", ["width=3"])


def test_plugin_cannot_shadow_builtin(plugin):
    plugin({"bell": "ImpostorBell", "both": "ToyExperiment", "toy": "ToyExperiment"})
    found = available()
    assert found["bell"] is BellExperiment
    assert isinstance(get_experiment("bell"), BellExperiment)
    assert "toy" in found  # the legitimate entry of the same distribution still loads
    assert "both" not in found
    assert [e.name for e, _ in resolve("both", [])] == ["heavy_hex_code", "deployment"]


def test_plugin_non_experiment_ignored(plugin):
    plugin({"junk": "NotAnExperiment", "toy": "ToyExperiment"})
    found = available()
    assert "junk" not in found
    assert "toy" in found


def test_plugin_not_visible_without_install():
    assert "toy" not in available()
    with pytest.raises(UsageError):
        resolve("toy", [])
