"""The whole LiteStage offline phase in one call: calibrate, rank sub-layers, search budgets, write a profile."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from litestage_chain.budgets.profile import (
    ModelIdentity,
    Profile,
    SearchedQuestions,
    TraceEntry,
)
from litestage_chain.data.benchmarks import Source, search_questions
from litestage_chain.data.types import QuestionSet, question_fingerprint
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import LoadedModel
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.calibration import calibration_prompts
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.importance import Importance, compute_importance
from litestage_chain.offline.question_fit import fitting_questions
from litestage_chain.offline.search import SearchConfig, SearchResult, search_budgets
from litestage_chain.offline.store import ResultsStore


def search_profile(
    model: LoadedModel,
    questions: QuestionSet,
    *,
    config: SearchConfig | None = None,
    evaluator: ChainEvaluator | None = None,
    calibration_size: int = 8,
    seed: int | None = None,
    store_path: str | Path | None = None,
    importance_cache_dir: str | Path | None = None,
    on_candidate: Callable[[TraceEntry], None] | None = None,
    progress: bool = False,
    notes: str = "",
) -> tuple[Profile, SearchResult, Importance]:
    """Run calibration, importance and the budget search on `questions`; return the profile and what led to it.

    Calibration uses the first `calibration_size` questions of the set (their full-model outputs are
    reused by the search's baseline evaluation). With `store_path`, every evaluation is logged there and
    a re-run after an interruption continues where it stopped.
    """
    if not model.weights_sha256:
        raise InvalidInputError(
            f"model {model.name!r} has no weights sha256, so a profile could not be matched to it later"
        )
    if calibration_size < 1:
        raise InvalidInputError(f"calibration_size must be >= 1, got {calibration_size}")
    config = config or SearchConfig()
    evaluator = evaluator or ChainEvaluator(model, progress=progress)
    if evaluator.model is not model:
        raise InvalidInputError("the evaluator runs a different model than the one being profiled")
    # A question too long for the context is named and left out: the profile records the size of the slice drawn
    # and the fingerprint of the questions searched (`profile check` draws the slice and skips the same ones).
    searched, skipped = fitting_questions(evaluator, questions.questions)
    if not searched:
        raise InvalidInputError(f"none of the {len(questions)} questions fits the model's context")
    if skipped:
        notes = "\n".join(filter(None, [notes, f"skipped (too long for the context): {', '.join(skipped)}"]))
    calibration = calibration_prompts(evaluator, searched[:calibration_size])
    importance = compute_importance(model, calibration, cache_dir=importance_cache_dir, progress=progress)
    result = search_budgets(
        evaluator, searched, importance.ranking, config,
        store=ResultsStore(store_path), on_candidate=on_candidate,
    )
    early_exit: Mapping[str, EarlyExitConfig | None] = {stage: evaluator.early_exit_for(stage) for stage in result.plans}
    profile = result.to_profile(
        model=ModelIdentity(name=model.name, weights_sha256=model.weights_sha256, weights=model.weights),
        questions=SearchedQuestions(
            benchmark=questions.benchmark, split=questions.split, size=len(questions), seed=seed,
            fingerprint=question_fingerprint(searched),
        ),
        context=evaluator.context,
        early_exit=early_exit,
        notes=notes,
    )
    return profile, result, importance


def search_benchmark_profile(
    model: LoadedModel,
    benchmark: str,
    *,
    size: int,
    seed: int = 0,
    source: Source = "jsonl",
    data_dir: str | Path | None = None,
    profile_path: str | Path | None = None,
    **kwargs: object,
) -> Profile:
    """`search_profile` on a seeded slice of `benchmark`'s train split; saves the profile to `profile_path` if given."""
    questions = search_questions(benchmark, size, seed=seed, source=source, data_dir=data_dir)
    profile, _, _ = search_profile(model, questions, seed=seed, **kwargs)  # type: ignore[arg-type]
    if profile_path is not None:
        profile.save(profile_path)
    return profile
