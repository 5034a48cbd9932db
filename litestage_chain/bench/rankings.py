"""The two sub-layer rankings the baselines skip by, measured on calibration questions with the full model.

* LiteStage's accumulated ranking (``uniform``, ``stage-only``): residual cosine similarity of every sub-layer
  on each stage's prompt *and* the full model's output for it, summed over stages. When a searched profile is
  given its stored ranking is used, so the baselines skip in exactly the order the profile was searched with.
* AdaSkip's calibration (``adaskip``): IO similarity and output/input norm ratio on the stage prompts only (the
  prefill), averaged over prompts; one joint ranking of the raw similarities (`adaskip.py`).

Calibration questions must not be the benchmarked ones (a ranking fitted on the test questions would flatter
the baselines); the command line takes them from the train split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litestage_chain.bench.adaskip import AdaSkipCalibration, adaskip_calibration
from litestage_chain.budgets.profile import Profile
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.calibration import calibration_prompts
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.importance import SubLayer, compute_importance


def _check_disjoint(calibration: Sequence[Question], benchmarked: Sequence[Question]) -> None:
    overlap = sorted({q.id for q in calibration} & {q.id for q in benchmarked})
    if overlap:
        raise InvalidInputError(
            f"{len(overlap)} calibration question(s) are also benchmarked (e.g. {overlap[:3]}); "
            "calibrate on another split"
        )


def litestage_ranking(
    evaluator: ChainEvaluator,
    calibration: Sequence[Question],
    *,
    profile: Profile | None = None,
    benchmarked: Sequence[Question] = (),
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> list[SubLayer]:
    """The profile's ranking if given, else LiteStage's accumulated ranking measured on `calibration`."""
    if profile is not None:
        if not profile.importance:
            raise InvalidInputError("the profile stores no importance ranking")
        return list(profile.importance)
    if not calibration:
        raise InvalidInputError("no calibration questions to rank sub-layers on")
    _check_disjoint(calibration, benchmarked)
    prompts = calibration_prompts(evaluator, calibration)
    return compute_importance(evaluator.model, prompts, cache_dir=cache_dir, progress=progress).ranking


def adaskip_order(
    evaluator: ChainEvaluator,
    calibration: Sequence[Question],
    *,
    benchmarked: Sequence[Question] = (),
) -> AdaSkipCalibration:
    """AdaSkip's prefill similarities and norm ratios over the stage prompts of `calibration`."""
    if not calibration:
        raise InvalidInputError("no calibration questions to rank sub-layers on")
    _check_disjoint(calibration, benchmarked)
    prompts = calibration_prompts(evaluator, calibration, include_output=False)
    return adaskip_calibration(evaluator.model, prompts)
