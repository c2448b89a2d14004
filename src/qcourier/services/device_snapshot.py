"""A backend rebuilt from a JSON description of a device.

The description holds what transpiling for a device and estimating its QPU time read: the
target (every operation, the qubits it acts on, its duration and error; each qubit's T1 and
T2; the time step and the timing constraints) and the default repetition delay.
:func:`describe` makes it from a backend, :class:`SnapshotBackend` is the backend rebuilt
from it. The local service runs on these (see :mod:`qcourier.services.fake_backends`), so
that a process need not import qiskit-ibm-runtime to transpile for a fake device.

A description is exact: floats survive JSON unchanged, and :func:`describe` raises
:class:`DescriptionError` for a target holding anything it could not rebuild as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qiskit.circuit import BoxOp, ForLoopOp, IfElseOp, Instruction, SwitchCaseOp, WhileLoopOp
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers import BackendV2, Options
from qiskit.transpiler import InstructionProperties, QubitProperties, Target

from qcourier.services.base import ServiceError

#: Bumped whenever the layout of a description changes.
FORMAT = 1
_CONTROL_FLOW = {cls.__name__: cls for cls in (IfElseOp, WhileLoopOp, ForLoopOp, SwitchCaseOp,
                                               BoxOp)}
_TIMING = ("granularity", "min_length", "pulse_alignment", "acquire_alignment")


class DescriptionError(ValueError):
    """The target holds an operation a description cannot rebuild as it was."""


def describe(backend: Any) -> dict[str, Any]:
    """The JSON-able description of ``backend`` (its target and repetition delay).

    Raises:
        DescriptionError: an operation is neither a standard gate, a control-flow operation
            nor a plain named instruction without parameters.
    """
    target = backend.target
    standard = get_standard_gate_name_mapping()
    operations = []
    for name in target.operation_names:
        operation: Any = target.operation_from_name(name)
        if isinstance(operation, type):  # a control-flow class, not an instruction
            kind = operation.__name__
            if _CONTROL_FLOW.get(kind) is not operation:
                raise DescriptionError(f"operation {name}: class {kind}")
            entry: dict[str, Any] = {"name": name, "control_flow": kind}
        elif name in standard and type(standard[name]) is type(operation):
            entry = {"name": name}
        elif type(operation) is Instruction and not operation.params:
            entry = {"name": name, "instruction": [operation.num_qubits, operation.num_clbits]}
        else:
            raise DescriptionError(f"operation {name}: {type(operation).__name__}")
        entry["properties"] = [
            [None if qargs is None else list(qargs),
             None if props is None else [props.duration, props.error]]
            for qargs, props in target[name].items()]
        operations.append(entry)
    qubits = target.qubit_properties
    return {
        "format": FORMAT,
        "name": backend.name,
        "num_qubits": target.num_qubits,
        "dt": target.dt,
        **{key: getattr(target, key) for key in _TIMING},
        "concurrent_measurements": (None if target.concurrent_measurements is None
                                    else [list(group) for group in target.concurrent_measurements]),
        "qubit_properties": (None if qubits is None else
                             [None if q is None else [q.t1, q.t2, q.frequency] for q in qubits]),
        "operations": operations,
        "default_rep_delay": _rep_delay(backend),
    }


def _rep_delay(backend: Any) -> float | None:
    try:
        value = backend.configuration().default_rep_delay
    except Exception:  # noqa: BLE001 - a backend without a configuration has none
        return None
    return None if value is None else float(value)


def _target(description: dict[str, Any]) -> Target:
    qubits = description["qubit_properties"]
    target = Target(
        num_qubits=description["num_qubits"], dt=description["dt"],
        **{key: description[key] for key in _TIMING},
        qubit_properties=None if qubits is None else [
            None if q is None else QubitProperties(t1=q[0], t2=q[1], frequency=q[2])
            for q in qubits],
        concurrent_measurements=description["concurrent_measurements"])
    standard = get_standard_gate_name_mapping()
    for entry in description["operations"]:
        name = entry["name"]
        if "control_flow" in entry:
            operation: Any = _CONTROL_FLOW[entry["control_flow"]]
        elif "instruction" in entry:
            operation = Instruction(name, *entry["instruction"], params=[])
        else:
            operation = standard[name]
        properties = {
            None if qargs is None else tuple(qargs):
                None if props is None else InstructionProperties(duration=props[0], error=props[1])
            for qargs, props in entry["properties"]}
        # {None: None} is what the target holds for a global operation, added without any.
        target.add_instruction(operation, None if properties == {None: None} else properties,
                               name=name)
    return target


@dataclass(frozen=True)
class SnapshotConfiguration:
    """The part of a backend's configuration that qcourier reads."""

    default_rep_delay: float | None


class SnapshotBackend(BackendV2):
    """A backend rebuilt from :func:`describe`'s description: transpile for it, estimate
    its jobs' QPU time; its jobs run on the service that made it, not through :meth:`run`."""

    def __init__(self, description: dict[str, Any]):
        super().__init__(name=description["name"],
                         description=f"{description['name']}, rebuilt from its description")
        self._target = _target(description)
        self._configuration = SnapshotConfiguration(description["default_rep_delay"])

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options()

    def configuration(self) -> SnapshotConfiguration:
        return self._configuration

    def run(self, run_input: Any, **options: Any) -> Any:
        raise ServiceError(f"{self.name} runs jobs only through the local service's submit")
