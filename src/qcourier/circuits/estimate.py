"""The QPU-time estimate of a job (also what the local service charges) and the
max_execution_time derived from it.
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

