"""Transpiling a job's circuits for a backend: deterministic, optionally on a fixed
layout with routing forbidden, and what a ledger record needs to know of the result.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from qcourier.circuits.cache import (
    TranspiledUnit,
)
from qcourier.errors import UsageError
from qcourier.provenance import circuit_hash

if TYPE_CHECKING:
    from qiskit import QuantumCircuit


#: Fixed so that the same circuits on the same backend transpile to the same ISA circuits.
TRANSPILER_SEED = 11


OPTIMIZATION_LEVEL = 1


#: IBM refuses a job whose input exceeds 50 MB.
MAX_INPUT_BYTES = 50 * 1024 * 1024


def describe_transpiled(isa: list[QuantumCircuit], qpy_size: int) -> TranspiledUnit:
    """What a ledger record needs from ISA circuits: hash, depths, gate counts, qubits.

    Args:
        qpy_size: length in bytes of the circuits' QPY (for the job input size).
    """
    gates: Counter[str] = Counter()
    for circuit in isa:
        gates.update({name: int(n) for name, n in circuit.count_ops().items()})
    return TranspiledUnit(
        circuits=isa,
        isa_circuit_hash=circuit_hash(isa),
        circuit_depths=[c.depth() for c in isa],
        transpiled_gates=dict(sorted(gates.items())),
        physical_qubits=physical_qubits(isa),
        qpy_size=qpy_size,
    )


def transpile(circuits: list[QuantumCircuit], backend: Any,
              initial_layout: list[int] | None = None, what: str = "the circuits") -> list[QuantumCircuit]:
    """ISA circuits for ``backend``, deterministically (fixed seed).

    Args:
        initial_layout: physical qubit of each circuit qubit, fixed: the transpiler may then
            neither route nor move a qubit (see :func:`check_fixed_layout`).

    Raises:
        UsageError: with ``initial_layout``, the circuits do not fit the coupling map there.
    """
    from qiskit.transpiler import TranspilerError, generate_preset_pass_manager

    if initial_layout is None:
        manager = generate_preset_pass_manager(
            optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=TRANSPILER_SEED
        )
        return list(manager.run(circuits))
    manager = generate_preset_pass_manager(
        optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=TRANSPILER_SEED,
        initial_layout=initial_layout, routing_method="none",
    )
    try:
        isa = list(manager.run(circuits))
    except TranspilerError as exc:
        raise UsageError(f"{what}: the transpiler would have to route (add SWAPs) on the chosen "
                         f"qubits, which the experiment forbids ({str(exc)[:120]})") from None
    for logical, circuit in zip(circuits, isa, strict=True):
        check_fixed_layout(logical, circuit, initial_layout, what)
    return isa


def _two_qubit_gates(circuit: QuantumCircuit) -> int:
    return sum(1 for inst in circuit.data
               if len(inst.qubits) == 2 and inst.operation.name != "barrier")


def check_fixed_layout(logical: QuantumCircuit, isa: QuantumCircuit, layout: list[int],
                       what: str) -> None:
    """Refuse an ISA circuit that does not keep ``layout`` or adds two-qubit gates (SWAPs).

    Raises:
        UsageError: the layout moved, the output permutation is not the identity, or the ISA
            circuit has a different number of two-qubit gates than the logical one.
    """
    found = isa.layout.initial_index_layout(filter_ancillas=True) if isa.layout else None
    final = isa.layout.final_index_layout(filter_ancillas=True) if isa.layout else None
    if found != list(layout) or final != list(layout):
        raise UsageError(f"{what}: the transpiler moved qubits away from the chosen patch "
                         f"(layout {found}, final {final}); refusing to submit")
    before, after = _two_qubit_gates(logical), _two_qubit_gates(isa)
    if before != after:
        raise UsageError(f"{what}: the transpiled circuit has {after} two-qubit gates for the "
                         f"circuit's {before} (SWAPs added or gates merged); refusing to submit")


def check_input_size(circuits: list[QuantumCircuit], experiment: str) -> int:
    """The job's input size in bytes (QPY, as base64 in the request body), checked.

    Raises:
        UsageError: it exceeds IBM's 50 MB limit for a job's input.
    """
    from io import BytesIO

    from qiskit import qpy

    buffer = BytesIO()
    qpy.dump(circuits, buffer)
    size = _base64_length(len(buffer.getvalue()))
    if size > MAX_INPUT_BYTES:
        raise UsageError(
            f"the {experiment} job's input is {size / 2**20:.1f} MB, over the service's limit of "
            f"{MAX_INPUT_BYTES / 2**20:.0f} MB; use fewer or smaller circuits per job"
        )
    return size


def _base64_length(n: int) -> int:
    return (n + 2) // 3 * 4


def physical_qubits(circuits: list[QuantumCircuit]) -> list[int]:
    """The backend qubits the circuits act on."""
    return sorted(
        {
            c.find_bit(q).index
            for c in circuits
            for inst in c.data
            if inst.operation.name not in ("barrier", "delay")
            for q in inst.qubits
        }
    )

