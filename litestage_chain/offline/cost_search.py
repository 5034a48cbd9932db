"""LiteStage step 2, made able to see accuracy and latency: a cost-aware, paired, chunked budget search.

The plain sweep (`search.search_budgets`) picks the fastest candidate whose accuracy on the slice reaches
full - epsilon. On a small slice that cannot see accuracy (a one-point epsilon is less than one question), it times
candidates minutes apart on a shared CPU, and its grid (step 8 over a ranking led by attention sub-layers) never
tries skipping an MLP, which holds most of a layer's weights. This search changes the three parts:

* **Which candidates.** Sub-layers are ranked by importance lost per second saved (`cost_aware_ranking`): one minus
  the residual cosine similarity, over the sub-layer's share of the weights a decode step reads. Both kinds compete.
  Skip counts step finely near zero (1, 2, 4, 6, 8, 12, ...), and each count is tried with each early-exit rule of a
  small grid (window, threshold, minimum tokens), so a stage's exit rule is searched together with its skips; each
  rule is also tried with nothing skipped (count 0), for stages that tolerate no skip. A grid of token caps
  (`cap_grid`) can be crossed with the rules: on a CPU a batch decodes until its longest row ends, so a cap that ends
  every row at one step can save more than a confidence rule ending rows anywhere from its minimum up.
* **Is it accurate enough.** Every candidate is compared with the full model question by question
  (`paired_decision`), evaluated in chunks and dropped at the first chunk where it is clearly worse; it is accepted
  only when, on the whole slice, its loss bound allows it. An undecided candidate is not accepted, and the search
  says how many questions would decide it.
* **Is it faster.** A candidate's latency is predicted from its deterministic token counts and its plan's measured
  costs per token (`cost_model`), measured alternating with the full model, not from seconds taken at another time.

Stages are searched slowest first (the full model's predicted seconds per stage), each with the stages already
searched fixed at their choice; among accepted candidates the lowest predicted latency wins (with a `speed_margin`,
the fewest answers lost among those predicted about as fast: `choose`), and "nothing more skipped in this stage" is
always a valid choice. Evaluations go through the `ResultsStore`, chunk by chunk, so an
interrupted search resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from statistics import fmean
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from litestage_chain.offline.cost_model import CostModel, tokens_of
from litestage_chain.data.types import Question, question_fingerprint
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.importance import SubLayer, plan_for_count
from litestage_chain.offline.paired_decision import DecisionRule, PairedComparison, Verdict, compare_answers
from litestage_chain.budgets.profile import MetricName, ModelIdentity, Profile, SearchedQuestions, StageBudget, TraceEntry
from litestage_chain.budgets.stages import ContextFormat
from litestage_chain.offline.search import accuracy_signal_caveat
from litestage_chain.offline.store import EvalResult, ResultsStore, merge_results
from litestage_chain.engine.skip_plan import SkipPlan, SubLayerKind

logger = logging.getLogger(__name__)
FALLBACK = "fallback"
DEFAULT_COUNTS = (1, 2, 4, 6, 8, 12, 16, 24, 32)
DEFAULT_EXIT_GRID: tuple[EarlyExitConfig | None, ...] = (
    None,
    EarlyExitConfig(window=8, threshold=0.3, min_tokens=16),
    EarlyExitConfig(window=4, threshold=0.5, min_tokens=8),
)


class RuleEvaluator(Protocol):
    """Runs the chain with per-stage plans, early-exit rules and token caps (`ChainEvaluator` is one).

    The search always passes `max_tokens`: the stages it caps, an empty mapping when none is."""

    identity: str

    def evaluate(
        self,
        plans: Mapping[str, SkipPlan],
        questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult: ...


Caps = Mapping[str, int | None]
"""Each stage's token cap (None: the evaluator's budget for it)."""


def cost_aware_ranking(similarity: torch.Tensor, weights: Sequence[tuple[int, int]]) -> list[SubLayer]:
    """Sub-layers in the order to skip them: least importance lost per second saved first.

    `similarity` is [num_layers, 2] (attention, MLP; e.g. the mean over stages of the residual cosine), `weights`
    each sub-layer's parameter count (`cost_model.sublayer_weights`), standing for the seconds skipping it saves.
    Ties go to the lower layer, attention first.
    """
    if similarity.ndim != 2 or similarity.shape[1] != 2 or similarity.shape[0] != len(weights):
        raise InvalidInputError(
            f"expected a [num_layers, 2] similarity for {len(weights)} layers, got shape {tuple(similarity.shape)}"
        )
    kinds: tuple[SubLayerKind, SubLayerKind] = ("attention", "mlp")
    entries = []
    for layer, pair in enumerate(weights):
        for column in range(2):
            if pair[column] <= 0:
                raise InvalidInputError(f"layer {layer} {kinds[column]} has no weights to save")
            lost = max(1.0 - float(similarity[layer, column]), 0.0)
            entries.append((lost / pair[column], layer, column))
    entries.sort(key=lambda item: (item[0], item[1], item[2]))
    return [(layer, kinds[column]) for _, layer, column in entries]


class CostSearchConfig(BaseModel):
    """Knobs of the cost-aware search."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[str, ...] = Field(("recall", "analysis", "summary"), min_length=1)
    epsilon: float = Field(0.01, ge=0.0, le=1.0, description="largest allowed loss against the full model")
    tolerance: float = Field(0.03, ge=0.0, le=1.0, description="how far above epsilon the loss's upper bound may be")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    metric: MetricName = "accuracy"
    counts: tuple[int, ...] = Field(DEFAULT_COUNTS, min_length=1, description="skip counts tried per stage (count 0, "
                                    "nothing skipped, is always tried; (0,) tries only the exit rules and caps)")
    exit_grid: tuple[EarlyExitConfig | None, ...] = Field(DEFAULT_EXIT_GRID, min_length=1)
    cap_grid: tuple[int | None, ...] = Field(
        (None,), min_length=1, description="token caps tried with every exit rule and count (None: the stage's own "
        "budget); the default tries no cap",
    )
    chunk_size: int = Field(25, ge=1, description="questions per chunk; a clearly worse candidate stops after one")
    batch_size: int = Field(1, ge=1, description="questions decoded together: the latency predicted is at this size")
    patience: int = Field(2, ge=1, description="consecutive skip counts with no exit rule accepted end a stage's sweep")
    speed_margin: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="accepted candidates predicted within this fraction of the fastest one's latency count as equally "
        "fast, and the one that loses the fewest answers on the slice among them wins (`choose`); 0 (the default): "
        "the fastest wins",
    )
    fixed: dict[str, StageBudget] = Field(
        default_factory=dict,
        description="stages kept at these settings (e.g. a profile's) and not searched: re-searching a profile's "
        "summary in the continued format needs only the summary's candidates",
    )

    @model_validator(mode="after")
    def _fixed_stages_are_searched_stages(self) -> "CostSearchConfig":
        unknown = sorted(set(self.fixed) - set(self.stages))
        if unknown:
            raise ValueError(f"fixed stage(s) {unknown} are not among the stages {list(self.stages)}")
        if set(self.fixed) == set(self.stages):
            raise ValueError("every stage is fixed: nothing is left to search")
        return self

    @model_validator(mode="after")
    def _caps_are_positive(self) -> "CostSearchConfig":
        bad = [cap for cap in self.cap_grid if cap is not None and cap < 1]
        if bad:
            raise ValueError(f"token caps must be >= 1 (or None for no cap), got {bad}")
        return self

    @property
    def stops(self) -> list[tuple[EarlyExitConfig | None, int | None]]:
        """Every (exit rule, cap) pair a stage is tried with at a count, rules first as given."""
        return [(rule, cap) for rule in self.exit_grid for cap in dict.fromkeys(self.cap_grid)]

    @property
    def fixed_stages(self) -> list[str]:
        """The fixed stages, in the order of `stages`."""
        return [stage for stage in self.stages if stage in self.fixed]

    def rule(self) -> DecisionRule:
        return DecisionRule(epsilon=self.epsilon, tolerance=self.tolerance, confidence=self.confidence)

    def describe_choice(self) -> str:
        """How a stage's winner is picked among its accepted candidates, for the search's log and profile notes."""
        if not self.speed_margin:
            return "the fastest accepted candidate wins"
        return (f"among accepted candidates predicted within {100 * self.speed_margin:g}% of the fastest, the one "
                "losing the fewest answers wins")


