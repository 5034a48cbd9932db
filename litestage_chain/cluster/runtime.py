"""Start a local Ray runtime, or join an existing cluster, for the duration of a run.

Why a context manager: a run that started its own runtime must shut it down (worker processes otherwise stay
behind), while a run that joined a cluster, or was handed an already initialised Ray, must leave it running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.errors import LiteStageError

#: Environment variables a worker needs to find what the driver uses (converted weights, compiled kernels, data).
FORWARDED_ENV = ("LITESTAGE_CACHE", "LITESTAGE_DATA_DIR", "OMP_NUM_THREADS")


class ClusterError(LiteStageError):
    """Ray is missing, cannot start or join a cluster, or every worker of a run was lost."""


class ClusterOptions(BaseModel):
    """How a run is spread: `workers` processes (default: as many as the cluster's CPUs allow at `threads` each),
    each with `threads` torch threads, on a local runtime or the cluster at `address`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int | None = Field(None, ge=1, description="worker processes, each loading the model once")
    address: str | None = Field(None, min_length=1, description="an existing Ray cluster to join, e.g. 'auto'")
    threads: int = Field(1, ge=1, description="torch threads (and CPUs reserved) per worker")


def import_ray() -> ModuleType:
    """The `ray` module, or a `ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ClusterError(
            "--workers / --ray-address need Ray, which is not installed: pip install \"litestage-chain[ray]\""
        ) from error
    return ray


@contextmanager
def ray_runtime(options: ClusterOptions) -> Iterator[ModuleType]:
    """Yield `ray`, initialised for `options`; shut it down afterwards if this call started it.

    A local runtime gets exactly `workers * threads` CPUs, so Ray never schedules more workers than asked for.
    The variables in `FORWARDED_ENV` are passed to the workers (a cluster's nodes do not inherit the driver's
    environment).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    env["OMP_NUM_THREADS"] = str(options.threads)
    settings: dict[str, object] = dict(
        runtime_env={"env_vars": env}, logging_level=logging.WARNING, log_to_driver=True,
    )
    if options.address is None:
        settings.update(num_cpus=(options.workers or 1) * options.threads, include_dashboard=False)
    try:
        # "local" starts a runtime of our own even when another Ray cluster runs on this machine (address=None would
        # join it, and refuse our CPU count).
        ray.init(address=options.address or "local", **settings)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"join the Ray cluster at {options.address!r}" if options.address else "start a local Ray runtime"
        raise ClusterError(f"could not {where}: {error}") from error
    try:
        yield ray
    finally:
        ray.shutdown()
