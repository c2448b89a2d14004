"""Decoders for stim detector error models with flag detectors: flag-conditioned matching.

Why. In a flag circuit (the weight-4 Z gauges of the heavy-hex code, module
``qcourier.experiments.heavy_hex_code``), one fault in the bridge qubit spreads to two data
qubits and also fires a flag: a *hook* error. Its detector error model (DEM) mechanism is a
hyperedge ``{flag} + {s1, s2}`` (flag detector plus syndrome detectors). Plain matching on the
decomposed DEM splits it into a flag edge and a data edge, so the data edge is always cheap,
whether or not the flag fired: two faults can then look like one, and at d=5 the X-basis memory
decays as ``p^2`` instead of ``p^3`` (docs/SURFACE_CODE.md).

Method (flag-conditioned edge re-weighting: Chamberland et al., PRX 10, 011022 (2020), decoding
with flag information; Chamberland & Beverland, Quantum 2, 53 (2018); used by Sundaresan et al.,
Nat. Commun. 14, 2852 (2023)). Flags are not matched. Each DEM mechanism ``e`` (probability
``p_e``, weight ``w_e = ln((1-p_e)/p_e)``) is split into its flag part ``F_e`` and its non-flag
part ``N_e``; the matching graph is built on the non-flag detectors from the ``N_e`` (a part with
more than two detectors is cut into edges that exist on their own, as stim's decomposition does;
one that cannot be cut is dropped and counted in ``undecomposed``). Per shot, with ``f`` the set
of fired flags, the edge of ``N_e`` gets the weight

    w_e + C(F_e \\ f) - C(F_e & f),

``C(S)`` being the cheapest way to fire exactly the flags ``S`` with flag-only mechanisms (flag
measurement and reset errors, ...; the sum of weights over the best partition of ``S``; 0 for an
empty ``S``). So a hook whose flag fired costs ``w_e - C(flag)`` (its conditional log-likelihood
ratio given the flag: it is about as likely as the flag error that would otherwise explain the
flag), and a hook whose flag stayed silent costs ``w_e + C(flag)`` (it needs a second fault to
hide the flag), instead of ``w_e`` for both. Parallel mechanisms on one edge combine as
``1 - prod(1 - p)``; a weight below 0 is set to 0. The flag outcomes are otherwise free: a fired
flag that no matched edge explains is a flag-only error. Flag-only mechanisms that flip an
observable are ignored (there are none in the heavy-hex circuits).

Inputs are only a ``stim.DetectorErrorModel`` (decomposed or not: ``^`` separators are ignored)
and the flag detector indices, or a stim circuit whose flag detectors carry the marker
``coordinate[3] == 1`` (``flag_detector_indices``), so the same decoder is built from the DEM of a
transpiled hardware circuit with per-qubit noise. Speed: each distinct detection-event row is
decoded once; rows are grouped by their flag pattern and each pattern re-weights only the edges
its flags touch on one PyMatching graph (``add_edge(..., merge_strategy="replace")``), decodes
its rows in one batch, then restores them.

Without flags (the heavy-hex Z basis), ``make_decoder`` returns ``PlainMatchingDecoder``:
PyMatching on the DEM as given (decompose it with ``decompose_errors=True``).

Checked (tests/test_decoding.py): on the d=5 heavy-hex X-basis memory (3 rounds) every single
DEM mechanism and every pair of them (77028 pairs) is corrected, where plain matching misses
more than a thousand pairs; the same with per-mechanism probabilities perturbed by factors in
[0.5, 2]. Measured logical error rates: docs/SURFACE_CODE.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import stim

FLAG_COORDINATE = 3  # index of the detector coordinate that marks a flag (value 1)
_P_MAX = 0.5  # a combined edge probability is capped here (weight 0)


def flag_detector_indices(circuit_or_dem: stim.Circuit | stim.DetectorErrorModel) -> list[int]:
    """Indices of the detectors whose coordinate ``FLAG_COORDINATE`` (the 4th) equals 1."""
    coords = circuit_or_dem.get_detector_coordinates()
    return sorted(k for k, c in coords.items()
                  if len(c) > FLAG_COORDINATE and c[FLAG_COORDINATE] == 1)


def _weight(p: float) -> float:
    return math.log((1 - p) / p) if p < _P_MAX else 0.0


def _dem_errors(dem: stim.DetectorErrorModel) -> list[tuple[float, list[int], int]]:
    """``(p, detectors, observable_mask)`` per error mechanism; separators ``^`` are ignored,
    detectors appearing an even number of times cancel."""
    out = []
    for inst in dem.flattened():
        if inst.type != "error":
            continue
        p = inst.args_copy()[0]
        if p <= 0:
            continue
        dets: set[int] = set()
        obs = 0
        for t in inst.targets_copy():
            if t.is_relative_detector_id():
                dets ^= {t.val}
            elif t.is_logical_observable_id():
                obs ^= 1 << t.val
        out.append((p, sorted(dets), obs))
    return out


def _unique_rows(detection_events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    events = np.asarray(detection_events, dtype=np.bool_)
    if events.ndim != 2:
        raise ValueError("detection_events must be 2-D: shots x num_detectors")
    packed = np.packbits(events, axis=1)
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    return events[first], inverse.reshape(-1)


class PlainMatchingDecoder:
    """PyMatching on the DEM as given (the fallback when there are no flag detectors)."""

    def __init__(self, dem: stim.DetectorErrorModel):
        import pymatching

        self.num_detectors = dem.num_detectors
        self.num_observables = dem.num_observables
        self._matching = pymatching.Matching.from_detector_error_model(dem)

    @classmethod
    def from_dem(cls, dem: stim.DetectorErrorModel) -> PlainMatchingDecoder:
        return cls(dem)

    def decode_batch(self, detection_events: np.ndarray) -> np.ndarray:
        """Predicted observable flips (``shots x num_observables``, bool), one decode per
        distinct row."""
        import numpy as np

        rows, inverse = _unique_rows(detection_events)
        if rows.shape[0] == 0:
            return np.zeros((0, self.num_observables), dtype=np.bool_)
        width = self._matching.num_detectors
        predicted = self._matching.decode_batch(rows[:, :width]).astype(np.bool_)
        return predicted[inverse]


def _split_mechanisms(dem: stim.DetectorErrorModel, flag_set: set[int], node: dict[int, int]
                      ) -> tuple[dict[frozenset, float], list[tuple]]:
    """The DEM's error mechanisms, split: those that flip only flags (flag set -> combined
    probability), and the others as ``(p, F_e, N_e as node tuple, obs)``."""
    flag_only: dict[frozenset, float] = {}
    parts = []
    for p, dets, obs in _dem_errors(dem):
        flags = frozenset(k for k in dets if k in flag_set)
        nodes = tuple(node[k] for k in dets if k not in flag_set)
        if not nodes:
            if flags and not obs:
                q = flag_only.get(flags, 0.0)
                flag_only[flags] = q + p - 2 * q * p
            continue
        parts.append((p, flags, nodes, obs))
    return flag_only, parts


def _edges_of(parts: list[tuple]) -> tuple[dict[tuple[int, int], list], int]:
    """The matching graph's edges (key ``(u, v)``, ``v = -1`` for the boundary -> list of
    ``(w_e, F_e, obs)``) and how many mechanisms could not be decomposed into them.

    Non-flag parts with more than two detectors are cut into edges that exist on their own.
    """
    known: dict[tuple, int] = {}
    for _p, _flags, nodes, obs in parts:
        if len(nodes) <= 2:
            known.setdefault(nodes, obs)
    undecomposed = 0
    edges: dict[tuple[int, int], list] = {}
    for p, flags, nodes, obs in parts:
        pieces = [nodes] if len(nodes) <= 2 else _decompose(nodes, obs, known)
        if pieces is None:
            undecomposed += 1
            continue
        w = _weight(p)
        for piece in pieces:
            key = (piece[0], piece[1]) if len(piece) == 2 else (piece[0], -1)
            piece_obs = obs if len(pieces) == 1 else known[piece]
            edges.setdefault(key, []).append((w, flags, piece_obs))
    return edges, undecomposed


class FlagAwareDecoder:
    """Matching on the non-flag detectors with flag-conditioned edge weights (module doc)."""

    def __init__(self, dem: stim.DetectorErrorModel, flag_detectors):
        import numpy as np
        import pymatching

        self.num_detectors = dem.num_detectors
        self.num_observables = dem.num_observables
        self.flag_detectors = sorted({int(k) for k in flag_detectors})
        flag_set = set(self.flag_detectors)
        if any(k < 0 or k >= self.num_detectors for k in flag_set):
            raise ValueError("flag detector index out of range")
        self._check = np.array([k for k in range(self.num_detectors) if k not in flag_set],
                               dtype=np.int64)
        self._flag_cols = np.array(self.flag_detectors, dtype=np.int64)
        node = {int(k): i for i, k in enumerate(self._check)}

        self._flag_only, parts = _split_mechanisms(dem, flag_set, node)
        self._cost_cache: dict[frozenset, float] = {frozenset(): 0.0}
        edges, self.undecomposed = _edges_of(parts)
        self._edges = edges
        self._edges_of_flag: dict[int, set] = {}
        for key, mechs in edges.items():
            for _, flags, _ in mechs:
                for k in flags:
                    self._edges_of_flag.setdefault(k, set()).add(key)

        self._matching = pymatching.Matching()
        self._base = {key: self._edge(key, frozenset()) for key in edges}
        # Weights of impossible edges are capped (PyMatching scales weights to integers by the
        # largest one, so an enormous weight would cost resolution).
        finite = [w for w, _ in self._base.values() if not math.isinf(w)]
        self._w_cap = 2 * max(finite + [_weight(p) for p, _, _ in _dem_errors(dem)] + [1.0])
        for key, (w, obs) in self._base.items():
            self._set_edge(key, w, obs)
        num_nodes = len(self._check)
        if num_nodes and self._matching.num_detectors < num_nodes:
            # an isolated last node: give it a (never used) boundary edge so widths agree
            self._matching.add_boundary_edge(num_nodes - 1, weight=self._w_cap,
                                             merge_strategy="keep-original")
        self._matching.ensure_num_fault_ids(max(self.num_observables, 1))

    @classmethod
    def from_dem(cls, dem: stim.DetectorErrorModel, flag_detectors=None):
        """The decoder for ``dem``; ``flag_detectors`` default to the coordinate marker.
        Returns a ``PlainMatchingDecoder`` when there are no flags."""
        if flag_detectors is None:
            flag_detectors = flag_detector_indices(dem)
        if not list(flag_detectors):
            return PlainMatchingDecoder(dem)
        return cls(dem, flag_detectors)

    @classmethod
    def from_circuit(cls, circuit: stim.Circuit, flag_detectors=None):
        """As ``from_dem`` on the circuit's DEM (decomposed for the plain fallback)."""
        if flag_detectors is None:
            flag_detectors = flag_detector_indices(circuit)
        if not list(flag_detectors):
            return PlainMatchingDecoder(circuit.detector_error_model(
                decompose_errors=True, ignore_decomposition_failures=True))
        return cls(circuit.detector_error_model(), flag_detectors)

    # -- weights -------------------------------------------------------------------------
    def _flag_cost(self, flags: frozenset) -> float:
        """Cheapest total weight of flag-only mechanisms firing exactly ``flags`` (best
        partition; ``inf`` if none)."""
        cached = self._cost_cache.get(flags)
        if cached is not None:
            return cached
        first = min(flags)
        best = math.inf
        for part, q in self._flag_only.items():
            if first in part and part <= flags:
                best = min(best, _weight(q) + self._flag_cost(flags - part))
        self._cost_cache[flags] = best
        return best

    def _edge(self, key, fired: frozenset) -> tuple[float, int]:
        """``(weight, obs)`` of an edge given the fired flags."""
        by_obs: dict[int, float] = {}
        for w, flags, obs in self._edges[key]:
            if flags:
                cost = self._flag_cost(flags - fired) if flags - fired else 0.0
                gain = self._flag_cost(flags & fired) if flags & fired else 0.0
                if math.isinf(cost):
                    continue
                if math.isinf(gain):
                    gain = w  # nothing else explains these flags: the edge is free
                w = max(w + cost - gain, 0.0)
            p = 1.0 / (1.0 + math.exp(w))
            q = by_obs.get(obs, 0.0)
            by_obs[obs] = 1.0 - (1.0 - q) * (1.0 - p)
        if not by_obs:
            return math.inf, 0
        obs, p = max(by_obs.items(), key=lambda kv: kv[1])
        return _weight(min(max(p, 1e-300), _P_MAX)), obs

    def _set_edge(self, key, weight: float, obs: int) -> None:
        fault_ids = {b for b in range(self.num_observables) if obs >> b & 1}
        weight = min(weight, self._w_cap)  # inf: cannot happen given the flags
        u, v = key
        if v < 0:
            self._matching.add_boundary_edge(u, fault_ids=fault_ids, weight=weight,
                                             merge_strategy="replace")
        else:
            self._matching.add_edge(u, v, fault_ids=fault_ids, weight=weight,
                                    merge_strategy="replace")

    # -- decoding ------------------------------------------------------------------------
    def decode_batch(self, detection_events: np.ndarray) -> np.ndarray:
        """Predicted observable flips (``shots x num_observables``, bool) for detection
        events ``shots x num_detectors`` (flags included, in the DEM's detector order)."""
        import numpy as np

        rows, inverse = _unique_rows(detection_events)
        if rows.shape[1] != self.num_detectors:
            raise ValueError(f"expected {self.num_detectors} detectors, got {rows.shape[1]}")
        out = np.zeros((rows.shape[0], self.num_observables), dtype=np.bool_)
        if rows.shape[0] == 0:
            return out
        checks = rows[:, self._check]
        flags = rows[:, self._flag_cols]
        patterns, group = np.unique(np.packbits(flags, axis=1), axis=0, return_inverse=True)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(patterns) + 1))
        width = self._matching.num_detectors
        for g in range(len(patterns)):
            idx = order[bounds[g]:bounds[g + 1]]
            sub = checks[idx]
            if not sub.any():
                continue  # nothing to match: no correction
            fired_cols = np.flatnonzero(flags[idx[0]])
            fired = frozenset(int(self._flag_cols[c]) for c in fired_cols)
            touched = set()
            for k in fired:
                touched |= self._edges_of_flag.get(k, set())
            try:
                for key in touched:
                    self._set_edge(key, *self._edge(key, fired))
                predicted = self._matching.decode_batch(sub[:, :width])
                out[idx] = predicted[:, :self.num_observables].astype(np.bool_)
            finally:
                for key in touched:
                    self._set_edge(key, *self._base[key])
        return out[inverse]


def _decompose(nodes: tuple, obs: int, known: dict) -> list[tuple] | None:
    """Cut ``nodes`` (more than two) into parts of one or two nodes that are edges of their
    own (``known``: part -> observable mask) whose observables XOR to ``obs``; ``None`` if
    there is no such cut."""
    def rec(rest: tuple, want: int):
        if not rest:
            return [] if want == 0 else None
        a = rest[0]
        for b in rest[1:]:
            part = (a, b)
            if part in known:
                tail = rec(tuple(x for x in rest[1:] if x != b), want ^ known[part])
                if tail is not None:
                    return [part] + tail
        if (a,) in known:
            tail = rec(rest[1:], want ^ known[(a,)])
            if tail is not None:
                return [(a,)] + tail
        return None
    return rec(tuple(nodes), obs)


def make_decoder(dem_or_circuit, flag_detectors=None):
    """``FlagAwareDecoder`` if there are flag detectors, else ``PlainMatchingDecoder``."""
    import stim

    if isinstance(dem_or_circuit, stim.Circuit):
        return FlagAwareDecoder.from_circuit(dem_or_circuit, flag_detectors)
    return FlagAwareDecoder.from_dem(dem_or_circuit, flag_detectors)
