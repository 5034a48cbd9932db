"""The real executor and the `litestage bench` command end to end, on a tiny random Llama saved to disk."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch
from tiny_models import _common, byte_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from litestage_chain import (
    EarlyExitConfig,
    SkipPlan,
    from_pretrained_objects,
    load_model,
)
from litestage_chain.bench.executor import ChainExecutor
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import RECORDS_FILE, RecordStore
from litestage_chain.bench.report import RESULTS_JSON, RESULTS_MD
from litestage_chain.budgets.profile import (
    ModelIdentity,
    Profile,
    SearchedQuestions,
    StageBudget,
)
from litestage_chain.cli.bench import add_bench_subcommand
from litestage_chain.data.types import Question

pytestmark = pytest.mark.usefixtures("one_torch_thread")


STAGES = ("recall", "analysis", "summary")
TOKENS = {"recall": 4, "analysis": 4, "summary": 3}


def tiny_llama() -> tuple[LlamaForCausalLM, object]:
    tokenizer = byte_tokenizer()
    torch.manual_seed(5)
    config = LlamaConfig(**{**_common(tokenizer, 4), "max_position_embeddings": 4096})
    return LlamaForCausalLM(config).eval(), tokenizer


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"Which option is number {i}?", "answer": "AB"[i % 2],
             "choices": [{"label": "A", "text": "one"}, {"label": "B", "text": "two"}]} for i in range(n)]


def point(method: str, plan: SkipPlan, rule: EarlyExitConfig | None = None) -> MethodPoint:
    return MethodPoint(method=method, count=plan.num_skipped, plans={s: plan for s in STAGES},  # type: ignore[arg-type]
                       early_exit={s: rule for s in STAGES})


def test_executor_measures_every_stage_and_reuses_identical_stage_runs() -> None:
    model, tokenizer = tiny_llama()
    lm = from_pretrained_objects(model, tokenizer, name="tiny-bench", weights_sha256="7c" * 32)
    executor = ChainExecutor(lm, max_tokens=TOKENS, num_shots=0, fallback=False)
    questions = [Question.model_validate({**row, "benchmark": "t"}) for row in rows("q", 2)]
    full = executor.run(point("full", SkipPlan()), questions)
    assert [o.question_id for o in full] == ["q0", "q1"]
    for outcome in full:
        assert set(outcome.stages) == set(STAGES)
        for stage in STAGES:
            assert 0 < outcome.stages[stage].tokens <= TOKENS[stage] and outcome.stages[stage].seconds > 0
        assert outcome.seconds == pytest.approx(sum(m.seconds for m in outcome.stages.values()))
    decoded = sum(executor.base.generated.values())
    assert executor.run(point("full", SkipPlan()), questions) == full
    assert sum(executor.base.generated.values()) == decoded, "an identical point decodes nothing again"
    exit_rule = EarlyExitConfig(window=1, threshold=1.0, min_tokens=1)  # exits after the first token
    exited = executor.run(point("uniform-exit", SkipPlan(mlp=[1]), exit_rule), questions)
    assert all(o.stages["recall"].tokens == 1 and o.stages["recall"].early_exited for o in exited)
    assert "bench-v1:chain-v3:" in executor.identity
    fresh = ChainExecutor(lm, max_tokens=TOKENS, num_shots=0, fallback=False, reuse_outputs=False)
    assert fresh.identity != executor.identity
    again = fresh.run(point("full", SkipPlan()), questions)
    assert [o.answer for o in again] == [o.answer for o in full], "same greedy outputs"
    assert again[0].stages["recall"].seconds != full[0].stages["recall"].seconds, "but timed afresh"
    assert fresh.evaluator({s: None for s in STAGES}) is not fresh.evaluator({s: None for s in STAGES})


@pytest.fixture()
def bench_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_llama()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    for split, prefix, n in (("dev", "d", 3), ("train", "t", 3)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(prefix, n)))
    sha = load_model(str(model_dir)).weights_sha256
    profile = Profile(
        model=ModelIdentity(name="tiny", weights_sha256=sha),
        stages={s: StageBudget(plan=SkipPlan(attention=[3], mlp=[2])) for s in STAGES},
        epsilon=0.1, metric="accuracy", questions=SearchedQuestions(benchmark="toy", split="train", size=3),
        importance=[(3, "attention"), (2, "mlp"), (1, "attention")], stage_order=list(STAGES),
        full_score=0.5, full_latency_seconds=1.0,
    )
    profile_path = profile.save(tmp_path / "profile.json")
    return {"model": model_dir, "data": data / "dev.jsonl", "profile": profile_path, "out": tmp_path / "out"}


def _bench(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="litestage")
    add_bench_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    assert args.handler(args, out) == 0
    return out.getvalue()


def test_bench_command_runs_every_method_writes_the_report_and_resumes(bench_setup: dict[str, Path]) -> None:
    argv = [
        "bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
        "--profile", str(bench_setup["profile"]), "--out", str(bench_setup["out"]), "--limit", "2",
        "--shots", "0", "--max-tokens", "recall=3,analysis=3,summary=2", "--calibration-size", "2",
        "--sweep", "uniform=1", "--sweep", "uniform-exit=1", "--sweep", "adaskip=2", "--sweep", "unified=1",
        "--sweep", "exit-depth=1", "--sweep", "stage-only=2", "--sweep", "adaskip-exit=2", "--sweep", "unified-exit=1",
        "--sweep", "exit-depth-exit=1", "--sweep", "capped=50", "--sweep", "capped-analysis=2", "--no-progress",
        "--exit-min-tokens", "1",
    ]
    text = _bench(argv)
    out = bench_setup["out"]
    results = json.loads((out / RESULTS_JSON).read_text())
    labels = [row["point"] for row in results["summary"]]
    assert labels == ["full", "litestage", "litestage-noexit", "litestage-noskip", "uniform@1", "uniform-exit@1", "adaskip@2",
                      "adaskip-exit@2", "unified@1", "unified-exit@1", "exit-depth@1", "exit-depth-exit@1",
                      "capped@50", "capped-analysis@2", "full-exit", "stage-only/recall@2", "stage-only/analysis@2",
                      "stage-only/summary@2"]
    assert all(row["questions"] == 2 for row in results["summary"])
    assert results["meta"]["calibration_ids"] and not set(results["meta"]["calibration_ids"]) & set(
        results["meta"]["question_ids"]), "calibrated on train questions, benchmarked on dev"
    assert results["meta"]["ranking"][:2] == [[3, "attention"], [2, "mlp"]], "the profile's ranking is used"
    points = {p["label"]: p for p in results["points"]}
    assert points["unified@1"]["plans"]["recall"] == {"attention": [2], "mlp": [2]}
    assert points["exit-depth@1"]["plans"]["summary"] == {"attention": [3], "mlp": [3]}
    assert points["adaskip@2"]["plans"]["recall"]["scale"], "AdaSkip's skipped sub-layers are compensated"
    assert points["capped-analysis@2"]["max_tokens"] == {"recall": 3, "analysis": 2, "summary": 2}
    assert results["meta"]["adaskip_norm_ratio"]
    for name in ("accuracy_vs_speedup.png", "stage_sensitivity.png", "tokens_vs_skipped.png", RESULTS_MD):
        assert (out / name).is_file()
    assert "| litestage | litestage |" in text
    stored = (out / RECORDS_FILE).read_text()
    assert "Which option" not in stored, "records hold ids and measurements, not question text"
    before = len(RecordStore(out / RECORDS_FILE))
    assert before == 18 * 2
    again = _bench(argv)
    assert "36 of 36 runs already recorded" in again and "other records" not in again
    assert (out / RECORDS_FILE).read_text() == stored, "a resumed, finished run appends nothing"


def test_bench_runs_a_point_in_another_format_and_reports_against_it(bench_setup: dict[str, Path]) -> None:
    """`full:separate` beside `--context continued`: the one point runs in its own format (its own evaluator), and
    the report adds a table with every loss and speedup taken against it."""
    out = bench_setup["out"]
    text = _bench([
        "bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
        "--profile", str(bench_setup["profile"]), "--out", str(out), "--limit", "2", "--shots", "0",
        "--max-tokens", "recall=3,analysis=3,summary=2", "--no-progress", "--no-plots", "--no-reuse",
        "--context", "continued", "--methods", "full:separate", "litestage-noskip", "full",
    ])
    assert "warning: the profile was searched in the 'separate' format and runs here in 'continued'" in text
    assert "stage outputs are reused" not in text, "--no-reuse was given"
    results = json.loads((out / RESULTS_JSON).read_text())
    assert [row["point"] for row in results["summary"]] == ["full", "full:separate", "litestage-noskip"]
    points = {p["label"]: p for p in results["points"]}
    assert points["full:separate"].get("context") == "separate" and "context" not in points["full"]
    against = {row["point"]: row for row in results["against"]["full:separate"]}
    main = {row["point"]: row for row in results["summary"]}
    assert against["full:separate"]["speedup"] == pytest.approx(1.0)
    for label in ("full", "litestage-noskip"):
        assert against[label]["speedup"] == pytest.approx(
            main["full:separate"]["mean_seconds"] / main[label]["mean_seconds"]), "speedups over full:separate"
    markdown = (out / RESULTS_MD).read_text()
    assert "## Against full:separate" in markdown and "| loss vs full:separate, paired (lost/gained) |" in markdown
    assert "against full:separate:" in text
    reused = _bench([
        "bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
        "--out", str(out.parent / "reused"), "--limit", "1", "--shots", "0", "--max-tokens",
        "recall=2,analysis=2,summary=2", "--no-progress", "--no-plots", "--methods", "full:continued",
    ])
    assert "warning: points run in the continued format while stage outputs are reused" in reused


def test_executor_keeps_one_evaluator_per_format() -> None:
    model, tokenizer = tiny_llama()
    lm = from_pretrained_objects(model, tokenizer, name="tiny-bench", weights_sha256="7c" * 32)
    executor = ChainExecutor(lm, max_tokens=TOKENS, num_shots=0, fallback=False, context="continued")
    rules = {s: None for s in STAGES}
    assert executor.evaluator(rules).context == "continued"
    separate = executor.evaluator(rules, None, "separate")
    assert separate.context == "separate" and separate is not executor.evaluator(rules)
    assert executor.evaluator(rules, None, "separate") is separate, "a format's evaluator (and cache) is kept"
    questions = [Question.model_validate({**row, "benchmark": "t"}) for row in rows("q", 2)]
    ran = executor.run(point("full", SkipPlan()).model_copy(update={"context": "separate"}), questions)
    assert separate.generated["summary"] > 0 and executor.base.generated["summary"] == 0, "run in its own format"
    assert [o.question_id for o in ran] == ["q0", "q1"]
