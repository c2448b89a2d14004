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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

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

    @abstractmethod
    def build(self, params: ExperimentParams) -> list[JobUnit]:
        """Build the job units for one submission with these parameters."""

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
