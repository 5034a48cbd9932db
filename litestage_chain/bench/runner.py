"""Run every method point over the questions, interleaved per question batch, resuming from the records file.

The loop is: for each batch of `interleave` questions, run every point on the questions of that batch it has no
record for, in an order that changes every batch (a balanced design: `round_order`). Interleaving means a slow
spell of the machine (other processes share the CPU) hits all methods on the same questions alike, instead of
inflating whichever method happened to run then; speedups are ratios over the same questions, so they are not
skewed by it.

Running a point is delegated to an `Executor` (the real one runs the reasoning chain, see `executor.py`), which
keeps the loop testable with a stub and the measurement in one place.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from tqdm.auto import tqdm

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.pruning import DropReason, DropRule, check_rule, dropped_points
from litestage_chain.bench.records import (
    Outcome,
    QuestionRecord,
    RecordStore,
    identity_hash,
    record_key,
)
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError, LiteStageError


@runtime_checkable
class Executor(Protocol):
    """Runs one method point over questions. `identity` must change whenever outcomes would (weights, prompts,
    token budgets): it is part of every record's key."""

    identity: str

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]: ...


def to_record(
    point: MethodPoint, identity: str, question: Question, outcome: Outcome, *, worker: str | None = None,
    host: str | None = None,
) -> QuestionRecord:
    """Key an outcome and attach the point and gold label it belongs to (and, in a distributed run, the worker
    and host that measured it)."""
    if outcome.question_id != question.id:
        raise InvalidInputError(f"outcome for question {outcome.question_id!r} returned in the place of {question.id!r}")
    gold = question.answer
    return QuestionRecord(
        key=record_key(point.key(), identity, question),
        identity=identity_hash(identity),
        point=point.label,
        point_key=point.key(),
        method=point.method,
        count=point.count,
        stage=point.stage,
        skipped=point.skipped_sublayers,
        early_exit=point.uses_early_exit,
        question_id=question.id,
        gold=gold,
        answer=outcome.answer,
        correct=None if gold is None else (outcome.answer is not None and outcome.answer.upper() == gold.upper()),
        answer_source=outcome.answer_source,
        fallback_used=outcome.fallback_used,
        stages=outcome.stages,
        seconds=outcome.seconds,
        worker=worker,
        host=host,
    )


def records_of(
    point: MethodPoint, identity: str, questions: Sequence[Question], outcomes: Sequence[Outcome], **measured_by: str
) -> list[QuestionRecord]:
    """The records of one executor run, checking it returned one outcome per question."""
    if len(outcomes) != len(questions):
        raise InvalidInputError(
            f"executor returned {len(outcomes)} outcomes for {len(questions)} questions ({point.label})"
        )
    return [to_record(point, identity, q, o, **measured_by) for q, o in zip(questions, outcomes, strict=True)]


def balanced_orders(count: int) -> list[list[int]]:
    """The rows of a Williams design for `count` items: in every cycle of rows, each item runs first equally often
    and runs directly after each other item equally often (`count` rows when even, twice that when odd)."""
    if count < 1:
        raise InvalidInputError(f"an order needs at least one item, got {count}")
    first, low, high = [0], 1, count - 1
    while len(first) < count:
        if len(first) % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    rows = [[(item + shift) % count for item in first] for shift in range(count)]
    return rows + [row[::-1] for row in rows] if count % 2 else rows


def round_order(points: Sequence[MethodPoint], round_index: int) -> list[MethodPoint]:
    """The run order of one round: row `round_index` of a balanced (Williams) design over `points`.

    Changing the order every round spreads a systematic within-round effect (the load rising or falling during a
    round, the first run after a pause) over all methods instead of always landing on the same one. A plain rotation
    did that but kept every point's predecessor fixed (B always ran right after A), so an effect of what ran just
    before (memory the previous point left allocated, say) stayed on one point: on StrategyQA dev two points with
    identical settings and answers measured 4% apart. Balancing predecessors spreads that too.
    """
    rows = balanced_orders(len(points))
    return [points[index] for index in rows[round_index % len(rows)]]


def recorded_count(
    points: Sequence[MethodPoint], questions: Sequence[Question], identity: str, store: RecordStore
) -> int:
    """How many of the (point, question) runs planned are already in `store` under this `identity`.

    A store can also hold records of earlier settings (another engine identity, points no longer listed); they are
    kept but do not count, so a resumed run reports what it will actually skip.
    """
    return sum(record_key(p.key(), identity, q) in store for p in points for q in questions)


def check_run(
    points: Sequence[MethodPoint], questions: Sequence[Question], interleave: int, drop: DropRule | None = None
) -> None:
    """Raise `InvalidInputError` for an empty question or point list, duplicate question ids or point labels,
    `interleave` < 1, or a drop rule without the points it compares with (shared by the single-process loop and
    the distributed one, `litestage_chain.cluster.bench`)."""
    if not questions:
        raise InvalidInputError("no questions to benchmark")
    if not points:
        raise InvalidInputError("no method points to benchmark")
    if interleave < 1:
        raise InvalidInputError(f"interleave must be >= 1, got {interleave}")
    ids = [q.id for q in questions]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidInputError(f"duplicate question ids: {duplicates[:5]}")
    labels = [p.label for p in points]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise InvalidInputError(f"duplicate method points: {repeated}")
    if drop is not None:
        check_rule(drop, points)


