"""Benchmarks and searches on Ray workers: identical greedy results to one process, resume, a lost worker, two nodes.

Each test starts (and shuts down) its own Ray runtime, or joins the module's simulated two-node cluster, with a tiny
2-layer Llama saved to disk so that workers can load it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tiny_models import save_tiny_long_context_llama

from litestage_chain import EarlyExitConfig, SkipPlan, load_model
from litestage_chain.bench.executor import ChainExecutor
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.pruning import DropRule
from litestage_chain.bench.records import RECORDS_FILE, Outcome, RecordStore
from litestage_chain.bench.runner import run_points, to_record
from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions, StageBudget
from litestage_chain.cli.main import build_parser
from litestage_chain.cluster.cli import cluster_options
from litestage_chain.data import search_questions
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.paired_decision import PairedComparison

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from litestage_chain.cluster.bench import run_points_on_workers  # noqa: E402
from litestage_chain.cluster.pool import worker_pool  # noqa: E402
from litestage_chain.cluster.runtime import ClusterError, ClusterOptions  # noqa: E402
from litestage_chain.cluster.search import DistributedEvaluator, shards  # noqa: E402
from litestage_chain.offline.store import EvalResult, merge_results  # noqa: E402
from litestage_chain.cluster.worker import WorkerSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_nodes():
    """A simulated two-node Ray cluster (one CPU each) on this machine; yields its address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


STAGES = ("recall", "analysis", "summary")


def question_rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"Which option is number {i}?", "answer": "AB"[i % 2],
             "choices": [{"label": "A", "text": "one"}, {"label": "B", "text": "two"}]} for i in range(n)]


