"""QPU-time accounting. For now: the model that estimates a job's QPU seconds.

The estimate (also what the local service reports as a job's usage) is::

    JOB_OVERHEAD_SECONDS
    + sum over circuits of (CIRCUIT_OVERHEAD_SECONDS + shots * (duration + rep_delay))

where ``duration`` is the circuit's scheduled duration on the backend
(``QuantumCircuit.estimate_duration`` from the target's gate lengths) and ``rep_delay`` the
backend's default repetition delay (250 us on IBM's Heron devices). The overheads are
fixed charges of the order IBM reports for small jobs on the Open Plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

JOB_OVERHEAD_SECONDS = 2.0
#: IBM's cap on a job's max_execution_time.
SERVICE_MAX_EXECUTION_SECONDS = 10_800
#: Never ask for less than this: fixed overheads vary, and a job cut short is charged anyway.
MIN_EXECUTION_SECONDS = 30
CIRCUIT_OVERHEAD_SECONDS = 0.05
DEFAULT_REP_DELAY_SECONDS = 250e-6


def estimate_qpu_seconds(circuits: Sequence[QuantumCircuit], shots: int, backend: Any) -> float:
    """Estimated QPU seconds of one job of ISA ``circuits`` with ``shots`` each on ``backend``."""
    rep_delay = _rep_delay(backend)
    total = JOB_OVERHEAD_SECONDS
    for circuit in circuits:
        try:
            duration = float(circuit.estimate_duration(backend.target, unit="s"))
        except Exception:  # a gate without a length: count it as free rather than fail
            duration = 0.0
        total += CIRCUIT_OVERHEAD_SECONDS + shots * (duration + rep_delay)
    return round(total, 6)


def _rep_delay(backend: Any) -> float:
    try:
        value = backend.configuration().default_rep_delay
    except Exception:
        return DEFAULT_REP_DELAY_SECONDS
    return float(value) if value else DEFAULT_REP_DELAY_SECONDS


def max_execution_time(estimate_seconds: float, margin: float, cap: int) -> int:
    """A job's ``max_execution_time``: the estimate times a safety margin, within bounds.

    At least ``MIN_EXECUTION_SECONDS``, at most ``cap`` and IBM's own 3-hour limit.
    """
    wanted = math.ceil(estimate_seconds * margin)
    return int(min(max(wanted, MIN_EXECUTION_SECONDS), cap, SERVICE_MAX_EXECUTION_SECONDS))
