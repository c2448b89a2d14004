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

from typing import TYPE_CHECKING

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
    data, anc, zg, n = hhc_layout(d)
    import stim

    c = stim.Circuit()
    meas = [0]
    def M(qs, tag, store):
        c.append("X_ERROR", qs, p); c.append("M", qs)
        for q in qs:
            store.append((tag, q, meas[0])); meas[0] += 1
    def op(g, qs):
        c.append(g, qs)
        if g == "CX": c.append("DEPOLARIZE2", qs, p)
        elif g == "R": c.append("X_ERROR", qs, p)
        else: c.append("DEPOLARIZE1", qs, p)
    D = list(data.values())
    op("R", D)
    if basis == "x": op("H", D)
    if flip: op("X" if basis == "z" else "Z", D)
    recs = []  # per round: dict
    def xround(store):
        A = list(anc.values())
        op("R", A); op("H", A)
        op("CX", [x for (i, j), a in anc.items() for x in (a, data[i, j])])
        op("CX", [x for (i, j), a in anc.items() for x in (a, data[i + 1, j])])
        op("H", A); M(A, "x", store)
    def zround(store):
        L = [g[2] for g in zg]; Mi = [g[3] for g in zg]; Rr = [g[4] for g in zg]
        op("R", Mi + Rr); op("H", Rr)
        op("CX", [x for g in zg for x in (g[4], g[3])]); op("R", L); op("H", L)
        s2 = [x for g in zg for x in (g[2], g[3])]
        s2 += [x for g in zg if g[0] in ("bulk", "bottom") for x in (g[1][1], g[4])]
        op("CX", s2)
        s3 = []
        for g in zg:
            if g[0] == "bulk": s3 += [g[1][2], g[2], g[1][3], g[4]]
            elif g[0] == "top": s3 += [g[1][0], g[2], g[1][1], g[4]]
        op("CX", s3)
        s4 = [x for g in zg for x in (g[4], g[3])]
        s4 += [x for g in zg if g[0] in ("bulk", "bottom") for x in (g[1][0], g[2])]
        op("CX", s4)
        op("CX", [x for g in zg for x in (g[2], g[3])]); op("H", Rr)
        M(Rr, "fr", store)
        op("H", L); M(Mi, "z", store); M(L, "fl", store)
    for r in range(rounds):
        store = []
        if basis == "z": zround(store); xround(store)
        else: xround(store); zround(store)
        c.append("TICK")
        recs.append(store)
    final = []
    if basis == "x": op("H", D)
    M(D, "d", final)
    total = meas[0]
    def rec(k): return stim.target_rec(k - total)
    def det(ks, xy, t, flag=0):
        c.append("DETECTOR", [rec(k) for k in ks], [xy[0], xy[1], t, flag])
    def centre(cells):  # (x, y) of a list of data (i, j)
        return (sum(2 * j for _, j in cells) / len(cells), sum(2 * i for i, _ in cells) / len(cells))
    flag_gauge = {}  # flag qubit -> centre of its Z gauge
    for g in zg:
        xy = centre([divmod(q, d) for q in g[1]])
        flag_gauge[g[2]] = flag_gauge[g[4]] = xy
    dq = {q: k for _, q, k in final}
    if basis == "z":
        # strips: Z gauges per column pair
        strips = {}
        for gi, g in enumerate(zg):
            j = min(q % d for q in g[1])
            strips.setdefault(j, []).append(g[3])
        def values(store):
            m = {q: k for t, q, k in store if t == "z"}
            return {j: [m[q] for q in mids] for j, mids in strips.items()}
        def strip_xy(j): return (2 * j + 1, d - 1)
        prev = None
        for t, store in enumerate(recs):
            v = values(store)
            for j in strips:
                det(v[j] + (prev[j] if prev else []), strip_xy(j), t)
            prev = v
        for j in strips:
            sup = [dq[data[i, jj]] for i in range(d) for jj in (j, j + 1)]
            det(sup + prev[j], strip_xy(j), rounds)
        c.append("OBSERVABLE_INCLUDE", [rec(dq[data[i, 0]]) for i in range(d)], 0)
    else:
        stabs = []
        for i in range(d - 1):
            for j in range(d):
                if i % 2 == j % 2:
                    if j == d - 1: stabs.append([(i, j)])
                    else: stabs.append([(i, j), (i, j + 1)])
                elif j == 0: stabs.append([(i, j)])
        def stab_xy(s): return centre([(i + di, j) for (i, j) in s for di in (0, 1)])
        prev = None
        for r, store in enumerate(recs):
            m = {q: k for t, q, k in store if t == "x"}
            v = [[m[anc[a]] for a in s] for s in stabs]
            for si in range(len(stabs)):
                det(v[si] + (prev[si] if prev else []), stab_xy(stabs[si]), r)
            for t, q, k in store:
                if flag_detectors and t in ("fl", "fr"):
                    x, y = flag_gauge[q]
                    det([k], (x + (-0.5 if t == "fl" else 0.5), y), r, 1)
            prev = v
        for si, s in enumerate(stabs):
            sup = [dq[data[i + di, j]] for (i, j) in s for di in (0, 1)]
            det(sup + prev[si], stab_xy(s), rounds)
        c.append("OBSERVABLE_INCLUDE", [rec(dq[data[0, j]]) for j in range(d)], 0)
    return c, n

