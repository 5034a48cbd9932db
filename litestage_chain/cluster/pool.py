"""The workers of a run, and the task farm that hands them work and re-queues the work of a lost worker.

Why a farm of our own instead of `ray.util.ActorPool`: a lost worker's task must go back to the queue (and to a
surviving worker) instead of failing the run, and search shards must stay with the worker that holds their
cached stage outputs while that worker lives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

from litestage_chain.cluster.runtime import ClusterError, ClusterOptions, ray_runtime
from litestage_chain.cluster.worker import ModelWorker, WorkerInfo, WorkerSpec
from litestage_chain.errors import LiteStageError

T = TypeVar("T")


class WorkerPool:
    """`count` `ModelWorker` actors, one CPU (`spec.threads` CPUs) each, spread over the cluster's nodes."""

    def __init__(self, ray: ModuleType, spec: WorkerSpec, count: int) -> None:
        if count < 1:
            raise ClusterError(f"a run needs at least one worker, got {count}")
        self.ray = ray
        self.spec = spec
        actor = ray.remote(ModelWorker)
        self.actors = [
            actor.options(num_cpus=spec.threads, scheduling_strategy="SPREAD", max_restarts=0).remote(spec, f"w{i}")
            for i in range(count)
        ]
        self.alive = set(range(count))
        try:
            self.infos: list[WorkerInfo] = ray.get([a.describe.remote() for a in self.actors])
        except ray.exceptions.RayError as error:
            self.close()
            raise ClusterError(f"a worker could not load {spec.model!r} ({spec.weights}): {_cause(error)}") from error

    def __len__(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        """End the workers (a joined cluster keeps running; a local runtime is shut down by `ray_runtime`)."""
        for actor in self.actors:
            self.ray.kill(actor)

    def check_identity(self, kind: str, settings: dict[str, Any], expected: str) -> None:
        """Every worker builds the same executor or evaluator as the driver (same weights, prompts, budgets)."""
        found = self.ray.get([self.actors[w].identity.remote(kind, settings) for w in sorted(self.alive)])
        for w, identity in zip(sorted(self.alive), found, strict=True):
            if identity != expected:
                info = self.infos[w]
                raise ClusterError(
                    f"worker {info.name} on {info.host} measures another set-up than the driver (model files, "
                    "prompts or package version differ on that node): its results would not compare"
                )

    def farm(
        self,
        tasks: Sequence[T],
        call: Callable[[Any, T], Any],
        on_result: Callable[[T, Any, WorkerInfo], None],
        affinity: Callable[[int], int] | None = None,
    ) -> None:
        """Run every task on some worker (`call(actor, task)` returns its object ref), one task per worker at a time,
        calling `on_result` in the driver as each finishes.

        With `affinity`, task i goes to worker `affinity(i) % len(self)` while that worker lives. A worker that dies
        is dropped and its task re-queued; a task that raises fails the run with its own error.
        """
        ray = self.ray
        queue = list(range(len(tasks)))
        running: dict[Any, tuple[int, int]] = {}

        def take(worker: int) -> int | None:
            for position, task in enumerate(queue):
                owner = affinity(task) % len(self.actors) if affinity is not None else None
                if owner is None or owner == worker or owner not in self.alive:
                    return queue.pop(position)
            return None

        def dispatch_idle() -> None:
            busy = {worker for worker, _ in running.values()}
            for worker in sorted(self.alive - busy):
                task = take(worker)
                if task is not None:
                    running[call(self.actors[worker], tasks[task])] = (worker, task)

        dispatch_idle()
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            worker, task = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                self.alive.discard(worker)
                queue.insert(0, task)
                info = self.infos[worker]
                warnings.warn(f"lost worker {info.name} on {info.host} ({_cause(error)}); its work is re-queued",
                              RuntimeWarning, stacklevel=2)
                if not self.alive:
                    raise ClusterError(f"every worker was lost; last: {_cause(error)}") from error
            except ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None)
                if isinstance(cause, LiteStageError):
                    raise cause from None
                raise ClusterError(f"a worker failed: {_cause(error)}") from error
            else:
                on_result(tasks[task], result, self.infos[worker])
            dispatch_idle()
        if queue:  # cannot happen: a queued task always has a live taker
            raise ClusterError(f"{len(queue)} task(s) were never run")


def _cause(error: BaseException) -> str:
    text = str(getattr(error, "cause", None) or error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


@contextmanager
def worker_pool(options: ClusterOptions, spec: WorkerSpec) -> Iterator[WorkerPool]:
    """Ray started or joined for `options`, with its workers; everything this call started is ended afterwards."""
    with ray_runtime(options) as ray:
        count = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // options.threads))
        pool = WorkerPool(ray, spec, count)
        try:
            yield pool
        finally:
            pool.close()