class Candidate(BaseModel):
    """One evaluated configuration: a plan and an early-exit rule per stage, and what the search concluded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str | None
    count: int
    plans: dict[str, SkipPlan]
    early_exit: dict[str, EarlyExitConfig | None]
    max_tokens: dict[str, int | None] = Field(default_factory=dict, description="each stage's token cap (missing or "
                                              "None: no cap)")
    result: EvalResult
    comparison: PairedComparison | None
    verdict: Verdict
    predicted_seconds: float
    questions_needed: int = 0
    kept: bool = Field(False, description="the fixed stages' start: every fixed stage as kept, the searched ones at "
                       "the full model (`stage` joins the fixed stages' names, e.g. 'recall+analysis')")


class CostSearchResult(BaseModel):
    """The chosen per-stage settings, the full model's numbers and every candidate the search looked at."""

    model_config = ConfigDict(frozen=True)

    config: CostSearchConfig
    ranking: list[SubLayer]
    stage_order: list[str]
    full: Candidate
    chosen: Candidate
    candidates: list[Candidate]
    questions_fingerprint: str
    evaluations: int
    caveats: list[str] = Field(default_factory=list)

    @property
    def predicted_speedup(self) -> float:
        return self.full.predicted_seconds / self.chosen.predicted_seconds if self.chosen.predicted_seconds else 0.0

    def resolution(self) -> str:
        """What the slice resolves about the chosen plans, e.g. 'loss 0.7 +- 2.1 points at 95% (...)'."""
        if self.chosen.comparison is None:
            return "the full model was chosen (nothing skipped)"
        return self.chosen.comparison.describe()

    def to_profile(
        self, *, model: ModelIdentity, questions: SearchedQuestions, context: ContextFormat, notes: str = ""
    ) -> Profile:
        """The chosen plans and exit rules as a `Profile`, stamped with the reasoning format they were searched in
        (required: a plan's accuracy holds only in that format)."""
        full_score = _score(self.full.result, self.config.metric, self.full.result.answers)
        trace = [_trace_entry(c, self.config.metric, self.full.result.answers, c is self.chosen) for c in self.candidates]
        lines = [f"cost-aware search: {self.config.rule().describe()}; {self.config.describe_choice()}; chosen: "
                 f"{self.resolution()}; predicted "
                 f"{self.full.predicted_seconds:.2f} s -> {self.chosen.predicted_seconds:.2f} s per question at batch "
                 f"{self.config.batch_size} ({self.predicted_speedup:.2f}x)"]
        return Profile(
            model=model,
            stages={s: StageBudget(plan=self.chosen.plans[s], early_exit=self.chosen.early_exit[s],
                                   max_tokens=self.chosen.max_tokens.get(s)) for s in self.config.stages},
            epsilon=self.config.epsilon,
            metric=self.config.metric,
            questions=questions.model_copy(update={"fingerprint": self.questions_fingerprint}),
            importance=self.ranking,
            stage_order=[*self.config.fixed_stages, *self.stage_order],  # the fixed stages first
            full_score=full_score,
            full_latency_seconds=self.full.predicted_seconds,
            trace=trace,
            notes="\n".join(t for t in (notes, *lines, *self.caveats) if t),
            context=context,
        )


