"""The experiment registry: built-ins plus any registered through entry points.

Third-party packages add experiments with an entry point in the group
``qcourier.experiments`` whose value is an :class:`Experiment` subclass, e.g.::

    [project.entry-points."qcourier.experiments"]
    my_experiment = "my_package.module:MyExperiment"
"""

from __future__ import annotations

from functools import cache
from importlib import import_module, metadata
from typing import Any

from pydantic import ValidationError

from qcourier.errors import UsageError
from qcourier.experiments.base import Experiment, ExperimentParams, JobUnit

__all__ = [
    "Experiment",
    "ExperimentParams",
    "JobUnit",
    "GROUPS",
    "available",
    "get_experiment",
    "expand",
    "parse_params",
]

ENTRY_POINT_GROUP = "qcourier.experiments"

_BUILTINS: dict[str, str] = {
    "bell": "qcourier.experiments.canaries:BellExperiment",
    "ghz": "qcourier.experiments.canaries:GHZExperiment",
    "heavy_hex_code": "qcourier.experiments.heavy_hex_memory:HeavyHexCodeExperiment",
    "surface_code": "qcourier.experiments.surface_code:SurfaceCodeExperiment",
    "deployment": "qcourier.experiments.deployment:DeploymentExperiment",
}

#: Names that stand for several experiments.
GROUPS: dict[str, tuple[str, ...]] = {"both": ("heavy_hex_code", "deployment")}


def _load(target: str) -> type[Experiment]:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


@cache
def available() -> dict[str, type[Experiment]]:
    """All experiments by name: built-ins first, then entry points (which may not shadow)."""
    found = {name: _load(target) for name, target in _BUILTINS.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found or ep.name in GROUPS:
            continue
        cls = ep.load()
        if isinstance(cls, type) and issubclass(cls, Experiment):
            found[ep.name] = cls
    return found


def choices() -> list[str]:
    """Every name ``--experiment`` accepts: experiments and groups."""
    return sorted(available()) + sorted(GROUPS)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        UsageError: no experiment has that name (the message lists the valid ones).
    """
    try:
        return available()[name]()
    except KeyError:
        raise UsageError(
            f"unknown experiment {name!r}; choose one of: {', '.join(choices())}"
        ) from None


def expand(name: str) -> list[str]:
    """The experiment names a name stands for (a group expands, an experiment is itself)."""
    if name in GROUPS:
        return list(GROUPS[name])
    get_experiment(name)  # validates
    return [name]


def parse_params(experiment: Experiment, values: dict[str, Any]) -> ExperimentParams:
    """Validate raw parameter values for an experiment into its parameter model.

    Raises:
        UsageError: an unknown parameter or a bad value, in one line naming what is valid.
    """
    fields = experiment.Params.model_fields
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown parameter {unknown[0]!r} for experiment {experiment.name!r}; "
            f"valid parameters: {', '.join(fields)}"
        )
    try:
        return experiment.Params(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "parameters"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise UsageError(
            f"bad value for {where!r} of experiment {experiment.name!r}: {message}"
        ) from None


def resolve(
    name: str, assignments: list[str], shots: int | None = None
) -> list[tuple[Experiment, ExperimentParams]]:
    """Experiments and their validated parameters for ``--experiment`` and ``--param``.

    Args:
        name: an experiment or a group (``both``).
        assignments: ``key=value`` strings; each applies to every selected experiment that
            has that parameter, and must apply to at least one.
        shots: overrides every selected experiment's shots.

    Raises:
        UsageError: an unknown name or parameter, a malformed assignment, or a bad value.
    """
    experiments = [get_experiment(n) for n in expand(name)]
    values: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects key=value, got {item!r}")
        values[key.strip()] = value.strip()
    for key in values:
        if not any(key in e.Params.model_fields for e in experiments):
            valid = sorted({f for e in experiments for f in e.Params.model_fields})
            raise UsageError(
                f"unknown parameter {key!r} for {name!r}; valid parameters: {', '.join(valid)}"
            )
    resolved = []
    for experiment in experiments:
        mine: dict[str, Any] = {k: v for k, v in values.items() if k in experiment.Params.model_fields}
        if shots is not None:
            mine["shots"] = shots
        resolved.append((experiment, parse_params(experiment, mine)))
    return resolved
