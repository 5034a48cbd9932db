"""`StageBudgets`: the one type that says what each reasoning stage runs with (skip plan + early exit).

A searched `Profile` produces it (`Profile.budgets()`), a plain `{stage: SkipPlan}` mapping becomes it, and the chat
model and the chain hold nothing else: `as_stage_budgets` (in `budgets.coerce`) converts whatever a user passes once,
at the boundary, so no code below has to ask what kind of object it was given.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.budgets.stages import ContextFormat, Stage, check_stage
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.engine.weight_formats import WeightFormat
from litestage_chain.errors import InvalidInputError, ProfileMismatchError

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel


class ModelIdentity(BaseModel):
    """Which weights a profile was searched on. The sha256 is the identity; the name is for people."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256 of the weights")
    weights: WeightFormat = Field(
        default="float32", description="weight format the latencies were measured in (the plans apply to any)"
    )


class StageBudget(BaseModel):
    """What one stage runs with: its skip plan, its early-exit rule (None = no early exit) and its token cap.

    The cap is searched beside the exit rule because on a CPU a batch decodes until its longest row ends: a rule that
    ends rows anywhere from its minimum up saves less than a cap that ends every row at the same step, and on the
    benchmark model a capped analysis kept the accuracy the rule kept (benchmarks/README.md, section 6).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: SkipPlan = Field(default_factory=SkipPlan)
    early_exit: EarlyExitConfig | None = None
    max_tokens: int | None = Field(
        None, ge=1, description="the most tokens the stage generates: caps whatever budget a call asks for (None: the "
        "call's budget, e.g. the chain's default for the stage)",
    )


def capped_budget(budget: int, cap: int | None) -> int:
    """A token budget under a cap (None: no cap): the one rule every place that applies a stage's cap follows."""
    return budget if cap is None else min(budget, cap)


class StageBudgets(BaseModel):
    """Per-stage budgets, immutable.

    A stage missing from `stages` is an error at lookup time, not silently the full model: budgets that forgot a
    stage are a bug the caller should hear about. `sets_early_exit` is False for budgets made from plain plans
    (which say nothing about early exit), so the chat model's own `early_exit` applies to their stages; a searched
    profile decides each stage's early exit, `None` meaning off. `model` is set when the budgets were searched for
    particular weights, so that applying them to other weights fails (`check_model`). `context` is the reasoning
    format a searched profile was measured in (the chain runs in it unless told otherwise); `None` for plain plans.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: dict[Stage, StageBudget]
    sets_early_exit: bool = True
    model: ModelIdentity | None = None
    context: ContextFormat | None = None

    @classmethod
    def from_plans(cls, plans: dict[str, Any]) -> StageBudgets:
        """Budgets from `{stage: SkipPlan or {"attention": [...], "mlp": [...]}}`; early exit left to the model."""
        stages: dict[Stage, StageBudget] = {}
        for stage, plan in plans.items():
            stages[check_stage(stage)] = StageBudget(plan=plan if isinstance(plan, SkipPlan) else SkipPlan.model_validate(plan))
        return cls(stages=stages, sets_early_exit=False)

    def budget_for(self, stage: str) -> StageBudget:
        checked = check_stage(stage)
        try:
            return self.stages[checked]
        except KeyError:
            have = ", ".join(self.stages) or "none"
            raise InvalidInputError(f"stage {stage!r} is missing from the profile (it has plans for: {have})") from None

    def plan_for(self, stage: str) -> SkipPlan:
        return self.budget_for(stage).plan

    def early_exit_for(self, stage: str) -> EarlyExitConfig | None:
        """The stage's early-exit rule; `None` both when it is off and when these budgets leave it to the model."""
        return self.budget_for(stage).early_exit

    def max_tokens_for(self, stage: str) -> int | None:
        """The stage's token cap (None: no cap beyond the call's own budget)."""
        return self.budget_for(stage).max_tokens

    def capped(self, stage: str, budget: int) -> int:
        """A call's token budget under the stage's cap: the smaller of the two."""
        return capped_budget(budget, self.max_tokens_for(stage))

    def identity(self) -> dict[str, Any]:
        """Plain data that tells two budgets apart (for LangChain's cache keys and `_identifying_params`)."""
        return self.model_dump(mode="json")

    def check_model(self, model: LoadedModel) -> None:
        """Raise `ProfileMismatchError` unless budgets searched for particular weights fit `model` (its weights and
        its number of layers). Budgets from plain plans fit any model; each call still checks the plan it runs."""
        if self.model is None:
            return
        if model.weights_sha256 != self.model.weights_sha256:
            raise ProfileMismatchError(
                f"this profile was made for model {self.model.name!r} (weights sha256 {self.model.weights_sha256[:16]}…), "
                f"but the loaded model is {model.name!r} (weights sha256 {(model.weights_sha256 or 'unknown')[:16]}…)"
            )
        loaded_format = getattr(model, "weights", None)
        if loaded_format is not None and loaded_format != self.model.weights:
            # The plans apply to any format, but the search chose them by latencies measured in its own format.
            warnings.warn(
                f"this profile's latencies were measured with {self.model.weights} weights but the model is loaded "
                f"in {loaded_format}: its plans apply, its speed trade-offs may not (load weights="
                f"{self.model.weights!r}, or search a profile in this format)",
                UserWarning,
                stacklevel=3,
            )
        for stage, budget in self.stages.items():
            try:
                budget.plan.check(model.num_layers)
            except InvalidInputError as error:
                raise ProfileMismatchError(f"stage {stage!r}: {error}") from error