def _score(result: EvalResult, metric: MetricName, reference: Mapping[str, str | None]) -> float:
    if metric == "accuracy":
        return result.accuracy or 0.0
    return fmean(1.0 if result.answers.get(q) == a else 0.0 for q, a in reference.items()) if reference else 0.0


def _trace_entry(candidate: Candidate, metric: MetricName, reference: Mapping[str, str | None], chosen: bool) -> TraceEntry:
    result = candidate.result
    return TraceEntry(
        stage=candidate.stage,
        skip_count=candidate.count,
        plans=candidate.plans,
        score=_score(result, metric, reference),
        accuracy=result.accuracy,
        mean_latency_seconds=result.mean_latency_seconds,
        generated_tokens=dict(result.generated_tokens_per_stage),
        meets_target=candidate.verdict == "accept",
        chosen=chosen,
        early_exit=candidate.early_exit,
        max_tokens=dict(candidate.max_tokens) or None,  # `candidate` stored them normalised
        predicted_seconds=candidate.predicted_seconds,
        verdict=candidate.verdict,
        loss=candidate.comparison.loss if candidate.comparison else None,
        loss_half_width=candidate.comparison.half_width if candidate.comparison else None,
        questions_evaluated=candidate.comparison.questions if candidate.comparison else len(result.answers),
    )


