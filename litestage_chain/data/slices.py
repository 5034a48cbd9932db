"""Seeded, reproducible subsets of a QuestionSet.

The budget search evaluates every candidate on the same validation slice drawn from a train split
(so the dev split stays untouched for reporting). Membership is decided by hashing (seed, id), not by
a PRNG stream, so a slice is the same on every Python version and platform, and a larger slice with
the same seed contains every smaller one.
"""

from __future__ import annotations

import hashlib

from .types import DataError, QuestionSet


def _rank_key(seed: int, question_id: str) -> str:
    return hashlib.sha256(f"{seed}:{question_id}".encode()).hexdigest()


def seeded_slice(questions: QuestionSet, size: int, *, seed: int = 0) -> QuestionSet:
    """`size` questions chosen by seed, kept in source order. `size` larger than the set is an error."""
    if size <= 0:
        raise DataError(f"slice size must be positive, got {size}")
    if size > len(questions):
        raise DataError(
            f"asked for {size} questions but {questions.benchmark}/{questions.split} has only {len(questions)}"
        )
    ranked = sorted(range(len(questions)), key=lambda i: _rank_key(seed, questions[i].id))
    chosen = sorted(ranked[:size])
    return questions.model_copy(
        update={
            "split": f"{questions.split}[n={size},seed={seed}]",
            "questions": tuple(questions[i] for i in chosen),
        }
    )
