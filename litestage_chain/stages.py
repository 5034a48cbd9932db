"""The three reasoning stages and the per-stage budget (skip plan + early exit) each one runs with.

LiteStage gives each stage of multi-stage reasoning its own layer budget, because the stages differ in how much
skipping they tolerate (recall is fragile, summary is robust). This module names the stages once, and defines the
small protocol the chat model and the chain read budgets through, so that a profile produced by the offline search
(an object with `plan_for(stage)` and `early_exit_for(stage)`) plugs in wherever a plain `{stage: SkipPlan}` mapping
is accepted today.
"""

from __future__ import annotations

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


def as_stage_budgets(value: Any) -> StageBudgets | None:
    """Coerce what a user passes as a profile into a `StageBudgets` (or `None`).

    Accepts `None`, an object with `plan_for`/`early_exit_for`, or a mapping stage -> `SkipPlan` (or a dict with
    `attention`/`mlp` keys). Unknown stage names are rejected here, at construction, with the list of valid names.
    """
    if value is None:
        return None
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