def _has_contexts(result: EvalResult) -> bool:
    """Whether a stored result has every call's token counts with the prompt length (older records lack it)."""
    return bool(result.tokens) and all(len(row) > 2 for rows in result.tokens.values() for row in rows if row)


def exit_rules_key(early_exit: Mapping[str, EarlyExitConfig | None]) -> str:
    """The part of a chunk's store identity that names its per-stage exit rules (`exit-<digest>`).

    Public because tools that read a search log (`benchmarks/repredict.py`) pick chunks by their rules with it; a
    stored identity is `<evaluator identity>:<this>`."""
    payload = {s: (r.model_dump() if r else None) for s, r in sorted(early_exit.items())}
    return "exit-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def caps_key(caps: Caps) -> str:
    """The part of a chunk's store identity that names its per-stage token caps (`caps-<digest>`); absent from the
    identity of a chunk run without caps, so every result stored before caps were searched keeps its key."""
    payload = {s: c for s, c in sorted(caps.items()) if c is not None}
    return "caps-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def set_caps(caps: Caps | None) -> dict[str, int]:
    """Only the stages `caps` does cap (None entries dropped): the one form caps take inside the search, so a chunk
    evaluated with {"analysis": None} and one with {} are the same evaluation under the same key."""
    return {stage: cap for stage, cap in (caps or {}).items() if cap is not None}


