"""The benchmark loop of `bench.runner.run_points`, spread over workers.

A task is one round: a batch of `interleave` questions and every method point missing records on it, in the
round's balanced order, exactly as the single-process loop runs it. The whole round runs on one worker, so every
speedup pairs a method's seconds with the full model's seconds measured by the same process on the same questions
minutes apart at most, and stage outputs shared between points are reused as in one process. Rounds are dealt to
whichever worker is free; the driver writes each finished round's records (with the worker and host that
measured them) before handing out more, so a killed driver resumes from the records file and a lost worker's
round is simply run again elsewhere (nothing of it was recorded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.pruning import DropReason, DropRule
from litestage_chain.bench.records import QuestionRecord, RecordStore, record_key
from litestage_chain.bench.runner import Pruner, check_run, records_of, round_work
from litestage_chain.cluster.pool import WorkerPool
from litestage_chain.cluster.worker import RoundResult, WorkerInfo
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
    failures: dict[str, str] | None = None,
    drop: DropRule | None = None,
    dropped: dict[str, DropReason] | None = None,
) -> list[QuestionRecord]:
    """Every (point, question) record, measuring only those missing from `store`; returns them point-major.

    `settings` are the `ChainExecutor` keyword arguments every worker builds its executor from; `identity` is the
    driver's executor identity, which every worker's must equal. `on_round` is called after each recorded round.
    As in `bench.runner.run_points`, a question a point fails on is skipped by every point of its round, named in a
    warning and, with `failures`, reported there; it is left out of the returned records. `drop` and `dropped` are
    as there too: the rule is applied as each round is handed out, to the records written so far. Rounds still
    running elsewhere may record a few more questions of a point that has just been dropped; if those pull its
    interval back under the margin, the report and a resumed run (which replay the records) count it as running.
    """
    check_run(points, questions, interleave, drop)
    settings = dict(settings)
    pool.check_identity("bench", settings, identity)
    keys = {(p.label, q.id): record_key(p.key(), identity, q) for p in points for q in questions}
    rounds: list[Round] = []
    for round_index, start in enumerate(range(0, len(questions), interleave)):
        work = round_work(points, keys, store, round_index, questions[start : start + interleave])
        if work:
            rounds.append(work)
    todo = sum(len(missing) for work in rounds for _, missing in work)
    failed: dict[str, str] = {}
    pruner = Pruner(drop, points, questions, keys, store, interleave)
    position = {q.id: index for index, q in enumerate(questions)}

    with tqdm(total=todo, desc=f"benchmark ({len(pool.alive)} workers)", unit="run",
              disable=not progress or todo == 0) as bar:

        def record(work: Round, result: RoundResult, info: WorkerInfo) -> None:
            for (point, missing), done in zip(work, result.done, strict=True):
                by_id = {q.id: q for q in missing}
                ran = [by_id[qid] for qid, _ in done]
                store.add(records_of(point, identity, ran, [o for _, o in done], worker=f"{info.name}/{info.pid}",
                                     host=info.host))
                bar.update(len(missing))
            for qid, reason in result.failed.items():
                warnings.warn(f"question {qid} skipped: {reason}", stacklevel=2)
            failed.update(result.failed)
            if on_round is not None:
                on_round(info)

        def dispatch(actor: Any, work: Round) -> Any:
            first = min((position[q.id] for _, missing in work for q in missing), default=len(questions))
            gone = pruner.update(bar, scheduled=first)
            work[:] = [(point, missing) for point, missing in work if point.label not in gone]  # `record` zips it
            return actor.run_round.remote(settings, work)

        pool.farm(rounds, dispatch, record)
    if failures is not None:
        failures.update(failed)
    if dropped is not None:
        dropped.update(pruner.dropped)  # no check after the last round: a point that finished was not dropped
    found = (store.get(keys[(p.label, q.id)]) for p in points for q in questions if q.id not in failed)
    return [record for record in found if record is not None]
