"""Small statistics shared by the benchmark report, its head-to-head comparison and the budget search."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

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


def speedup_interval(
    base: Sequence[float], own: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95% paired-bootstrap interval of mean(base) / mean(own) over the same questions (None below 2 questions).

    Why: per-question times vary several-fold with the question (long or short reasoning) and a busy machine
    adds its own noise, so a speedup of a few percent can be nothing. Questions are resampled as pairs, which keeps
    what a question costs both methods together. Seeded: a report rebuilt from the same records is identical.
    """
    if len(base) != len(own):
        raise InvalidInputError(f"paired times differ in length: {len(base)} and {len(own)}")
    return _ratio_bootstrap(base, own, resamples, seed)


def clustered_ratio_interval(
    numerators: Sequence[float], denominators: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95% bootstrap interval of sum(numerators) / sum(denominators), resampling whole clusters (None below 2).

    Each position is one cluster, e.g. one round of a benchmark: the seconds two points took on the same batch of
    questions in one process. Why clusters and not questions: batched rows share their batch's prefill and decode
    steps, and machine load drifts from round to round, so the questions of one round are not independent; the
    round is the unit whose times are comparable. Seeded, so a rebuilt report is identical.
    """
    if len(numerators) != len(denominators):
        raise InvalidInputError(f"paired clusters differ in length: {len(numerators)} and {len(denominators)}")
    return _ratio_bootstrap(numerators, denominators, resamples, seed)


def _ratio_bootstrap(
    numerators: Sequence[float], denominators: Sequence[float], resamples: int, seed: int
) -> tuple[float | None, float | None]:
    n = len(numerators)
    if n < 2:
        return None, None
    generator = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [generator.randrange(n) for _ in range(n)]
        ratios.append(_ratio(sum(numerators[i] for i in picks), sum(denominators[i] for i in picks)))
    ratios.sort()
    return ratios[int(0.025 * (resamples - 1))], ratios[int(0.975 * (resamples - 1))]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf
