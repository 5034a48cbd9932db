"""Small statistics shared by the benchmark report and the budget search."""

from __future__ import annotations

import math

from litestage_chain.errors import InvalidInputError

Z_95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Preferred over the normal approximation because benchmark slices are small and accuracies can sit near 0
    or 1, where p +- z*sqrt(p(1-p)/n) leaves [0, 1] or collapses to a point.
    """
    if total < 1:
        raise InvalidInputError(f"a confidence interval needs at least one question, got {total}")
    if not 0 <= successes <= total:
        raise InvalidInputError(f"successes must be within 0..{total}, got {successes}")
    p = successes / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high