class _Runner:
    """Evaluates candidates chunk by chunk through the store, deciding after each chunk."""

    def __init__(
        self, evaluator: RuleEvaluator, questions: Sequence[Question], store: ResultsStore, costs: CostModel,
        config: CostSearchConfig,
    ) -> None:
        self.evaluator = evaluator
        self.questions = list(questions)
        self.chunks = [self.questions[i : i + config.chunk_size] for i in range(0, len(self.questions), config.chunk_size)]
        self.fingerprints = [question_fingerprint(chunk) for chunk in self.chunks]
        self.store = store
        self.costs = costs
        self.config = config
        self.rule = config.rule()
        self.gold = None if config.metric == "agreement" else {q.id: q.answer for q in self.questions}
        self.evaluations = 0

    def _identity(self, early_exit: Mapping[str, EarlyExitConfig | None], caps: Caps | None = None) -> str:
        """The store identity of a chunk evaluated with these exit rules and caps."""
        identity = f"{self.evaluator.identity}:{exit_rules_key(early_exit)}"
        return identity + f":{caps_key(caps)}" if set_caps(caps) else identity

    def _chunk(
        self, index: int, plans: Mapping[str, SkipPlan], early_exit: Mapping[str, EarlyExitConfig | None],
        caps: Mapping[str, int] | None = None,
    ) -> EvalResult:
        """One chunk's result, from the store or evaluated. `caps` as `candidate` normalised them (`set_caps`)."""
        caps = dict(caps or {})
        identity = self._identity(early_exit, caps)
        cached = self.store.lookup(plans, self.fingerprints[index], identity)
        if cached is not None and _has_contexts(cached):
            return cached
        same = self._without_a_stop_that_cannot_fire(index, plans, early_exit, caps)
        if same is not None:
            reason, base = same
            self.store.put(plans, self.fingerprints[index], identity, base, same_as=reason)
            return base
        result = self.evaluator.evaluate(dict(plans), self.chunks[index], dict(early_exit), max_tokens=caps)
        missing = [q.id for q in self.chunks[index] if q.id not in result.answers]
        if missing:
            raise InvalidInputError(f"the evaluator returned no answer for question(s) {missing[:5]}")
        if not result.tokens:
            raise InvalidInputError("the evaluator reported no token counts; the cost model needs them")
        self.evaluations += 1
        provenance = getattr(self.evaluator, "provenance", None) or {}  # who measured it, on distributed runs
        self.store.put(plans, self.fingerprints[index], identity, result, **provenance)
        return result

    def _without_a_stop_that_cannot_fire(
        self, index: int, plans: Mapping[str, SkipPlan], early_exit: Mapping[str, EarlyExitConfig | None],
        caps: Mapping[str, int],
    ) -> tuple[str, EvalResult] | None:
        """A stored chunk result this evaluation would reproduce exactly, with why it is the same.

        An exit rule first looks at a row after max(window, min_tokens) tokens, and a cap stops a row at its
        count. If, with the same settings but that stage's rule (or cap) removed, every row of the stage ended before
        that many tokens, the rule (cap) never stops a row: every token, the batch's shrinking and so every later
        stage come out the same. Short stages gain: on the CSQA logs, about a fifth of summary chunks (8 tokens
        mostly, but a few rows run to the 24-token budget).
        """
        alternatives: list[tuple[str, str, Mapping[str, EarlyExitConfig | None], Caps, int]] = []
        for stage, rule in early_exit.items():
            if rule is not None:
                alternatives.append((stage, f"the {stage} stage without its exit rule: no row reached the rule's first "
                                     "check", {**early_exit, stage: None}, caps, max(rule.window, rule.min_tokens)))
        for stage, cap in caps.items():
            alternatives.append((stage, f"the {stage} stage without its cap: no row reached {cap} tokens",
                                 early_exit, {**caps, stage: None}, cap))
        for stage, reason, rules, other_caps, first_stop in alternatives:
            base = self.store.lookup(plans, self.fingerprints[index], self._identity(rules, other_caps))
            if base is None or not _has_contexts(base):
                continue
            rows = [row for row in base.tokens.get(stage) or [] if row is not None]
            if rows and max(row[1] for row in rows) < first_stop:
                return reason, base
        return None

    def predict(self, plans: Mapping[str, SkipPlan], result: EvalResult) -> float:
        return self.costs.predict({**plans, FALLBACK: SkipPlan()}, tokens_of(result.tokens), self.config.batch_size)

    def full(self) -> Candidate:
        plans = {stage: SkipPlan() for stage in self.config.stages}
        rules: dict[str, EarlyExitConfig | None] = {stage: None for stage in self.config.stages}
        result = merge_results([self._chunk(i, plans, rules) for i in range(len(self.chunks))])
        return Candidate(stage=None, count=0, plans=plans, early_exit=rules, result=result, comparison=None,
                         verdict="accept", predicted_seconds=self.predict(plans, result))

    def candidate(
        self, stage: str, count: int, plans: Mapping[str, SkipPlan], early_exit: Mapping[str, EarlyExitConfig | None],
        full: Candidate, *, caps: Caps | None = None, kept: bool = False,
    ) -> Candidate:
        parts: list[EvalResult] = []
        verdict: Verdict = "undecided"
        comparison: PairedComparison | None = None
        caps = set_caps(caps)
        for index in range(len(self.chunks)):
            parts.append(self._chunk(index, plans, early_exit, caps))
            seen = [q.id for chunk in self.chunks[: index + 1] for q in chunk]
            answers = {qid: a for part in parts for qid, a in part.answers.items()}
            comparison = compare_answers(full.result.answers, answers, self.gold, seen, self.rule.confidence)
            final = index == len(self.chunks) - 1
            verdict = self.rule.decide(comparison, final=final)
            if verdict == "reject" or final:
                break
        assert comparison is not None
        result = merge_results(parts)
        needed = self.rule.questions_needed(comparison) if verdict == "undecided" else 0
        return Candidate(stage=stage, count=count, plans=dict(plans), early_exit=dict(early_exit), max_tokens=caps,
                         result=result, comparison=comparison, verdict=verdict, predicted_seconds=self.predict(plans, result),
                         questions_needed=needed, kept=kept)


