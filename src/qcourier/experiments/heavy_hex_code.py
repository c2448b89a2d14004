"""Heavy-hex subsystem code (HHC) memory circuits: a prototype, not yet an experiment.

Chamberland et al., PRX 10, 011022 (2020); run at d=3 on IBM hardware by Sundaresan et al.,
Nat. Commun. 14, 2852 (2023). Convention of qiskit-qec's ``HHC`` (the Hadamard conjugate of
Chamberland's): X gauges are the weight-2 vertical pairs ``(i,j),(i+1,j)``, each measured by
the ancilla between them; Z gauges are weight-4 squares (rows ``i-1,i``, columns ``j,j+1``,
``i % 2 == j % 2``) plus weight-2 pairs on the top (even ``j``) and bottom (odd ``j``) rows,
each measured by a bridge qubit between two flags with the 7-step flag schedule of
Chamberland Fig. 2b (conjugated by H). X stabilizers are surface-code-like (threshold: the
X-basis memory); Z stabilizers are Bacon-Shor strips (no threshold as d grows: the Z-basis
memory). See docs/SURFACE_CODE.md for why this code and for the heavy-hex embedding.

Status: circuits on abstract qubits with uniform noise, whose circuit-level fault distance
(stim ``search_for_undetectable_logical_errors``) is checked to be ``d`` at d=3 and 5 in both
bases (tests/test_heavy_hex_code.py). Not yet: placement on a backend's coupling map, the
Qiskit circuits submitted, decoding from the ISA circuit with ``qcourier.circuits.noise``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import stim


def hhc_layout(d: int) -> tuple[dict, dict, list, int]:
    """Abstract qubits of the distance-``d`` HHC (module doc).

    Returns:
        ``(data, anc, z_gauges, num_qubits)``: ``data[i, j]`` and ``anc[i, j]`` (the X-gauge
        ancilla between data ``(i, j)`` and ``(i+1, j)``, also a Z-gauge flag) are qubit
        indices; each Z gauge is ``(kind, support, left, middle, right)`` with ``kind`` one of
        ``"bulk"``, ``"top"``, ``"bottom"``, ``middle`` the qubit whose outcome is the gauge
        and ``left``/``right`` its flags.
    """
    data = {(i, j): i * d + j for i in range(d) for j in range(d)}
    nxt = [d * d]
    def new():
        nxt[0] += 1
        return nxt[0] - 1
    anc = {(i, j): new() for i in range(d - 1) for j in range(d)}
    zg = []
    for i in range(d + 1):
        for j in range(d - 1):
            if i % 2 != j % 2:
                continue
            if i == 0:
                zg.append(("top", [data[0, j], data[0, j + 1]], new(), new(), new()))
            elif i == d:
                zg.append(("bottom", [data[d - 1, j], data[d - 1, j + 1]], new(), new(), new()))
            else:
                zg.append(("bulk", [data[i-1, j], data[i-1, j+1], data[i, j], data[i, j+1]],
                           anc[i - 1, j], new(), anc[i - 1, j + 1]))
    return data, anc, zg, nxt[0]

def memory_circuit(d: int, rounds: int, basis: str, p: float = 0.0,
                   flag_detectors: bool = True, flip: bool = False) -> tuple[stim.Circuit, int]:
    """The HHC memory experiment as a stim circuit with uniform circuit-level noise ``p``.

    Round order: Z gauges then X gauges for ``basis="z"`` (data prepared in ``|0>``), X then Z
    for ``"x"`` (``|+>``). Detectors: Bacon-Shor strips (products of the Z gauges between two
    columns) for ``"z"``; surface-like X stabilizers and every flag for ``"x"``. Observable:
    Z on column 0, or X on row 0.

    Every detector has four coordinates ``(x, y, t, flag)``: ``(x, y)`` the centre of what it
    checks on a grid where data ``(i, j)`` sits at ``(2j, 2i)`` (column, row), ``t`` the round
    (``rounds`` for the final data-readout detectors), and ``flag`` = 1 for a flag detector, 0
    otherwise. ``flag_detector_indices`` (in ``qcourier.experiments.decoding``) reads the
    marker back.

    Args:
        flag_detectors: ``False`` drops the flag detectors (only to show they are needed).
        flip: prepare the other eigenstate (``|1>_L`` or ``|->_L``): X (Z) on every data
            qubit right after preparation, which for odd ``d`` is a logical X (Z). stim's
            reference sample includes it, so detectors stay deterministic and zero.

    A ``TICK`` ends every round (the Qiskit translation turns it into a barrier, so the
    transpiler cannot merge gates across rounds).

    Returns:
        ``(circuit, num_qubits)``.
    """
    builder = _MemoryBuilder(d, p)
    builder.prepare(basis, flip)
    rounds_records = [builder.round(basis) for _ in range(rounds)]
    final = builder.read_data(basis)
    if basis == "z":
        builder.strip_detectors(rounds_records, final, rounds)
    else:
        builder.x_detectors(rounds_records, final, rounds, flag_detectors)
    return builder.circuit, builder.num_qubits


class _MemoryBuilder:
    """Builds :func:`memory_circuit`: gates with their noise, the measurement record, and
    the detectors (each measurement is stored as ``(tag, qubit, record index)``)."""

    def __init__(self, d: int, p: float):
        import stim

        self.d, self.p = d, p
        self.data, self.anc, self.zg, self.num_qubits = hhc_layout(d)
        self.circuit = stim.Circuit()
        self.measured = 0
        self.data_qubits = list(self.data.values())
        self.flag_gauge = {}  # flag qubit -> centre of its Z gauge
        for g in self.zg:
            self.flag_gauge[g[2]] = self.flag_gauge[g[4]] = self.centre(
                [divmod(q, d) for q in g[1]])

    # -- gates and measurements -------------------------------------------------------------

    def op(self, gate: str, qubits: list[int]) -> None:
        self.circuit.append(gate, qubits)
        channel = {"CX": "DEPOLARIZE2", "R": "X_ERROR"}.get(gate, "DEPOLARIZE1")
        self.circuit.append(channel, qubits, self.p)

    def measure(self, qubits: list[int], tag: str, store: list) -> None:
        self.circuit.append("X_ERROR", qubits, self.p)
        self.circuit.append("M", qubits)
        for q in qubits:
            store.append((tag, q, self.measured))
            self.measured += 1

    def prepare(self, basis: str, flip: bool) -> None:
        self.op("R", self.data_qubits)
        if basis == "x":
            self.op("H", self.data_qubits)
        if flip:
            self.op("X" if basis == "z" else "Z", self.data_qubits)

    def round(self, basis: str) -> list:
        store: list = []
        if basis == "z":
            self.z_gauges(store)
            self.x_gauges(store)
        else:
            self.x_gauges(store)
            self.z_gauges(store)
        self.circuit.append("TICK")
        return store

    def x_gauges(self, store: list) -> None:
        anc, data = self.anc, self.data
        ancillas = list(anc.values())
        self.op("R", ancillas)
        self.op("H", ancillas)
        self.op("CX", [x for (i, j), a in anc.items() for x in (a, data[i, j])])
        self.op("CX", [x for (i, j), a in anc.items() for x in (a, data[i + 1, j])])
        self.op("H", ancillas)
        self.measure(ancillas, "x", store)

    def z_gauges(self, store: list) -> None:
        """The 7-step flag schedule (Chamberland Fig. 2b, conjugated by H)."""
        zg = self.zg
        lefts, middles, rights = [g[2] for g in zg], [g[3] for g in zg], [g[4] for g in zg]
        self.op("R", middles + rights)
        self.op("H", rights)
        self.op("CX", [x for g in zg for x in (g[4], g[3])])
        self.op("R", lefts)
        self.op("H", lefts)
        step2 = [x for g in zg for x in (g[2], g[3])]
        step2 += [x for g in zg if g[0] in ("bulk", "bottom") for x in (g[1][1], g[4])]
        self.op("CX", step2)
        step3 = []
        for g in zg:
            if g[0] == "bulk":
                step3 += [g[1][2], g[2], g[1][3], g[4]]
            elif g[0] == "top":
                step3 += [g[1][0], g[2], g[1][1], g[4]]
        self.op("CX", step3)
        step4 = [x for g in zg for x in (g[4], g[3])]
        step4 += [x for g in zg if g[0] in ("bulk", "bottom") for x in (g[1][0], g[2])]
        self.op("CX", step4)
        self.op("CX", [x for g in zg for x in (g[2], g[3])])
        self.op("H", rights)
        self.measure(rights, "fr", store)
        self.op("H", lefts)
        self.measure(middles, "z", store)
        self.measure(lefts, "fl", store)

    def read_data(self, basis: str) -> dict[int, int]:
        """Measure the data (in the memory's basis); data qubit -> record index."""
        final: list = []
        if basis == "x":
            self.op("H", self.data_qubits)
        self.measure(self.data_qubits, "d", final)
        return {q: k for _, q, k in final}

    # -- detectors ---------------------------------------------------------------------------

    def rec(self, k: int):
        import stim

        return stim.target_rec(k - self.measured)

    def detector(self, ks: list[int], xy: tuple[float, float], t: int, flag: int = 0) -> None:
        self.circuit.append("DETECTOR", [self.rec(k) for k in ks], [xy[0], xy[1], t, flag])

    @staticmethod
    def centre(cells: list[tuple[int, int]]) -> tuple[float, float]:
        """``(x, y)`` of a list of data ``(i, j)`` on the grid ``(2j, 2i)``."""
        return (sum(2 * j for _, j in cells) / len(cells), sum(2 * i for i, _ in cells) / len(cells))

    def strip_detectors(self, records: list, final: dict[int, int], rounds: int) -> None:
        """Z basis: Bacon-Shor strips (the Z gauges between columns j, j+1), observable Z on
        column 0."""
        d, data = self.d, self.data
        strips: dict[int, list[int]] = {}
        for g in self.zg:
            strips.setdefault(min(q % d for q in g[1]), []).append(g[3])
        prev: Any = None  # the previous round's values (every round count is >= 1)
        for t, store in enumerate(records):
            m = {q: k for tag, q, k in store if tag == "z"}
            values = {j: [m[q] for q in mids] for j, mids in strips.items()}
            for j in strips:
                self.detector(values[j] + (prev[j] if prev else []), (2 * j + 1, d - 1), t)
            prev = values
        for j in strips:
            support = [final[data[i, jj]] for i in range(d) for jj in (j, j + 1)]
            self.detector(support + prev[j], (2 * j + 1, d - 1), rounds)
        self.circuit.append("OBSERVABLE_INCLUDE", [self.rec(final[data[i, 0]]) for i in range(d)], 0)

    def x_detectors(self, records: list, final: dict[int, int], rounds: int,
                    flag_detectors: bool) -> None:
        """X basis: surface-like X stabilizers and every flag, observable X on row 0."""
        d, data, anc = self.d, self.data, self.anc
        stabs = []
        for i in range(d - 1):
            for j in range(d):
                if i % 2 == j % 2:
                    stabs.append([(i, j)] if j == d - 1 else [(i, j), (i, j + 1)])
                elif j == 0:
                    stabs.append([(i, j)])
        def where(s):
            return self.centre([(i + di, j) for (i, j) in s for di in (0, 1)])
        prev: Any = None  # the previous round's values (every round count is >= 1)
        for r, store in enumerate(records):
            m = {q: k for tag, q, k in store if tag == "x"}
            values = [[m[anc[a]] for a in s] for s in stabs]
            for si in range(len(stabs)):
                self.detector(values[si] + (prev[si] if prev else []), where(stabs[si]), r)
            for tag, q, k in store:
                if flag_detectors and tag in ("fl", "fr"):
                    x, y = self.flag_gauge[q]
                    self.detector([k], (x + (-0.5 if tag == "fl" else 0.5), y), r, 1)
            prev = values
        for si, s in enumerate(stabs):
            support = [final[data[i + di, j]] for (i, j) in s for di in (0, 1)]
            self.detector(support + prev[si], where(s), rounds)
        self.circuit.append("OBSERVABLE_INCLUDE", [self.rec(final[data[0, j]]) for j in range(d)], 0)
