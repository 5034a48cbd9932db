"""An evaluator that splits every search evaluation over the workers, by fixed question shards.

The questions are cut into one shard per worker, each a whole number of decoding batches starting where the
single-process evaluator's batches start, so every question is decoded in the same batch as in one process and
greedy answers are identical. Shard i always goes to worker i while it lives: the worker's stage-output cache
then serves the stages a candidate does not change, as in one process, and each candidate is timed on the same
questions by the same worker as every other. A lost worker's shard moves to a surviving one.

Everything else (calibration prompts, importance, the search's bookkeeping) runs in the driver on the wrapped
local `ChainEvaluator`, and the driver alone writes the search log: `provenance` says which worker and host
measured which questions of the last evaluation, for the log line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from litestage_chain.cluster.pool import WorkerPool
from litestage_chain.cluster.worker import WorkerInfo
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.store import EvalResult
from litestage_chain.engine.skip_plan import SkipPlan


def shards(questions: Sequence[Question], parts: int, batch_size: int) -> list[list[Question]]:
    """At most `parts` contiguous, near-equal shards, each a whole number of `batch_size` batches (bar the last)."""
    batches = [list(questions[i : i + batch_size]) for i in range(0, len(questions), batch_size)]
    per = -(-len(batches) // max(1, parts))
    return [sum(batches[i : i + per], []) for i in range(0, len(batches), per)]


def merge_results(parts: Sequence[tuple[Sequence[Question], EvalResult]]) -> EvalResult:
    """One evaluation's result from its shards' results: per-question means weighted by shard size."""
    sizes = [len(questions) for questions, _ in parts]
    total = sum(sizes)

    def mean(values: Sequence[float]) -> float:
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / total

    results = [result for _, result in parts]
    accuracies = [r.accuracy for r in results]
    return EvalResult(
        accuracy=None if any(a is None for a in accuracies) else mean([a for a in accuracies if a is not None]),
        mean_latency_seconds=mean([r.mean_latency_seconds for r in results]),
        stage_latency_seconds={s: mean([r.stage_latency_seconds[s] for r in results])
                               for s in results[0].stage_latency_seconds},
        generated_tokens_per_stage={s: mean([r.generated_tokens_per_stage[s] for r in results])
                                    for s in results[0].generated_tokens_per_stage},
        answers={qid: answer for r in results for qid, answer in r.answers.items()},
    )


class DistributedEvaluator:
    """A `ChainEvaluator` whose `evaluate` runs on the pool's workers (the rest runs locally on `local`).

    `settings` are the keyword arguments `local` was built with; every worker builds its evaluator from them, and
    its identity must equal `local.identity` (so a search log is shared with single-process runs of the same
    settings: a search can be resumed with or without workers).
    """

    def __init__(self, local: ChainEvaluator, pool: WorkerPool, settings: Mapping[str, Any]) -> None:
        self.local = local
        self.pool = pool
        self.settings = dict(settings)
        pool.check_identity("search", self.settings, local.identity)
        self.provenance: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:  # model, identity, reuse_outputs, early_exit_for, run_stages, ...
        return getattr(self.local, name)

    def evaluate(self, plans: Mapping[str, SkipPlan], questions: Sequence[Question]) -> EvalResult:
        if not questions:
            raise InvalidInputError("no questions to evaluate")
        parts = shards(questions, len(self.pool), self.local.batch_size)
        found: dict[int, tuple[EvalResult, WorkerInfo]] = {}
        plans = dict(plans)

        def done(index: int, result: EvalResult, info: WorkerInfo) -> None:
            found[index] = (result, info)

        self.pool.farm(
            list(range(len(parts))),
            lambda actor, index: actor.evaluate.remote(self.settings, plans, parts[index]),
            done,
            affinity=lambda index: index,
        )
        self.provenance = {"measured_by": [
            {"worker": f"{found[i][1].name}/{found[i][1].pid}", "host": found[i][1].host,
             "questions": [q.id for q in parts[i]]} for i in range(len(parts))
        ]}
        return merge_results([(parts[i], found[i][0]) for i in range(len(parts))])
