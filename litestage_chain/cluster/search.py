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
from litestage_chain.offline.store import EvalResult, merge_results
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan


def shards(questions: Sequence[Question], parts: int, batch_size: int) -> list[list[Question]]:
    """At most `parts` contiguous, near-equal shards, each a whole number of `batch_size` batches (bar the last)."""
    batches = [list(questions[i : i + batch_size]) for i in range(0, len(questions), batch_size)]
    per = -(-len(batches) // max(1, parts))
    return [sum(batches[i : i + per], []) for i in range(0, len(batches), per)]


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

    def evaluate(
        self,
        plans: Mapping[str, SkipPlan],
        questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        """`ChainEvaluator.evaluate`, each shard on its worker; the shards' results merged in question order."""
        if not questions:
            raise InvalidInputError("no questions to evaluate")
        parts = shards(questions, len(self.pool), self.local.batch_size)
        found: dict[int, tuple[EvalResult, WorkerInfo]] = {}
        plans = dict(plans)
        rules = dict(early_exit) if early_exit is not None else None
        caps = dict(max_tokens) if max_tokens is not None else None

        def done(index: int, result: EvalResult, info: WorkerInfo) -> None:
            found[index] = (result, info)

        self.pool.farm(
            list(range(len(parts))),
            lambda actor, index: actor.evaluate.remote(self.settings, plans, parts[index], rules, caps),
            done,
            affinity=lambda index: index,
        )
        self.provenance = {"measured_by": [
            {"worker": f"{found[i][1].name}/{found[i][1].pid}", "host": found[i][1].host,
             "questions": [q.id for q in parts[i]]} for i in range(len(parts))
        ]}
        return merge_results([found[i][0] for i in range(len(parts))])
