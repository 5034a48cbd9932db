"""The benchmark loop of `bench.runner.run_points`, spread over workers.

A task is one round: a batch of `interleave` questions and every method point missing records on it, in the
round's rotated order, exactly as the single-process loop runs it. The whole round runs on one worker, so every
speedup pairs a method's seconds with the full model's seconds measured by the same process on the same questions
minutes apart at most, and stage outputs shared between points are reused as in one process. Rounds are dealt to
whichever worker is free; the driver writes each finished round's records (with the worker and host that
measured them) before handing out more, so a killed driver resumes from the records file and a lost worker's
round is simply run again elsewhere (nothing of it was recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import Outcome, QuestionRecord, RecordStore, record_key
from litestage_chain.bench.runner import check_run, records_of, round_work
from litestage_chain.cluster.pool import WorkerPool
from litestage_chain.cluster.worker import WorkerInfo
from litestage_chain.data.types import Question

Round = list[tuple[MethodPoint, list[Question]]]


def run_points_on_workers(
    pool: WorkerPool,
    settings: Mapping[str, Any],
    identity: str,
    points: Sequence[MethodPoint],
    questions: Sequence[Question],
    store: RecordStore,
    *,
    interleave: int = 4,
    progress: bool = True,
    on_round: Callable[[WorkerInfo], None] | None = None,
) -> list[QuestionRecord]:
    """Every (point, question) record, measuring only those missing from `store`; returns them point-major.

    `settings` are the `ChainExecutor` keyword arguments every worker builds its executor from; `identity` is the
    driver's executor identity, which every worker's must equal. `on_round` is called after each recorded round.
    """
    check_run(points, questions, interleave)
    settings = dict(settings)
    pool.check_identity("bench", settings, identity)
    keys = {(p.label, q.id): record_key(p.key(), identity, q) for p in points for q in questions}
    rounds: list[Round] = []
    for round_index, start in enumerate(range(0, len(questions), interleave)):
        work = round_work(points, keys, store, round_index, questions[start : start + interleave])
        if work:
            rounds.append(work)
    todo = sum(len(missing) for work in rounds for _, missing in work)

    with tqdm(total=todo, desc=f"benchmark ({len(pool.alive)} workers)", unit="run",
              disable=not progress or todo == 0) as bar:

        def record(work: Round, outcomes: list[list[Outcome]], info: WorkerInfo) -> None:
            measured = [records_of(point, identity, missing, found, worker=f"{info.name}/{info.pid}", host=info.host)
                        for (point, missing), found in zip(work, outcomes, strict=True)]
            for records in measured:
                store.add(records)
                bar.update(len(records))
            if on_round is not None:
                on_round(info)

        pool.farm(rounds, lambda actor, work: actor.run_round.remote(settings, work), record)
    return [store.get(keys[(p.label, q.id)]) for p in points for q in questions]  # type: ignore[misc]
