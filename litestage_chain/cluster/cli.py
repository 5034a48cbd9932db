"""The `--workers` / `--ray-address` options shared by `litestage bench` and `litestage profile`.

Nothing here imports Ray until a run asks for workers (`cluster_options`, `maybe_pool`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from litestage_chain.cluster.pool import WorkerPool, worker_pool
from litestage_chain.cluster.runtime import ClusterOptions, import_ray
from litestage_chain.cluster.worker import WorkerSpec
from litestage_chain.errors import InvalidInputError


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--workers N` and `--ray-address ADDRESS` to a subcommand's parser."""
    group = parser.add_argument_group("distributed runs (pip install \"litestage-chain[ray]\")")
    group.add_argument(
        "--workers", type=int, metavar="N",
        help="run on N Ray worker processes, each loading the model once with --threads threads (a local Ray "
        "runtime unless --ray-address is given); the results and logs are the same as one process writes",
    )
    group.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="join this Ray cluster (e.g. 'auto' on a cluster node, or 'ray://head:10001') instead of starting a "
        "local runtime; without --workers, one worker per --threads CPUs of the cluster",
    )


def cluster_options(args: argparse.Namespace, threads: int | None) -> ClusterOptions | None:
    """A `ClusterOptions` when `--workers` or `--ray-address` was given, else None (and Ray is never imported)."""
    workers, address = getattr(args, "workers", None), getattr(args, "ray_address", None)
    if workers is None and address is None:
        return None
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers must be >= 1, got {workers}")
    if address is not None and not address.strip():
        raise InvalidInputError("--ray-address is empty")
    import_ray()  # not installed: say so now, not after the model has loaded
    return ClusterOptions(workers=workers, address=address, threads=max(1, threads or 1))


@contextmanager
def maybe_pool(options: ClusterOptions | None, model: str, weights: str) -> Iterator[WorkerPool | None]:
    """The run's `WorkerPool` when `options` ask for one, else None (nothing of Ray is imported)."""
    if options is None:
        yield None
        return
    with worker_pool(options, WorkerSpec(model=model, weights=weights, threads=options.threads)) as pool:
        yield pool


def describe_pool(pool: WorkerPool) -> str:
    """`2 workers: w0 (host, pid 123), ...`: printed before a distributed run starts."""
    members = ", ".join(f"{info.name} ({info.host}, pid {info.pid})" for info in pool.infos)
    return f"{len(pool)} workers: {members}"
