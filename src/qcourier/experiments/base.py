"""The contract every experiment implements.

An experiment turns validated parameters into *job units* (the circuits of one job plus the
metadata recorded on its ledger line) and turns one job's counts back into a JSON-able
analysis. Experiments do no I/O and know nothing of the ledger or of services.

Counts convention (shared with the services): one dict per circuit (PUB), keys are bitstrings
over *all* classical bits of that circuit in Qiskit order (clbit 0 is the rightmost
character), values are shot counts. Every experiment uses a single classical register.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

if TYPE_CHECKING:  # qiskit is heavy: imported only by the functions that build circuits
    from qiskit import QuantumCircuit


class ExperimentParams(BaseModel):
    """Base of every experiment's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shots: int = 1024


@dataclass
class JobUnit:
    """The circuits of one job and what its ledger line records about them.

    Attributes:
        circuits: logical (not yet transpiled) circuits, one PUB each, in order.
        shots: shots per circuit.
        metadata: JSON-able facts for the ledger line and for analysis (e.g.
            ``logical_state``, ``distance``, ``rounds``). Keys that match ledger fields
            (``logical_state``) are lifted into them; the rest stay under ``metadata``.
    """

    circuits: list[QuantumCircuit]
    shots: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Set by :meth:`Experiment.place`: ``initial_layout[i]`` is the physical qubit of circuit
    #: qubit ``i`` for every circuit of the unit, and the transpiler may not route (add a
    #: SWAP) or move a qubit: submission refuses the job if it would.
    initial_layout: list[int] | None = None


@dataclass(frozen=True)
class Device:
    """The backend a submission will run on, for experiments that place their own qubits.

    Attributes:
        name: backend name.
        target: its Qiskit ``Target`` (coupling map, gate errors and durations).
        num_qubits: its width.
        snapshot: its calibration snapshot (``BackendProperties.to_dict()`` form).
    """

    name: str
    target: Any
    num_qubits: int
    snapshot: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunContext:
    """What ran, for experiments whose analysis needs it (``Experiment.needs_run``).

    Attributes:
        isa_circuits: the job's transpiled circuits, as submitted (checked against the
            record's ``isa_circuit_hash``); None if the ledger's circuit store lacks them.
        snapshot: the calibration snapshot recorded at submission; None if it is gone.
    """

    isa_circuits: list[QuantumCircuit] | None
    snapshot: dict[str, Any] | None


@dataclass(frozen=True)
class Calibration:
    """Error rates of the physical qubits a job used, read from the backend snapshot.

    All values are probabilities; ``None`` where the backend did not report them. Medians
    are over the qubits (and couplers) the transpiled job actually touches.
    """

    single_qubit_gate_error: float | None = None
    two_qubit_gate_error: float | None = None
    readout_error: float | None = None
    reset_error: float | None = None


class Experiment(ABC):
    """An experiment: name, description, parameters, circuits, analysis."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[ExperimentParams]]
    #: True: :meth:`analyse` is called with ``run=RunContext(...)`` (the ISA circuits and the
    #: calibration snapshot), for analyses that model the circuit that actually ran.
    needs_run: ClassVar[bool] = False

    @abstractmethod
    def build(self, params: ExperimentParams) -> list[JobUnit]:
        """Build the job units for one submission with these parameters."""

    def place(self, unit: JobUnit, device: Device) -> JobUnit:
        """Fix the unit's physical qubits on the chosen backend (``initial_layout``).

        The default leaves layout and routing to the transpiler. An experiment whose circuit
        is only correct on a given qubit graph (a code made for the lattice) returns a copy
        of the unit with ``initial_layout`` set, and raises ``UsageError`` when the device
        has no room for it.
        """
        return unit

    @abstractmethod
    def analyse(
        self,
        metadata: dict[str, Any],
        counts: list[dict[str, int]],
        calibration: Calibration | None,
    ) -> dict[str, Any]:
        """Analyse one job's counts (one dict per circuit) into a JSON-able dict.

        Args:
            metadata: the job unit's metadata as recorded at submission.
            counts: counts per circuit, in the order the circuits were built.
            calibration: error rates of the backend at submission, where known.
        """

    def headline(self, analysis: dict[str, Any]) -> str | None:
        """The analysis's main figure in a few words, for qcollect's line about the job
        (e.g. ``logical error per round 0.031 [0.024, 0.038]``); None if there is none."""
        return None


def calibration_for_qubits(snapshot: dict[str, Any], qubits: Sequence[int]) -> Calibration:
    """Median error rates over ``qubits`` (and the couplers among them) from a snapshot.

    Single-qubit gate error: median ``gate_error`` of ``sx`` (else ``x``) on the qubits.
    Two-qubit gate error: median ``gate_error`` of the two-qubit gates (``cz``, ``ecr`` or
    ``cx``) whose both qubits are among ``qubits``. Readout error: median ``readout_error``.
    Reset error: not reported by IBM; ``None``.
    """
    from statistics import median

    from qcourier.experiments.base import Calibration

    wanted = set(qubits)

    def param(entries: list[dict[str, Any]], name: str) -> float | None:
        for entry in entries:
            if entry.get("name") == name and entry.get("value") is not None:
                return float(entry["value"])
        return None

    readout = [
        value
        for index, entries in enumerate(snapshot.get("qubits", []))
        if index in wanted and (value := param(entries, "readout_error")) is not None
    ]
    one: dict[str, list[float]] = {}
    two: list[float] = []
    for gate in snapshot.get("gates", []):
        gate_qubits = gate.get("qubits", [])
        error = param(gate.get("parameters", []), "gate_error")
        if error is None or not set(gate_qubits) <= wanted or error >= 1.0:
            continue
        if len(gate_qubits) == 1:
            one.setdefault(gate.get("gate", ""), []).append(error)
        elif len(gate_qubits) == 2 and gate.get("gate") in ("cz", "ecr", "cx"):
            two.append(error)
    single = one.get("sx") or one.get("x")
    return Calibration(
        single_qubit_gate_error=median(single) if single else None,
        two_qubit_gate_error=median(two) if two else None,
        readout_error=median(readout) if readout else None,
        reset_error=None,
    )

