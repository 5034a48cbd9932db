"""The three reasoning stages, named once.

LiteStage gives each stage of multi-stage reasoning its own layer budget, because the stages differ in how much
skipping they tolerate (recall is fragile, summary is robust). Every layer that speaks of a stage (the budgets, the
chat model's `stage=`, the prompts, the chain, the search) takes its names from here.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from litestage_chain.errors import InvalidInputError

Stage = Literal["recall", "analysis", "summary"]
STAGES: tuple[Stage, ...] = get_args(Stage)

ContextFormat = Literal["shared", "separate", "continued"]
"""How the stages' prompts are laid out (`reasoning/shared_context.py`): a searched profile records the one it was
searched in, because a plan's accuracy is measured in that layout."""
CONTEXT_FORMATS: tuple[ContextFormat, ...] = get_args(ContextFormat)


def check_stage(stage: object) -> Stage:
    """Return `stage` as a `Stage`, or raise `InvalidInputError` listing the valid names."""
    if stage not in STAGES:
        raise InvalidInputError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return cast(Stage, stage)
