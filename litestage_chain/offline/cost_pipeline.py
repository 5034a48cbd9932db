"""The cost-aware offline phase in one call: calibrate, rank by importance lost per second saved, search, profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions
from litestage_chain.data.types import QuestionSet
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import LoadedModel
from litestage_chain.engine import fused_decode
from litestage_chain.engine.machine import cpu_name
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.engine.quant.kernels import kernels_status
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.calibration import calibration_prompts
from litestage_chain.offline.busy_cores import BusyCores
from litestage_chain.offline.cost_model import CostModel, PlanCosts, PlanTimer, engine_timer, sublayer_weights
from litestage_chain.offline.cost_search import (
    Candidate,
    CostSearchConfig,
    CostSearchResult,
    cost_aware_ranking,
    search_cost_aware,
)
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.importance import compute_importance
from litestage_chain.offline.store import ResultsStore


CALIBRATION_ROUNDS = 5
"""Alternating rounds of each calibration plan: two plans timed once per search, so rounds are cheap."""


def cost_model_for(
    model: LoadedModel, batch_size: int, *, rounds: int = 2, path: str | Path | None = None,
    prompt_tokens: int = 128, decode_steps: int = 16, busy: BusyCores | None = None,
    calibration_rounds: int | None = CALIBRATION_ROUNDS,
) -> CostModel:
    """A `CostModel` timing `model` at batch sizes 1, 2, 4, ... up to `batch_size` (and `batch_size` itself).

    Plans are priced from per-sub-layer shares calibrated over `calibration_rounds` alternating rounds
    (`SublayerCosts`); None times every plan on its own, `rounds` rounds each. With `busy`, every timing runs while
    its load processes decode on the other cores, and the costs are kept apart from those timed on a quiet machine.
    Timings are keyed by the CPU's model name too: another machine of the same kernel path prices tokens otherwise.
    """
    if not model.weights_sha256:
        raise InvalidInputError(f"model {model.name!r} has no weights sha256: its measured costs could not be keyed")
    sizes = sorted({1, batch_size, *(2**k for k in range(1, 8) if 2**k < batch_size)})
    kernel = "torch"
    if model.weights in ("int8", "int4"):  # another kernel build prices tokens differently: never mix their timings
        kernel = kernels_status()
        if fused_decode.program_for(model.view) is not None:  # batch-1 decode steps run compiled: other costs
            kernel += "+compiled-step"
    identity = (f"{model.weights_sha256}:{model.weights}:{kernel}:sizes={sizes}:prompt={prompt_tokens}:"
                f"steps={decode_steps}:context-v2:cpu={cpu_name()}")
    timer = engine_timer(model, sizes, prompt_tokens, decode_steps)
    if busy is not None:
        identity += f":busy={busy.label}"
        timer = under_load(timer, busy)
    return CostModel(timer, identity, rounds=rounds, path=path, num_layers=model.num_layers,
                     calibration_rounds=calibration_rounds)


def under_load(timer: PlanTimer, busy: BusyCores) -> PlanTimer:
    """`timer` with every timing taken while `busy`'s load processes run."""

    def time_plan(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        with busy.running():
            return timer(plan, context=context)

    return time_plan


def search_profile_cost_aware(
    model: LoadedModel,
    questions: QuestionSet,
    evaluator: ChainEvaluator,
    config: CostSearchConfig,
    *,
    calibration_size: int = 8,
    seed: int | None = None,
    store_path: str | Path | None = None,
    cost_path: str | Path | None = None,
    cost_rounds: int = 2,
    busy: BusyCores | None = None,
    calibration_rounds: int | None = CALIBRATION_ROUNDS,
    on_candidate: Callable[[Candidate], None] | None = None,
    progress: bool = False,
    notes: str = "",
) -> tuple[Profile, CostSearchResult]:
    """Importance on the first `calibration_size` questions, the cost-aware search on all of them, the profile."""
    if not model.weights_sha256:
        raise InvalidInputError(f"model {model.name!r} has no weights sha256, so a profile could not be matched to it")
    if evaluator.model is not model:
        raise InvalidInputError("the evaluator runs a different model than the one being profiled")
    if evaluator.batch_size != config.batch_size:
        raise InvalidInputError(
            f"the evaluator decodes {evaluator.batch_size} questions at a time but the search predicts latency at batch "
            f"{config.batch_size}"
        )
    if calibration_size < 1:
        raise InvalidInputError(f"calibration_size must be >= 1, got {calibration_size}")
    calibration = calibration_prompts(evaluator, questions.questions[:calibration_size])
    importance = compute_importance(model, calibration, progress=progress)
    similarity = importance.accumulated() / len(importance.stages)
    ranking = cost_aware_ranking(similarity, sublayer_weights(model))
    costs = cost_model_for(model, config.batch_size, rounds=cost_rounds, path=cost_path, busy=busy,
                           calibration_rounds=calibration_rounds)
    result = search_cost_aware(
        evaluator, questions.questions, ranking, costs, config, store=ResultsStore(store_path), on_candidate=on_candidate,
    )
    pricing = f"plans priced from their own timings, {cost_rounds} alternating round(s) each"
    if calibration_rounds is not None:  # the shares as measured: nothing is timed just to write the notes
        shares = costs.calibrated_shares
        measured = f"{shares.describe(config.batch_size)}; " if shares is not None else "no plan priced; "
        pricing = f"plans priced from per-sub-layer shares ({measured}calibrated over {calibration_rounds} rounds)"
    if busy is not None:
        pricing += f", timed with {busy.describe()}"
    profile = result.to_profile(
        model=ModelIdentity(name=model.name, weights_sha256=model.weights_sha256, weights=model.weights),
        questions=SearchedQuestions(benchmark=questions.benchmark, split=questions.split, size=len(questions),
                                    seed=seed, fingerprint=questions.fingerprint),
        context=evaluator.context,
        notes="\n".join(part for part in (notes, pricing) if part),
    )
    return profile, result


def describe_candidate(candidate: Candidate, metric: str) -> str:
    """One line per candidate for a search's log: settings, verdict with the loss interval, predicted latency."""
    stage = candidate.stage or "full model"
    rule = candidate.early_exit.get(candidate.stage) if candidate.stage else None
    cap = candidate.max_tokens.get(candidate.stage) if candidate.stage else None
    exit_text = f"exit {rule.window}/{rule.threshold:g}/{rule.min_tokens}" if rule else "no exit"
    if cap is not None:
        exit_text += f" cap {cap}"
    decided = candidate.comparison.describe() if candidate.comparison else f"{metric} reference"
    needed = f"; too small to decide, needs about {candidate.questions_needed} questions" if candidate.questions_needed else ""
    settings = f"skip {candidate.count:>2} {exit_text:>15}"
    if candidate.kept:  # the fixed stages' start ("recall+analysis")
        stage, settings = candidate.stage, "as kept, the rest full"
    return (f"  {stage:>10} {settings}: {candidate.verdict:>9}, {decided}, predicted "
            f"{candidate.predicted_seconds:.2f} s/question{needed}")


def parse_exit_grid(text: str) -> list[EarlyExitConfig | None]:
    """``none;8,0.3,16;4,0.5,8`` -> (None, EarlyExitConfig(8, 0.3, 16), EarlyExitConfig(4, 0.5, 8))."""
    rules: list[EarlyExitConfig | None] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if part.lower() == "none":
            rules.append(None)
            continue
        fields = part.split(",")
        if len(fields) != 3:
            raise InvalidInputError(f"exit rule {part!r}: expected none or WINDOW,THRESHOLD,MIN_TOKENS e.g. 8,0.3,16")
        try:
            rules.append(EarlyExitConfig(window=int(fields[0]), threshold=float(fields[1]), min_tokens=int(fields[2])))
        except (ValueError, ValidationError) as error:
            raise InvalidInputError(f"exit rule {part!r}: {error}") from None
    if not rules:
        raise InvalidInputError(f"--exit-grid {text!r} names no rule")
    return rules


def parse_cap_grid(text: str) -> list[int | None]:
    """``none;16;32`` -> (None, 16, 32): the token caps tried with every exit rule (none: the stage's own budget).

    Only the syntax is checked here; whether a cap is allowed is `CostSearchConfig`'s to say."""
    caps: list[int | None] = []
    for part in (p.strip() for p in text.replace(",", ";").split(";")):
        if not part:
            continue
        if part.lower() == "none":
            caps.append(None)
            continue
        try:
            cap = int(part)
        except ValueError:
            raise InvalidInputError(f"token cap {part!r}: expected none or a whole number of tokens, e.g. 16") from None
        caps.append(cap)  # a cap below 1 is refused by CostSearchConfig, the one place that rule lives
    if not caps:
        raise InvalidInputError(f"--cap-grid {text!r} names no cap")
    return caps
