"""The compared methods as per-stage skip plans: LiteStage and the baselines, each swept over a skip count.

Every method is reduced to the same thing, a `MethodPoint`: one skip plan and one early-exit rule per stage. The
runner then evaluates all points with the same engine, prompts and questions, so the only difference between
methods is which sub-layers they skip and whether stages exit early.

Methods (the names the command line accepts):

* ``full``: no skipping, no early exit. Every speedup is measured against it.
* ``litestage`` / ``litestage-noexit``: the searched profile's per-stage plans, with and without generation
  early exit (the ablation that shows what early exit adds on top of stage-wise budgets). ``litestage`` runs each
  stage with the profile's own rule, and without one where the profile has none: the cost-aware search picks "no
  exit" for a stage as one of its choices, so lending that stage the command line's rule would run a plan the
  search never judged. A profile's per-stage token caps go with its exit rules (both say when a stage stops):
  ``litestage`` and ``litestage-noskip`` run with them, ``litestage-noexit`` without.
* ``litestage-noskip``: the profile's per-stage early-exit rules with nothing skipped, the other ablation: what the
  skipped sub-layers add on top of the searched exits (``full-exit`` uses one fixed rule in every stage instead).
* ``uniform``: the same number of skipped sub-layers in every stage, taken from LiteStage's accumulated importance
  ranking.
* ``adaskip``: AdaSkip as its reference code does it (`adaskip.py`: one joint ranking of raw prefill similarities,
  each skipped sub-layer replaced by its mean output/input norm ratio), one skip set for all stages.
* ``unified``: whole layers (attention and MLP together) skipped at evenly spaced depths.
* ``exit-depth``: the last k layers dropped (static early exit at depth L-k).
* ``-exit`` variants of each (``uniform-exit``, ``adaskip-exit``, ``unified-exit``, ``exit-depth-exit``), and
  ``full-exit`` (the full model): the same plans with LiteStage's generation early exit in every stage, so no
  method is compared without the part of LiteStage's speed that early exit alone gives.
* ``capped``: the full model with every stage's token budget cut to a percent of the run's budget, the control for
  "is the speedup just shorter stages?".
* ``capped-analysis``: the full model with only the analysis cut, to a number of tokens: the control for an exit
  rule that ends nearly every analysis after its minimum (OBQA's 4/0.8/8 ends 485 of 500 at about 10 tokens), which
  a percent of every stage's budget cannot match without also cutting the recall and the summary. Its default
  sweep (8, 16, 32 tokens) keeps the caps below the run's analysis budget.
* ``stage-only``: the ranking's first k sub-layers skipped in one stage, the others full: per-stage sensitivity.

Any method may name a reasoning format after a colon (``full:separate``, ``litestage:continued``): its points run
in that format (`reasoning/shared_context.py`) instead of the run's ``--context``. Why: the formats change what a
stage re-reads, so "how much sooner does a user get the answer" compares a point in one format with the full model
in another, and only a side-by-side run in one loop measures that ratio fairly. The report adds a table against
every ``full:<format>`` point (`report.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.append_store import content_key
from litestage_chain.bench.adaskip import AdaSkipCalibration
from litestage_chain.budgets.profile import Profile
from litestage_chain.budgets.stages import CONTEXT_FORMATS, STAGES, ContextFormat
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.importance import SubLayer, plan_for_count
from litestage_chain.reasoning.chain import DEFAULT_MAX_TOKENS

MethodName = Literal[
    "full", "litestage", "litestage-noexit", "litestage-noskip", "uniform", "uniform-exit", "adaskip", "adaskip-exit", "unified",
    "unified-exit", "exit-depth", "exit-depth-exit", "capped", "capped-analysis", "full-exit", "stage-only"
]
METHODS: tuple[MethodName, ...] = get_args(MethodName)
"""The method names in the order runs and reports list them (the Literal's own, so the two cannot drift apart)."""
SWEPT: tuple[MethodName, ...] = (
    "uniform", "uniform-exit", "adaskip", "adaskip-exit", "unified", "unified-exit", "exit-depth", "exit-depth-exit",
    "capped", "capped-analysis", "stage-only",
)
"""Methods with a count to sweep (sub-layers for the ranked ones, whole layers for unified / exit-depth, the percent
of every stage's token budget for ``capped``, the analysis's budget in tokens for ``capped-analysis``)."""
NEEDS_PROFILE: tuple[MethodName, ...] = ("litestage", "litestage-noexit", "litestage-noskip")
LAYER_COUNTED: tuple[MethodName, ...] = ("unified", "unified-exit", "exit-depth", "exit-depth-exit")
WITH_EXIT: tuple[MethodName, ...] = ("uniform-exit", "adaskip-exit", "unified-exit", "exit-depth-exit", "full-exit")
"""The early-exit variants: the same plans as the method without ``-exit``, every stage exiting early."""

DEFAULT_SWEEPS: dict[str, tuple[int, ...]] = {
    "uniform": (4, 8, 12, 16, 20),
    "uniform-exit": (4, 8, 12, 16, 20),
    "adaskip": (4, 8, 12, 16, 20),
    "adaskip-exit": (4, 8, 12, 16, 20),
    "unified": (2, 4, 6, 8, 10),
    "unified-exit": (2, 4, 6, 8, 10),
    "exit-depth": (2, 4, 6, 8, 10),
    "exit-depth-exit": (2, 4, 6, 8, 10),
    "capped": (25, 50, 75),
    "capped-analysis": (8, 16, 32),
    "stage-only": (4, 8, 12, 16, 20),
}
"""Default skip counts, sized for a ~30-layer model (60 sub-layers): up to a third of the model skipped."""


class MethodPoint(BaseModel):
    """One evaluated configuration: a method at one skip count, as a plan and an early-exit rule per stage.

    `count` is the swept parameter (sub-layers for ranked methods, layers for ``unified``/``exit-depth``, 0 for
    methods without a sweep); `stage` names the one stage a ``stage-only`` point skips in.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: MethodName
    count: int = Field(0, ge=0)
    stage: str | None = None
    plans: dict[str, SkipPlan]
    early_exit: dict[str, EarlyExitConfig | None]
    max_tokens: dict[str, int] | None = Field(None, description="per-stage token budgets replacing the run's (capped)")
    context: ContextFormat | None = Field(None, description="the reasoning format; None: the run's --context")

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``uniform@8``, ``stage-only/recall@4``, ``full``, ``full:separate``."""
        name = self.method + (f"/{self.stage}" if self.stage else "")
        name = name if self.method in ("full", "full-exit", *NEEDS_PROFILE) else f"{name}@{self.count}"
        return name + (f":{self.context}" if self.context else "")

    @property
    def skipped_sublayers(self) -> dict[str, int]:
        """Sub-layers skipped per stage (a skipped whole layer counts as two)."""
        return {stage: plan.num_skipped for stage, plan in self.plans.items()}

    @property
    def uses_early_exit(self) -> bool:
        return any(rule is not None for rule in self.early_exit.values())

    def payload(self) -> dict[str, object]:
        """Canonical JSON data of what this point runs (plans and early exit), used in keys and result files."""
        payload: dict[str, object] = {
            "method": self.method,
            "count": self.count,
            "stage": self.stage,
            "plans": {s: self.plans[s].model_dump(mode="json") for s in sorted(self.plans)},
            "early_exit": {s: (r.model_dump() if r else None) for s, r in sorted(self.early_exit.items())},
        }
        if self.max_tokens is not None:  # absent otherwise, so the keys of recorded points stay the same
            payload["max_tokens"] = dict(sorted(self.max_tokens.items()))
        if self.context is not None:  # likewise
            payload["context"] = self.context
        return payload

    def key(self) -> str:
        return content_key(self.payload())


# ----------------------------------------------------------------------------------------- plan builders


def evenly_spaced_layers(num_layers: int, count: int) -> list[int]:
    """`count` distinct layer indices spread evenly over depth: the midpoints of `count` equal segments.

    For 30 layers: 1 -> [15], 3 -> [5, 15, 25]. Midpoints keep the first and last layers (the most sensitive
    ones in most models) out of small skip sets, and consecutive picks differ by floor or ceil of L/count.
    """
    _check_layer_count(num_layers, count)
    return [((2 * index + 1) * num_layers) // (2 * count) for index in range(count)]


def unified_plan(num_layers: int, count: int) -> SkipPlan:
    """Skip `count` whole layers (attention and MLP together) at evenly spaced depths."""
    layers = evenly_spaced_layers(num_layers, count) if count else []
    return SkipPlan(attention=layers, mlp=layers)


def last_layers_plan(num_layers: int, count: int) -> SkipPlan:
    """Drop the last `count` whole layers: the final norm and LM head read layer L-count-1's output."""
    _check_layer_count(num_layers, count)
    layers = list(range(num_layers - count, num_layers))
    return SkipPlan(attention=layers, mlp=layers)


def _check_layer_count(num_layers: int, count: int) -> None:
    if num_layers < 1:
        raise InvalidInputError(f"the model must have at least one layer, got {num_layers}")
    if count < 0 or count >= num_layers:
        raise InvalidInputError(
            f"cannot skip {count} whole layers of a {num_layers}-layer model (use 0..{num_layers - 1}: "
            "at least one layer must run)"
        )


# ----------------------------------------------------------------------------------------- expanding methods


class MethodContext(BaseModel):
    """What the methods are built from: the model's depth, the two rankings, the profile and the early-exit rule."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    num_layers: int = Field(ge=1)
    ranking: list[SubLayer] = Field(description="LiteStage's accumulated ranking (uniform, stage-only)")
    adaskip_ranking: list[SubLayer] | None = Field(None, description="AdaSkip's joint ranking (`adaskip.py`)")
    adaskip: AdaSkipCalibration | None = Field(None, description="AdaSkip's norm ratios: skipped sub-layers compensated")
    profile: Profile | None = None
    early_exit: EarlyExitConfig = Field(default_factory=EarlyExitConfig)
    stages: tuple[str, ...] = STAGES
    max_tokens: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MAX_TOKENS),
                                       description="the run's per-stage token budgets (``capped`` takes a percent)")


def _same_everywhere(stages: Sequence[str], plan: SkipPlan, rule: EarlyExitConfig | None) -> tuple[dict, dict]:
    return {stage: plan for stage in stages}, {stage: rule for stage in stages}


def full_point(context: MethodContext) -> MethodPoint:
    plans, rules = _same_everywhere(context.stages, SkipPlan(), None)
    return MethodPoint(method="full", plans=plans, early_exit=rules)


def _cut_budgets(method: str, context: MethodContext, count: int) -> dict[str, int]:
    """The budget controls' per-stage token budgets: ``capped`` cuts every stage to `count` percent of the run's,
    ``capped-analysis`` the analysis alone to `count` tokens (the others keep the run's)."""
    budgets = dict(context.max_tokens)
    if method == "capped":
        if count > 100:
            raise InvalidInputError(f"method 'capped' takes a percent of each stage's token budget, got {count}")
        return {stage: max(1, budgets[stage] * count // 100) for stage in context.stages}
    if "analysis" not in context.stages:
        raise InvalidInputError("method 'capped-analysis' needs the analysis stage in the run")
    if count > budgets["analysis"]:
        raise InvalidInputError(f"method 'capped-analysis' cuts the analysis's budget of {budgets['analysis']} tokens, "
                                f"got {count}: not a cut")
    return {stage: count if stage == "analysis" else budgets[stage] for stage in context.stages}


def parse_method(text: str) -> tuple[MethodName, ContextFormat | None]:
    """``METHOD`` or ``METHOD:FORMAT`` (the --methods values) as (method, format or None); errors name the problem."""
    method, sep, fmt = text.strip().partition(":")
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r} in {text!r}; known: {', '.join(METHODS)}")
    if not sep:
        return cast(MethodName, method), None
    if fmt not in CONTEXT_FORMATS:
        raise InvalidInputError(
            f"unknown reasoning format {fmt!r} in {text!r}: write METHOD:FORMAT with FORMAT one of "
            f"{', '.join(CONTEXT_FORMATS)}"
        )
    return cast(MethodName, method), cast(ContextFormat, fmt)


def method_points(method: str, context: MethodContext, counts: Sequence[int] | None = None) -> list[MethodPoint]:
    """Every point of `method` (``METHOD`` or ``METHOD:FORMAT``): one per swept count (one per stage and count for
    ``stage-only``)."""
    name, fmt = parse_method(method)
    points = _points_of(name, context, counts)
    return [point.model_copy(update={"context": fmt}) for point in points] if fmt else points


def _points_of(name: MethodName, context: MethodContext, counts: Sequence[int] | None) -> list[MethodPoint]:
    method: str = name
    stages = context.stages
    if name == "full":
        return [full_point(context)]
    if name == "full-exit":
        plans, rules = _same_everywhere(stages, SkipPlan(), context.early_exit)
        return [MethodPoint(method=name, plans=plans, early_exit=rules)]
    if method in NEEDS_PROFILE:
        profile = context.profile
        if profile is None:
            raise InvalidInputError(f"method {method!r} needs a searched profile (--profile FILE or shipped name)")
        plans = {stage: profile.plan_for(stage) for stage in stages}
        for stage, plan in plans.items():
            plan.check(context.num_layers)
        if method == "litestage-noskip":
            plans = {stage: SkipPlan() for stage in stages}
        rules = (
            {stage: None for stage in stages}
            if method == "litestage-noexit"
            else {stage: profile.early_exit_for(stage) for stage in stages}  # None: searched as "no exit"
        )
        total = sum(plan.num_skipped for plan in plans.values())
        budgets = None  # no caps: the run's budgets, and the keys of points recorded before caps existed
        if method != "litestage-noexit" and any(profile.max_tokens_for(stage) is not None for stage in stages):
            searched = profile.budgets()
            budgets = {stage: searched.capped(stage, context.max_tokens[stage]) for stage in stages}
        return [MethodPoint(method=name, count=total, plans=plans, early_exit=rules, max_tokens=budgets)]

    chosen = list(counts) if counts is not None else list(DEFAULT_SWEEPS[method])
    if counts is None and method == "capped-analysis" and "analysis" in context.max_tokens:
        # the default caps that are cuts of this run's analysis budget (a sweep asked for is checked as given)
        chosen = [c for c in chosen if c <= context.max_tokens["analysis"]] or chosen
    if not chosen:
        raise InvalidInputError(f"method {method!r} has an empty sweep")
    bad = [c for c in chosen if c < 1]
    if bad:
        raise InvalidInputError(f"method {method!r}: skip counts must be >= 1, got {bad}")
    points: list[MethodPoint] = []
    rule = context.early_exit if name in WITH_EXIT else None
    for count in sorted(set(chosen)):
        if method in ("uniform", "uniform-exit"):
            plans, rules = _same_everywhere(stages, plan_for_count(context.ranking, count), rule)
            points.append(MethodPoint(method=name, count=count, plans=plans, early_exit=rules))
        elif method in ("adaskip", "adaskip-exit"):
            plans, rules = _same_everywhere(stages, _adaskip_plan(context, count), rule)
            points.append(MethodPoint(method=name, count=count, plans=plans, early_exit=rules))
        elif method in LAYER_COUNTED:
            build = unified_plan if method.startswith("unified") else last_layers_plan
            plans, rules = _same_everywhere(stages, build(context.num_layers, count), rule)
            points.append(MethodPoint(method=name, count=count, plans=plans, early_exit=rules))
        elif method in ("capped", "capped-analysis"):
            plans, rules = _same_everywhere(stages, SkipPlan(), None)
            budgets = _cut_budgets(method, context, count)
            points.append(MethodPoint(method=name, count=count, plans=plans, early_exit=rules, max_tokens=budgets))
        else:  # stage-only
            plan = plan_for_count(context.ranking, count)
            for stage in stages:
                plans = {s: (plan if s == stage else SkipPlan()) for s in stages}
                points.append(MethodPoint(
                    method="stage-only", count=count, stage=stage, plans=plans, early_exit={s: None for s in stages}
                ))
    return points


def _adaskip_plan(context: MethodContext, count: int) -> SkipPlan:
    """AdaSkip's first `count` sub-layers, each compensated by its norm ratio when the calibration is known."""
    if context.adaskip_ranking is None:
        raise InvalidInputError("method 'adaskip' needs the AdaSkip ranking (prompt IO similarity)")
    plan = plan_for_count(context.adaskip_ranking, count)
    if context.adaskip is None:
        return plan
    ratios = context.adaskip.norm_ratio
    scale = [(layer, "attention", ratios[layer][0]) for layer in plan.attention]
    scale += [(layer, "mlp", ratios[layer][1]) for layer in plan.mlp]
    return SkipPlan(attention=plan.attention, mlp=plan.mlp, scale=scale)


def all_points(
    methods: Sequence[str], context: MethodContext, sweeps: Mapping[str, Sequence[int]] | None = None
) -> list[MethodPoint]:
    """The full model first, then every point of every method, without duplicates (same method, count, stage)."""
    sweeps = dict(sweeps or {})
    unknown = sorted(set(sweeps) - set(SWEPT))
    if unknown:
        raise InvalidInputError(f"sweeps given for method(s) without a sweep: {unknown}; swept methods: {list(SWEPT)}")
    points = [full_point(context)]
    seen = {points[0].label}
    for method in methods:
        for point in method_points(method, context, sweeps.get(parse_method(method)[0])):
            if point.label not in seen:
                seen.add(point.label)
                points.append(point)
    return points


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """Parse ``METHOD=4,8,12`` (the --sweep option) into (method, counts); errors name what is wrong."""
    method, sep, values = text.partition("=")
    method = method.strip()
    if not sep or not values.strip():
        raise InvalidInputError(f"--sweep {text!r}: expected METHOD=N,N,... e.g. uniform=4,8,12")
    if method not in SWEPT:
        raise InvalidInputError(f"--sweep {text!r}: {method!r} has no sweep; swept methods: {', '.join(SWEPT)}")
    try:
        counts = [int(part) for part in values.split(",") if part.strip()]
    except ValueError:
        raise InvalidInputError(f"--sweep {text!r}: skip counts must be integers") from None
    return method, counts