@pytest.fixture()
def bench_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A tiny model folder, toy dev/train questions (also as csqa/train.jsonl, for searches) and a profile."""
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    model_dir = save_tiny_long_context_llama(tmp_path / "model")
    for folder in ("toy", "csqa"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for split, prefix in (("dev", "d"), ("train", "t")):
            rows = "".join(json.dumps(r) + "\n" for r in question_rows(prefix, 4))
            (tmp_path / "data" / folder / f"{split}.jsonl").write_text(rows)
    profile = Profile(
        model=ModelIdentity(name="tiny", weights_sha256=load_model(str(model_dir)).weights_sha256),
        stages={s: StageBudget(plan=SkipPlan(attention=[1], mlp=[0])) for s in STAGES},
        epsilon=0.1, metric="accuracy", questions=SearchedQuestions(benchmark="toy", split="train", size=3),
        importance=[(1, "attention"), (0, "mlp"), (0, "attention")], stage_order=list(STAGES),
        full_score=0.5, full_latency_seconds=1.0,
    )
    return {"model": model_dir, "data": tmp_path / "data" / "toy" / "dev.jsonl", "root": tmp_path / "data",
            "profile": profile.save(tmp_path / "profile.json"), "out": tmp_path / "out"}


def _bench(argv: list[str]) -> str:
    """What `litestage bench ...` prints (the command's own parser)."""
    args, out = build_parser().parse_args(argv), io.StringIO()
    assert args.handler(args, out) == 0
    return out.getvalue()

SETTINGS = dict(max_tokens={"recall": 3, "analysis": 3, "summary": 2}, num_shots=0, fallback=False)
BENCH = ["--limit", "3", "--shots", "0", "--max-tokens", "recall=3,analysis=3,summary=2", "--interleave", "1",
         "--methods", "full", "litestage", "uniform", "unified", "--sweep", "uniform=1", "--sweep", "unified=1",
         "--no-progress", "--no-plots", "--exit-min-tokens", "1"]


def answers(path: Path) -> dict[tuple[str, str], tuple[str | None, dict[str, int]]]:
    return {(r.point, r.question_id): (r.answer, {s: m.tokens for s, m in r.stages.items()})
            for r in RecordStore(path)}


def keys_in_file(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_single_process_runs_never_import_ray(bench_setup: dict[str, Path]) -> None:
    argv = ["bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
            "--profile", str(bench_setup["profile"]), "--out", str(bench_setup["out"]), "--limit", "1", "--shots", "0",
            "--max-tokens", "recall=2,analysis=2,summary=1", "--methods", "full", "uniform", "--sweep", "uniform=1",
            "--no-progress", "--no-plots"]
    script = ("import sys\nfrom litestage_chain.cli import main\n"
              f"assert main({argv!r}) == 0\nprint('ray imported:', 'ray' in sys.modules)\n")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ray imported: False" in done.stdout


def test_bench_on_two_local_workers_matches_one_process_and_resumes(bench_setup: dict[str, Path]) -> None:
    base = ["bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
            "--profile", str(bench_setup["profile"]), *BENCH]
    single = bench_setup["out"]
    _bench([*base, "--out", str(single)])
    reference = answers(single / RECORDS_FILE)
    assert len(reference) == 4 * 3
    # a driver killed after 5 records: the distributed run resumes from them (same identity as one process)
    spread = single.parent / "spread"
    spread.mkdir()
    kept = (single / RECORDS_FILE).read_text().splitlines(keepends=True)[:5]
    (spread / RECORDS_FILE).write_text("".join(kept))
    text = _bench([*base, "--out", str(spread), "--workers", "2", "--threads", "1"])
    assert "5 of 12 runs already recorded" in text and "2 workers: w0" in text
    lines = (spread / RECORDS_FILE).read_text().splitlines(keepends=True)
    assert lines[:5] == kept and len(lines) == 12, "the 5 kept records are not measured again; nothing twice"
    assert len(set(keys_in_file(spread / RECORDS_FILE))) == 12
    assert answers(spread / RECORDS_FILE) == reference, "greedy answers and tokens identical to one process"
    measured = [r for r in RecordStore(spread / RECORDS_FILE)][5:]
    assert all(r.worker and r.host for r in measured) and len({r.worker for r in measured}) == 2
    for question in {r.question_id for r in measured}:  # every method of a question measured by one worker
        assert len({r.worker for r in measured if r.question_id == question}) == 1
    assert ray.is_initialized() is False, "the local runtime is shut down"
    results = json.loads((spread / "results.json").read_text())
    assert results["meta"]["workers"] == 2


def _points() -> list[MethodPoint]:
    def point(method: str, plan: SkipPlan, rule: EarlyExitConfig | None = None) -> MethodPoint:
        return MethodPoint(method=method, count=plan.num_skipped, plans={s: plan for s in STAGES},  # type: ignore[arg-type]
                           early_exit={s: rule for s in STAGES})

    return [point("full", SkipPlan()), point("uniform", SkipPlan(mlp=[1])),
            point("uniform-exit", SkipPlan(attention=[0]), EarlyExitConfig(window=1, threshold=0.9, min_tokens=1))]


def _questions(n: int) -> list[Question]:
    return [Question(id=f"q{i}", question=f"Which option is number {i}?", benchmark="t", answer="AB"[i % 2],
                     choices=[{"label": "A", "text": "one"}, {"label": "B", "text": "two"}]) for i in range(n)]


def test_a_lost_worker_is_replaced_and_nothing_is_recorded_twice(
    two_nodes: str, bench_setup: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(str(bench_setup["model"]))
    executor = ChainExecutor(model, **SETTINGS)
    questions, points = _questions(5), _points()
    local = RecordStore()
    run_points(executor, points, questions, local, interleave=1, progress=False)
    store = RecordStore(tmp_path / RECORDS_FILE)
    killed: list[int] = []
    spec = WorkerSpec(model=str(bench_setup["model"]))
    with worker_pool(ClusterOptions(address=two_nodes, workers=2), spec) as pool:
        def kill_the_other(info) -> None:  # after the first round, kill the worker that is still busy
            if not killed:
                other = next(i for i in pool.infos if i.name != info.name)
                os.kill(other.pid, signal.SIGKILL)
                killed.append(other.pid)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = run_points_on_workers(pool, SETTINGS, executor.identity, points, questions, store,
                                            interleave=1, progress=False, on_round=kill_the_other)
    assert killed and any("lost worker" in str(w.message) for w in caught)
    assert len(records) == 15 and len(keys_in_file(tmp_path / RECORDS_FILE)) == 15
    assert len(set(keys_in_file(tmp_path / RECORDS_FILE))) == 15, "the lost round was recorded once, by a survivor"
    assert {(r.point, r.question_id): r.answer for r in records} == {(r.point, r.question_id): r.answer for r in local}
    survivors = {r.worker for r in records[-3:]}
    assert all(str(killed[0]) not in (w or "") for w in survivors)


def test_a_question_that_fails_on_a_worker_is_skipped_as_in_one_process(
    bench_setup: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(str(bench_setup["model"]))
    executor = ChainExecutor(model, **SETTINGS)
    questions, points = _questions(4), _points()
    too_long = questions[1].model_copy(update={"question": "why " * 5000})  # beyond the 4096-token context
    questions[1] = too_long
    local_failures: dict[str, str] = {}
    with pytest.warns(UserWarning, match="question q1 skipped"):
        local = run_points(executor, points, questions, RecordStore(), interleave=2, progress=False,
                           failures=local_failures)
    failures: dict[str, str] = {}
    store = RecordStore(tmp_path / RECORDS_FILE)
    with worker_pool(ClusterOptions(workers=2), WorkerSpec(model=str(bench_setup["model"]))) as pool:
        with pytest.warns(UserWarning, match="question q1 skipped"):
            records = run_points_on_workers(pool, SETTINGS, executor.identity, points, questions, store,
                                            interleave=2, progress=False, failures=failures)
    assert set(failures) == set(local_failures) == {"q1"} and "context" in failures["q1"]
    assert {(r.point, r.question_id): r.answer for r in records} == {(r.point, r.question_id): r.answer for r in local}
    assert len(records) == 3 * 3 and len(keys_in_file(tmp_path / RECORDS_FILE)) == 9, "the others all recorded"


def test_workers_do_not_run_a_point_the_records_already_drop(bench_setup: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(str(bench_setup["model"]))
    executor = ChainExecutor(model, **SETTINGS)
    questions, points = _questions(22), _points()[:2]
    store = RecordStore(tmp_path / RECORDS_FILE)
    wrong = {"A": "B", "B": "A"}
    for point in points:  # 20 questions already recorded: the full model right, uniform always wrong
        answers = [q.answer if point.method == "full" else wrong[q.answer] for q in questions[:20]]
        store.add(to_record(point, executor.identity, q, Outcome(question_id=q.id, answer=a, stages={}, seconds=1.0))
                  for q, a in zip(questions[:20], answers, strict=True))
    dropped: dict[str, PairedComparison] = {}
    with worker_pool(ClusterOptions(workers=2), WorkerSpec(model=str(bench_setup["model"]))) as pool:
        records = run_points_on_workers(pool, SETTINGS, executor.identity, points, questions, store, interleave=1,
                                        progress=False, drop=DropRule(margin=0.05), dropped=dropped)
    ran = [r for r in RecordStore(tmp_path / RECORDS_FILE)][40:]
    assert sorted((r.point, r.question_id) for r in ran) == [("full", "q20"), ("full", "q21")], "uniform not run"
    assert set(dropped) == {points[1].label}
    assert dropped[points[1].label].lost == dropped[points[1].label].questions == 16, "the first round it held at"
    assert len(records) == 22 + 20


def test_search_on_a_simulated_two_node_cluster_measures_what_one_process_does(
    two_nodes: str, bench_setup: dict[str, Path], tmp_path: Path
) -> None:
    from litestage_chain.offline.pipeline import search_profile
    from litestage_chain.offline.search import SearchConfig
    from litestage_chain.offline.evaluator import ChainEvaluator

    model = load_model(str(bench_setup["model"]))
    questions = search_questions("csqa", 4, seed=0, data_dir=bench_setup["root"])
    settings = {**SETTINGS, "batch_size": 2}
    log = tmp_path / "search.jsonl"
    with worker_pool(ClusterOptions(address=two_nodes), WorkerSpec(model=str(bench_setup["model"]))) as pool:
        assert len(pool) == 2 and len({info.node for info in pool.infos}) == 2, "one worker per node"
        evaluator = DistributedEvaluator(ChainEvaluator(model, **settings), pool, settings)
        _, result, _ = search_profile(model, questions, config=SearchConfig(epsilon=1.0, max_skip=2),
                                      evaluator=evaluator, calibration_size=1, importance_cache_dir=tmp_path / "imp",
                                      store_path=log)
        with pytest.raises(InvalidInputError, match="no plan given"):  # a worker's error is the caller's error
            evaluator.evaluate({"recall": SkipPlan()}, questions.questions)
    assert not ray.is_initialized(), "the driver left the cluster"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == result.evaluations >= 5
    alone = ChainEvaluator(model, **settings)  # the plans the search evaluated, again in this process
    for line in lines:  # the driver wrote every line; each says who measured which questions
        by = line["measured_by"]
        assert len({part["worker"] for part in by}) == 2
        assert sorted(q for part in by for q in part["questions"]) == sorted(q.id for q in questions)
        plans = {stage: SkipPlan(**plan) for stage, plan in line["plans"].items()}
        here = alone.evaluate(plans, questions.questions)
        assert line["result"]["answers"] == here.answers, "greedy answers identical to one process"
        assert line["result"]["generated_tokens_per_stage"] == pytest.approx(here.generated_tokens_per_stage)
        assert line["result"]["accuracy"] == pytest.approx(here.accuracy)


def test_cost_aware_search_on_two_workers_chooses_what_one_process_does(
    bench_setup: dict[str, Path], tmp_path: Path
) -> None:
    """The chunk evaluations run on the workers; the per-plan costs are timed by the driver. With the costs of the
    single-process run reused (timings are noise), the distributed search evaluates the same candidates with the
    same greedy answers and chooses the same plans."""
    def search(folder: str, *extra: str) -> tuple[Profile, list[dict], str]:
        target = tmp_path / folder / "csqa.json"
        argv = ["profile", "search", "--search", "cost-aware", "--benchmark", "csqa", "--data", str(bench_setup["root"]),
                "--size", "4", "--model", str(bench_setup["model"]), "--out", str(target), "--counts", "1,2",
                "--exit-grid", "none;4,0.5,2", "--epsilon", "1.0", "--tolerance", "100", "--chunk-size", "2",
                "--calibration-size", "1", "--cost-rounds", "1", "--metric", "agreement", "--batch-size", "1",
                "--max-tokens", "recall=3,analysis=3,summary=2", "--shots", "0", "--no-progress", "--threads", "1",
                "--check-rounds", "0", *extra]
        args, out = build_parser().parse_args(argv), io.StringIO()
        assert args.handler(args, out) == 0
        log = target.with_name("csqa.json.search.jsonl")
        return Profile.load(target), [json.loads(line) for line in log.read_text().splitlines()], out.getvalue()

    alone, alone_log, _ = search("one")
    (tmp_path / "two").mkdir()
    costs = "csqa.json.costs.jsonl"
    (tmp_path / "two" / costs).write_bytes((tmp_path / "one" / costs).read_bytes())
    spread, spread_log, text = search("two", "--workers", "2")
    assert "2 workers: w0" in text and "chosen:" in text
    assert {s: spread.plan_for(s) for s in STAGES} == {s: alone.plan_for(s) for s in STAGES}
    assert {s: spread.early_exit_for(s) for s in STAGES} == {s: alone.early_exit_for(s) for s in STAGES}
    assert [line["result"]["answers"] for line in spread_log] == [line["result"]["answers"] for line in alone_log]
    measured = [line for line in spread_log if "same_as" not in line]  # the rest: exit rules that cannot fire
    assert measured and all(len({part["worker"] for part in line["measured_by"]}) == 2 for line in measured), (
        "each 2-question chunk is split over both workers, one decoding batch each")
    assert all("measured_by" not in line for line in spread_log if "same_as" in line), "a reused chunk ran nowhere"
    assert not ray.is_initialized()


def test_a_model_a_worker_cannot_load_is_a_clear_error(two_nodes: str, tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="a worker could not load .*no-model"):
        with worker_pool(ClusterOptions(address=two_nodes, workers=1), WorkerSpec(model=str(tmp_path / "no-model"))):
            pass
    assert not ray.is_initialized()


def test_shards_follow_the_decoding_batches_and_merge_back() -> None:
    questions = _questions(7)
    parts = shards(questions, 2, 2)
    assert [[q.id for q in part] for part in parts] == [["q0", "q1", "q2", "q3"], ["q4", "q5", "q6"]]
    assert shards(questions, 5, 4) == [questions[:4], questions[4:]], "never more shards than batches"
    merged = merge_results([
        EvalResult(accuracy=0.5, mean_latency_seconds=1.0, stage_latency_seconds={"recall": 1.0},
                   generated_tokens_per_stage={"recall": 2.0}, answers={q.id: "A" for q in parts[0]}),
        EvalResult(accuracy=1.0, mean_latency_seconds=8.0, stage_latency_seconds={"recall": 8.0},
                   generated_tokens_per_stage={"recall": 9.0}, answers={q.id: "B" for q in parts[1]}),
    ])
    assert merged.accuracy == pytest.approx(5 / 7) and merged.mean_latency_seconds == pytest.approx(4.0)
    assert merged.generated_tokens_per_stage["recall"] == pytest.approx(5.0) and len(merged.answers) == 7


def test_bad_cluster_options_are_clear_errors() -> None:
    assert cluster_options(argparse.Namespace(workers=None, ray_address=None), 1) is None
    with pytest.raises(InvalidInputError, match="--workers must be >= 1"):
        cluster_options(argparse.Namespace(workers=0, ray_address=None), 1)
    with pytest.raises(InvalidInputError, match="--ray-address is empty"):
        cluster_options(argparse.Namespace(workers=None, ray_address=" "), 1)
    assert cluster_options(argparse.Namespace(workers=3, ray_address=None), 0).threads == 1


def test_workers_start_their_own_runtime_beside_another_cluster(bench_setup: dict[str, Path], two_nodes: str) -> None:
    """Another Ray cluster running on the machine (here the simulated one) is not joined without --ray-address:
    joining it would also refuse the local runtime's CPU count."""
    base = ["bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
            "--profile", str(bench_setup["profile"]), *BENCH, "--limit", "1"]
    text = _bench([*base, "--out", str(bench_setup["out"]), "--workers", "2", "--threads", "1"])
    assert "2 workers: w0" in text and ray.is_initialized() is False
