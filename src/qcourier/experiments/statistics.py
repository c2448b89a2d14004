"""Small statistics shared by the analyses: confidence intervals and Hellinger fidelity."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a binomial proportion."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def hellinger_fidelity_to(counts: Mapping[str, int], ideal: Callable[[str], float]) -> float:
    """Hellinger fidelity between measured counts and an ideal distribution.

    ``(sum_x sqrt(p(x) q(x)))^2`` with ``p`` the empirical distribution and ``q`` the ideal
    one. Only outcomes that were observed contribute (``p(x) = 0`` elsewhere), so an ideal
    distribution over ``2^n`` outcomes never has to be enumerated.

    Args:
        counts: bitstring -> count.
        ideal: bitstring -> ideal probability.
    """
    shots = sum(counts.values())
    if shots == 0:
        return 0.0
    overlap = sum(math.sqrt(n / shots * ideal(key)) for key, n in counts.items())
    return overlap * overlap


def normalise_key(key: str) -> str:
    """A counts key without register separators (Qiskit puts spaces between registers)."""
    return key.replace(" ", "")
