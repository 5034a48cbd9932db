"""A shipped profile's predicted speedup, re-computed from its search's own chunks with today's cost model.

Why: the search predicts a candidate's latency from its token counts times per-plan costs. Its prediction missed on
OBQA (1.33x predicted, 1.11x on dev), and the question was whether the token counts or the prices were wrong. This
replays the search's recorded chunks of the full model and of the chosen settings (same questions, greedy, so the
tokens are what the search saw) through two cost models: the prices the search used (its cost log: the full model's
reference and every plan's ratios, timed plan by plan), and prices timed now on this machine (a fresh reference and
per-sub-layer shares, `cost_model.SublayerCosts`). With `--dev DIR` it prints the dev run's measured speedup per
stage beside them (separate format: `full:separate` against `litestage:separate`).

    OMP_NUM_THREADS=1 python benchmarks/repredict.py obqa --dev benchmarks/results/obqa-qwen-dev-continued \\
        --costs benchmarks/results/repredict/costs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from statistics import fmean

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import load_model  # noqa: E402
from litestage_chain.budgets.profile import Profile  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.engine.skip_plan import SkipPlan  # noqa: E402
from litestage_chain.offline.cost_model import CostModel, PlanCosts, tokens_of  # noqa: E402
from litestage_chain.offline.cost_pipeline import cost_model_for  # noqa: E402
from litestage_chain.offline.cost_search import exit_rules_key  # noqa: E402

MODEL = "qwen2.5-coder-1.5b"
LOGS = Path(__file__).resolve().parent / "results" / "profile-searches-qwen"


def chunks(name: str, profile: Profile) -> tuple[list[dict], list[dict]]:
    """The search's chunk results of the full model and of the chosen settings, on the chunks both have."""
    chosen = {stage: profile.plan_for(stage) for stage in STAGES}
    full_id = exit_rules_key({stage: None for stage in STAGES})
    chosen_id = exit_rules_key({stage: profile.early_exit_for(stage) for stage in STAGES})
    full, plans = {}, {}
    for line in (LOGS / f"{name}.search.jsonl").read_text().splitlines():
        record = json.loads(line)
        result = record.get("result")
        if not result:
            continue
        stage_plans = {k: SkipPlan(**v) for k, v in record["plans"].items() if k in STAGES}
        if record["evaluator"].endswith(":" + full_id) and all(p.is_empty for p in stage_plans.values()):
            full[record["questions"]] = result
        elif record["evaluator"].endswith(":" + chosen_id) and stage_plans == chosen:
            plans[record["questions"]] = result
    common = [key for key in full if key in plans]
    if not common:
        raise SystemExit(f"{name}: no chunk has both the full model's and the chosen settings' results")
    return [full[key] for key in common], [plans[key] for key in common]


def searched_costs(name: str, num_layers: int) -> CostModel:
    """The cost model the search used: its log's last identity, reference and per-plan ratios (nothing timed)."""
    path = LOGS / f"{name}.costs.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    identity = lines[-1]["identity"]

    def never(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        raise SystemExit(f"{name}: the search's cost log has no timing of {plan}")

    model = CostModel(never, identity, path=path, num_layers=num_layers)
    model.reference = [PlanCosts.model_validate(full) for line in lines
                       if line["ratios"] is None and line["identity"] == identity for full in line["full"]]
    return model


def per_stage(costs: CostModel, plans: Mapping[str, SkipPlan], results: list[dict]) -> dict[str, float]:
    """Predicted seconds per question of each stage over `results` (chunks of equal size), batch 8."""
    return {stage: fmean(costs.predict({stage: plans[stage]}, {stage: tokens_of(r["tokens"])[stage]}, 8)
                         for r in results) for stage in STAGES}


def measured(dev: Path) -> dict[str, float]:
    """The dev run's per-stage speedup, separate format, over the questions both points ran."""
    seconds: dict[str, dict[str, dict[str, float]]] = {"full:separate": {}, "litestage:separate": {}}
    for line in (dev / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["point"] in seconds:
            seconds[record["point"]][record["question_id"]] = {s: record["stages"][s]["seconds"] for s in STAGES}
    shared = [q for q in seconds["full:separate"] if q in seconds["litestage:separate"]]
    out = {s: sum(seconds["full:separate"][q][s] for q in shared) / sum(seconds["litestage:separate"][q][s]
                                                                           for q in shared) for s in STAGES}
    out["chain"] = sum(sum(seconds["full:separate"][q].values()) for q in shared) / sum(
        sum(seconds["litestage:separate"][q].values()) for q in shared)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", help="a shipped profile of the benchmark model (csqa, obqa, ...)")
    parser.add_argument("--dev", type=Path, help="a dev run's folder (records.jsonl) to print measured speedups from")
    parser.add_argument("--costs", type=Path, help="cost log for today's timings (resumable; default: in memory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = Profile.load(args.benchmark, model=MODEL)
    chosen = {stage: profile.plan_for(stage) for stage in STAGES}
    full_plans = {stage: SkipPlan() for stage in STAGES}
    full, plans = chunks(args.benchmark, profile)
    model = load_model(MODEL, weights=profile.model.weights)
    if args.costs:
        args.costs.parent.mkdir(parents=True, exist_ok=True)
    rows = {"searched (per-plan ratios)": searched_costs(args.benchmark, model.num_layers),
            "today (per-sub-layer shares)": cost_model_for(model, 8, path=args.costs)}
    print(f"{args.benchmark}: {len(full)} chunks of the search ({sum(len(r['answers']) for r in full)} questions); "
          f"today's timings: {rows['today (per-sub-layer shares)'].identity.split(':', 1)[1]}")
    print("| cost model | " + " | ".join(STAGES) + " | chain |\n|---|" + "---:|" * (len(STAGES) + 1))
    for label, costs in rows.items():
        before, after = per_stage(costs, full_plans, full), per_stage(costs, chosen, plans)
        cells = [f"{before[s] / after[s]:.2f}x" for s in STAGES]
        print(f"| {label} | " + " | ".join(cells) + f" | **{sum(before.values()) / sum(after.values()):.3f}x** |")
    if args.dev:
        dev = measured(args.dev)
        print(f"| measured on dev ({args.dev.name}) | " + " | ".join(f"{dev[s]:.2f}x" for s in STAGES)
              + f" | **{dev['chain']:.3f}x** |")


if __name__ == "__main__":
    main()