def net_lost(candidate: Candidate) -> int:
    """Answers the candidate loses against the full model minus those it gains, on the questions it was compared on
    (0 for the full model itself)."""
    comparison = candidate.comparison
    return 0 if comparison is None else comparison.lost - comparison.gained


def choose(options: Sequence[Candidate], speed_margin: float = 0.0) -> Candidate:
    """The winner among a stage's accepted candidates: the lowest predicted latency, unless others are predicted
    within `speed_margin` (a fraction) of it; then the one losing the fewest answers among those, faster first on a tie.

    Why a margin: predicted latencies differ from side-by-side measurements by a few percent (the cost model's error),
    so a candidate predicted 1% faster is not measurably faster, while the answers it loses are counted on the very
    questions every candidate was compared on. Without a margin the search takes any such 1% at whatever loss the
    rule still accepts, which is the winner's curse the paired rule is meant to avoid.
    """
    if not options:
        raise InvalidInputError("there is no candidate to choose from")
    fastest = min(options, key=lambda c: (c.predicted_seconds, c.count))
    if not speed_margin:  # exactly the rule of the searches recorded before the margin existed
        return fastest
    near = [c for c in options if c.predicted_seconds <= fastest.predicted_seconds * (1.0 + speed_margin)]
    return min(near, key=lambda c: (net_lost(c), c.predicted_seconds, c.count))


