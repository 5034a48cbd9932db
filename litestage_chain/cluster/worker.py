"""One worker process: loads the model once, then runs benchmark rounds and search evaluations on it.

The class is plain Python; `pool.py` turns it into a Ray actor, so this module imports without Ray (and can be
tested in-process). A worker keeps one executor or evaluator per settings, with its stage-output cache: work on the
same questions sent to the same worker reuses unchanged stages exactly as a single process would.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.bench.executor import ChainExecutor
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import Outcome
from litestage_chain.bench.runner import run_unless_failed
from litestage_chain.data.types import Question
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import load_model
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.store import EvalResult


class WorkerSpec(BaseModel):
    """What every worker loads: the model source and weight format, and its torch thread count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="a model source `load_model` resolves on every node")
    weights: str = "float32"
    threads: int = Field(1, ge=1)


class WorkerInfo(BaseModel):
    """Who a worker is: its name in the run, host, process id and Ray node."""

    model_config = ConfigDict(frozen=True)

    name: str
    host: str
    pid: int
    node: str = ""


class RoundResult(BaseModel):
    """What a worker measured in one round: per work item the (question id, outcome) pairs that ran, and the
    questions that failed, with the error."""

    done: list[list[tuple[str, Outcome]]]
    failed: dict[str, str] = {}


def settings_key(kind: str, settings: Mapping[str, Any]) -> str:
    return kind + ":" + json.dumps(settings, sort_keys=True, default=repr)


class ModelWorker:
    """Holds one loaded model; builds `ChainExecutor`s (benchmarks) and `ChainEvaluator`s (searches) on demand."""

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        import torch

        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.model = load_model(spec.model, weights=spec.weights)
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        except ImportError:
            pass
        self.info = WorkerInfo(name=name, host=socket.gethostname(), pid=os.getpid(), node=node)
        self._runners: dict[str, Any] = {}

    def describe(self) -> WorkerInfo:
        return self.info

    def _executor(self, settings: Mapping[str, Any]) -> Any:
        key = settings_key("bench", settings)
        if key not in self._runners:
            self._runners[key] = ChainExecutor(self.model, **settings)
        return self._runners[key]

    def _evaluator(self, settings: Mapping[str, Any]) -> Any:
        key = settings_key("search", settings)
        if key not in self._runners:
            self._runners[key] = ChainEvaluator(self.model, **settings)
        return self._runners[key]

    def identity(self, kind: str, settings: Mapping[str, Any]) -> str:
        """The identity of the executor (`kind` "bench") or evaluator ("search") these settings build here: the
        driver checks it equals its own, so every node measures the same weights, prompts and budgets."""
        runner = self._executor(settings) if kind == "bench" else self._evaluator(settings)
        return str(runner.identity)

    def run_round(
        self, settings: Mapping[str, Any], work: Sequence[tuple[MethodPoint, Sequence[Question]]]
    ) -> RoundResult:
        """Run each (point, questions) in the order given (the driver's balanced round order).

        A question a point fails on (a `LiteStageError`) is left out of the round's later points, as in one process;
        the driver reports it and records the rest."""
        executor = self._executor(settings)
        failed: dict[str, str] = {}
        with warnings.catch_warnings():  # the driver warns of each skipped question once, not every worker too
            warnings.filterwarnings("ignore", message="question .* skipped")
            done = [[(q.id, o) for q, o in run_unless_failed(executor, point, questions, failed)]
                    for point, questions in work]
        return RoundResult(done=done, failed=failed)

    def evaluate(
        self,
        settings: Mapping[str, Any],
        plans: Mapping[str, SkipPlan],
        questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        return self._evaluator(settings).evaluate(dict(plans), list(questions), early_exit, max_tokens)
