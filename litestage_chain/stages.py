"""The three reasoning stages and the per-stage budget (skip plan + early exit) each one runs with.

LiteStage gives each stage of multi-stage reasoning its own layer budget, because the stages differ in how much
skipping they tolerate (recall is fragile, summary is robust). This module names the stages once, and defines the
small protocol the chat model and the chain read budgets through, so that a profile produced by the offline search
(an object with `plan_for(stage)` and `early_exit_for(stage)`) plugs in wherever a plain `{stage: SkipPlan}` mapping
is accepted today.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Protocol, cast, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.early_exit import EarlyExitConfig
from litestage_chain.errors import InvalidInputError
from litestage_chain.skip_plan import SkipPlan

Stage = Literal["recall", "analysis", "summary"]
STAGES: tuple[Stage, ...] = get_args(Stage)


def check_stage(stage: object) -> Stage:
    """Return `stage` as a `Stage`, or raise `InvalidInputError` listing the valid names."""
    if stage not in STAGES:
        raise InvalidInputError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return cast(Stage, stage)


@runtime_checkable
class StageBudgets(Protocol):
    """Anything that can say which sub-layers a stage skips and how it exits early.

    The offline search's `Profile` satisfies this protocol; `PlanMapping` adapts a plain mapping.
    `early_exit_for` returning `None` means the stage runs without early exit.
    """

    def plan_for(self, stage: str) -> SkipPlan: ...

    def early_exit_for(self, stage: str) -> EarlyExitConfig | None: ...


class PlanMapping(BaseModel):
    """A `StageBudgets` built from plain mappings: `{stage: SkipPlan}` and optionally `{stage: EarlyExitConfig}`.

    Stages missing from `plans` are an error at lookup time (not silently the full model): a profile that forgot a
    stage is a bug the caller should hear about. A stage missing from `early_exit` has no early-exit opinion
    (`has_early_exit_for` is False), so the chat model's own `early_exit` setting applies to it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plans: dict[Stage, SkipPlan]
    early_exit: dict[Stage, EarlyExitConfig | None] = Field(default_factory=dict)

    def plan_for(self, stage: str) -> SkipPlan:
        check_stage(stage)
        try:
            return self.plans[cast(Stage, stage)]
        except KeyError:
            have = ", ".join(self.plans) or "none"
            raise InvalidInputError(f"stage {stage!r} is missing from the profile (it has plans for: {have})") from None

    def early_exit_for(self, stage: str) -> EarlyExitConfig | None:
        check_stage(stage)
        return self.early_exit.get(cast(Stage, stage))

    def has_early_exit_for(self, stage: str) -> bool:
        return stage in self.early_exit


def as_stage_budgets(value: Any, model: str | None = None) -> StageBudgets | None:
    """Coerce what a user passes as a profile into a `StageBudgets` (or `None`).

    Accepts `None`, an object with `plan_for`/`early_exit_for`, a mapping stage -> `SkipPlan` (or a dict with
    `attention`/`mlp` keys), or a profile given by file path or shipped name (`"csqa"`, looked up among `model`'s
    shipped profiles when a model name is given). Unknown stage names are rejected here, at construction, with the
    list of valid names.
    """
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        from litestage_chain.profile import Profile  # profile.py builds on this module

        return Profile.load(value, model=model)
    if isinstance(value, StageBudgets) and not isinstance(value, Mapping):
        return value
    if isinstance(value, Mapping):
        plans: dict[Stage, SkipPlan] = {}
        for stage, plan in value.items():
            plans[check_stage(stage)] = plan if isinstance(plan, SkipPlan) else SkipPlan.model_validate(plan)
        return PlanMapping(plans=plans)
    raise InvalidInputError(
        f"a stage profile must be a mapping stage -> SkipPlan or an object with plan_for()/early_exit_for(), "
        f"got {type(value).__name__}"
    )


class StageOutput(BaseModel):
    """What one stage produced and what it cost: the record the chain keeps and the offline search reads."""

    model_config = ConfigDict(frozen=True)

    stage: Stage
    text: str
    prompt_tokens: int
    generated_tokens: int
    seconds: float = Field(description="prefill + decode seconds of this stage's generation")
    prefill_seconds: float
    decode_seconds: float
    skipped: SkipPlan
    early_exited: bool
    finish_reason: str
    prefix_tokens: int = Field(0, ge=0, description="prompt tokens whose KV entries came from the shared-prefix table "
                               "instead of this call's prefill (the cost model charges only the rest)")

    @classmethod
    def from_message(cls, stage: Stage, message: Any) -> StageOutput:
        """Read a stage's record off the `AIMessage` `ChatLiteStage` returned for it."""
        meta = message.response_metadata
        usage = message.usage_metadata or {}
        skipped = meta.get("skipped") or {}
        return cls(
            stage=stage,
            text=clean_stage_text(stage, message.text),
            prompt_tokens=int(usage.get("input_tokens", 0)),
            generated_tokens=int(usage.get("output_tokens", 0)),
            seconds=float(meta.get("prefill_seconds", 0.0)) + float(meta.get("decode_seconds", 0.0)),
            prefill_seconds=float(meta.get("prefill_seconds", 0.0)),
            decode_seconds=float(meta.get("decode_seconds", 0.0)),
            skipped=SkipPlan(attention=skipped.get("attention", ()), mlp=skipped.get("mlp", ())),
            early_exited=bool(meta.get("early_exit", False)),
            finish_reason=str(meta.get("finish_reason", "")),
            prefix_tokens=sum(int(v or 0) for v in (usage.get("input_token_details") or {}).values()),
        )


_LEADS = {"recall": ("key information:", "key knowledge:"), "analysis": ("analysis:",), "summary": ()}


def clean_stage_text(stage: Stage, text: str) -> str:
    """Strip whitespace and a leading echo of the stage's label ("Key information: ...") the model may write."""
    cleaned = text.strip()
    for lead in _LEADS[stage]:
        if cleaned.lower().startswith(lead):
            cleaned = cleaned[len(lead) :].strip()
    return cleaned