def search_cost_aware(
    evaluator: RuleEvaluator,
    questions: Sequence[Question],
    ranking: Sequence[SubLayer],
    costs: CostModel,
    config: CostSearchConfig | None = None,
    *,
    store: ResultsStore | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> CostSearchResult:
    """Per-stage plans and early-exit rules: the lowest predicted latency the decision rule accepts (module doc)."""
    config = config or CostSearchConfig()
    if not questions:
        raise InvalidInputError("the search needs at least one question")
    if not ranking:
        raise InvalidInputError("the importance ranking is empty")
    too_many = [c for c in config.counts if c > len(ranking) or c < 0]
    if too_many:
        raise InvalidInputError(f"skip counts {too_many} are outside 0..{len(ranking)} (the ranked sub-layers)")
    if config.metric == "accuracy" and any(q.answer is None for q in questions):
        raise InvalidInputError("metric 'accuracy' needs every question labelled; use metric='agreement'")
    runner = _Runner(evaluator, questions, store if store is not None else ResultsStore(), costs, config)
    report = on_candidate or (lambda candidate: None)

    full = runner.full()
    report(full)
    caveats: list[str] = []
    if config.metric == "accuracy":
        caveat = accuracy_signal_caveat(full.result.accuracy or 0.0, questions)
        if caveat is not None:
            warnings.warn(caveat, UserWarning, stacklevel=2)
            caveats.append(caveat)
    rule = config.rule()
    best_case = PairedComparison(questions=len(questions), lost=0, gained=0, confidence=config.confidence)
    if rule.decide(best_case, final=True) != "accept":
        caveat = (f"the slice is too small to decide: even a candidate that changes no answer has {best_case.describe()}, "
                  f"above the accepted {100 * (config.epsilon + config.tolerance):.1f} points; search on more questions")
        warnings.warn(caveat, UserWarning, stacklevel=2)
        caveats.append(caveat)

    full_tokens = tokens_of(full.result.tokens)
    stage_seconds = {stage: runner.costs.predict({stage: SkipPlan()}, {stage: full_tokens[stage]}, config.batch_size)
                     for stage in config.stages}
    order = sorted((s for s in config.stages if s not in config.fixed), key=lambda stage: -stage_seconds[stage])
    plans = {**full.plans, **{stage: budget.plan for stage, budget in config.fixed.items()}}
    rules = {**full.early_exit, **{stage: budget.early_exit for stage, budget in config.fixed.items()}}
    caps: dict[str, int | None] = {stage: budget.max_tokens for stage, budget in config.fixed.items()}
    current = full
    candidates = [full]
    if config.fixed:  # the fixed stages with the others at the full model: where the searched stages start from
        current = runner.candidate("+".join(config.fixed_stages), 0, plans, rules, full, caps=caps, kept=True)
        candidates.append(current)
        report(current)
        if current.verdict != "accept":
            caveat = (f"the fixed stages alone are not accepted against the full model ({current.verdict}: "
                      f"{current.comparison.describe() if current.comparison else ''}): every candidate includes them")
            warnings.warn(caveat, UserWarning, stacklevel=2)
            caveats.append(caveat)
    for stage in order:
        options = [current]
        failed_in_a_row = 0
        # Count 0 first: early exit alone, every sub-layer kept. Where a stage tolerates no skip at all (the benchmark
        # model's analysis stage), it is the only way to shorten it; its rejections say nothing about skipping, so
        # they do not count towards the patience that ends the sweep. A count fails when no rule is accepted with it:
        # rejected, or undecided on the whole slice (which took every question to find out, and skipping more does
        # not make a plan more accurate), so a slice too small for a stage's flips does not sweep every count.
        # A stop is an (exit rule, token cap) pair; count 0 leaves out the stage's current stop and "no rule, no cap".
        current_stop = (rules[stage], caps.get(stage))
        for count in sorted({0, *config.counts}):
            plan = plan_for_count(ranking, count)
            outcomes = []
            stops = config.stops if count else [s for s in config.stops if s not in ((None, None), current_stop)]
            for rule_option, cap in stops:
                candidate = runner.candidate(stage, count, {**plans, stage: plan}, {**rules, stage: rule_option}, full,
                                             caps={**caps, stage: cap})
                candidates.append(candidate)
                outcomes.append(candidate.verdict)
                report(candidate)
                if candidate.verdict == "accept":
                    options.append(candidate)
            if count == 0:
                continue
            failed_in_a_row = failed_in_a_row + 1 if "accept" not in outcomes else 0
            if failed_in_a_row >= config.patience:
                logger.info("stage=%s: no exit rule accepted for %d counts; sweep stopped at %d", stage,
                            failed_in_a_row, count)
                break
        current = choose(options, config.speed_margin)
        plans[stage] = current.plans[stage]
        rules[stage] = current.early_exit[stage]
        caps[stage] = current.max_tokens.get(stage)
    return CostSearchResult(
        config=config, ranking=list(ranking), stage_order=order, full=full, chosen=current, candidates=candidates,
        questions_fingerprint=question_fingerprint(questions), evaluations=runner.evaluations, caveats=caveats,
    )
