"""Searches and benchmarks spread over Ray workers, on one machine or a cluster (`pip install "litestage-chain[ray]"`).

Nothing here imports Ray at module import time: the single-process paths (`litestage bench` and `litestage profile`
without `--workers` / `--ray-address`) never load it. Modules:

* `runtime`: start a local Ray runtime or join a cluster, and shut down what was started.
* `worker`: the worker process, holding one loaded model and running chain evaluations on it.
* `pool`: the workers of a run and the task farm that re-queues the work of a lost worker.
* `bench`: the benchmark loop over workers (each runs every method on its question batches).
* `search`: an evaluator that splits each search evaluation over the workers.

The driver (the process the command runs in) is the only writer of records and search logs, so resuming after a
killed driver works exactly as in a single-process run.
"""