def round_work(
    points: Sequence[MethodPoint], keys: dict[tuple[str, str], str], store: RecordStore, round_index: int,
    batch: Sequence[Question], skip: Collection[str] = (),
) -> list[tuple[MethodPoint, list[Question]]]:
    """One round's runs in order: every point (in the round's balanced order) with the batch's questions it has no
    record for, leaving out the points labelled in `skip` (dropped ones). The order is over all points, so dropping
    one does not shift where the others run in a round."""
    work = []
    for point in round_order(points, round_index):
        if point.label in skip:
            continue
        missing = [q for q in batch if keys[(point.label, q.id)] not in store]
        if missing:
            work.append((point, missing))
    return work


class Pruner:
    """Which points a drop rule has stopped, replayed from the records at each round boundary (`pruning.py`;
    `None` rule: none ever)."""

    def __init__(
        self, rule: DropRule | None, points: Sequence[MethodPoint], questions: Sequence[Question],
        keys: dict[tuple[str, str], str], store: RecordStore, interleave: int,
    ) -> None:
        self.rule, self.points, self.questions, self.keys, self.store = rule, points, questions, keys, store
        self.interleave = interleave
        self.dropped: dict[str, DropReason] = {}

    def update(self, bar: tqdm | None = None, *, scheduled: int = 0) -> dict[str, DropReason]:
        """The dropped points now (a point once dropped stays dropped: its records only grow in flight).

        A newly dropped point's runs that will not happen are taken off `bar`'s total, so the bar ends at 100%:
        those of its unrecorded questions from question `scheduled` on (the earlier ones have been handed out and
        are counted when they finish or fail)."""
        if self.rule is not None:
            running = [point for point in self.points if point.label not in self.dropped]
            new = dropped_points(self.rule, running, self.questions, self.keys, self.store, self.interleave)
            self.dropped.update(new)
            if bar is not None and new and bar.total:
                later = self.questions[scheduled:]
                bar.total -= sum(self.keys[(label, q.id)] not in self.store for label in new for q in later)
                bar.refresh()
        return self.dropped


def run_points(
    executor: Executor,
    points: Sequence[MethodPoint],
    questions: Sequence[Question],
    store: RecordStore,
    *,
    interleave: int = 4,
    progress: bool = True,
    failures: dict[str, str] | None = None,
    drop: DropRule | None = None,
    dropped: dict[str, DropReason] | None = None,
) -> list[QuestionRecord]:
    """Every (point, question) record, measuring only those missing from `store`; returns them point-major.

    A question the executor fails on (a `LiteStageError`) is skipped for every point, named in a warning and, with
    `failures`, reported there by id; the run goes on with the other questions. With `drop`, a point clearly worse
    than the full model (or clearly slower than the product point) is not run in later rounds (`pruning.py`); with `dropped`, those points are reported there
    with the comparison that dropped them. A dropped point's records cover the questions it ran on.

    Raises `InvalidInputError` for an empty question or point list, duplicate question ids or point labels,
    `interleave` < 1, or `drop` without the points it compares with.
    """
    check_run(points, questions, interleave, drop)
    identity = executor.identity
    failed: dict[str, str] = {}
    keys = {(p.label, q.id): record_key(p.key(), identity, q) for p in points for q in questions}
    todo = sum(1 for key in keys.values() if key not in store)
    pruner = Pruner(drop, points, questions, keys, store, interleave)
    with tqdm(total=todo, desc="benchmark", unit="run", disable=not progress or todo == 0) as bar:
        for round_index, start in enumerate(range(0, len(questions), interleave)):
            batch = list(questions[start : start + interleave])
            gone = pruner.update(bar, scheduled=start)
            for point, missing in round_work(points, keys, store, round_index, batch, gone):
                bar.set_postfix_str(point.label)
                done = run_unless_failed(executor, point, missing, failed)
                store.add(to_record(point, identity, q, o) for q, o in done)
                bar.update(len(missing))
    if failures is not None:
        failures.update(failed)
    if dropped is not None:
        dropped.update(pruner.dropped)  # no check after the last round: a point that finished was not dropped
    found = (store.get(keys[(p.label, q.id)]) for p in points for q in questions if q.id not in failed)
    return [record for record in found if record is not None]


def run_unless_failed(
    executor: Executor, point: MethodPoint, questions: Sequence[Question], failed: dict[str, str]
) -> list[tuple[Question, Outcome]]:
    """Run `point` on those of `questions` not already in `failed` (failures are added to it); the pairs that ran.

    One round's loop body, shared by the single-process loop and the workers of a distributed run, so both skip a
    failing question the same way."""
    missing = [q for q in questions if q.id not in failed]
    return run_each_failure_apart(executor, point, missing, failed) if missing else []


def run_each_failure_apart(
    executor: Executor, point: MethodPoint, questions: list[Question], failed: dict[str, str]
) -> list[tuple[Question, Outcome]]:
    """Run `point` on `questions`; if the batch fails, run them one by one, so one bad question fails only itself.

    A question that fails is named in a warning and added to `failed`: it is left out of every other point too, so
    all methods are still compared on the same questions."""
    try:
        return list(zip(questions, _checked_run(executor, point, questions), strict=True))
    except LiteStageError as error:
        if len(questions) == 1:
            failed[questions[0].id] = str(error)
            warnings.warn(f"question {questions[0].id} skipped: {point.label} failed on it: {error}", stacklevel=3)
            return []
    done: list[tuple[Question, Outcome]] = []
    for question in questions:
        done.extend(run_each_failure_apart(executor, point, [question], failed))
    return done


def _checked_run(executor: Executor, point: MethodPoint, questions: list[Question]) -> list[Outcome]:
    outcomes = executor.run(point, questions)
    if len(outcomes) != len(questions):
        raise RuntimeError(f"executor returned {len(outcomes)} outcomes for {len(questions)} questions ({point.label})")
    return outcomes
