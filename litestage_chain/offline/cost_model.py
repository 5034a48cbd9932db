"""Latency from a measured cost model: what a plan costs per prefill token and per decode step, times token counts.

Why: the search used to compare candidates by the seconds their evaluations took, measured minutes or hours apart on
a shared CPU, so a candidate timed in a quiet spell won (one search implied 2.33x for a plan measured at 1.38x side
by side). Decoding is greedy, so a candidate's token counts are deterministic; only the price of a token depends on
the machine's load. This module measures that price per plan, alternating with the full model so both are measured
under the same load, and predicts a candidate's latency as its token counts times those prices.

The model follows the engine (`generation.generate`): a batch's prefill is packed (its cost follows the real tokens
of all rows), and every decode step runs the rows still active (a row with t generated tokens was in t - 1 decode
forward passes: its first token comes from the prefill's logits). A row's time is the batch's prefill plus the decode
steps until it finished, as each stage's seconds are reported.

Each plan's costs are stored relative to the full model's costs measured in the same rounds (median of the ratios),
then scaled by the full model's reference costs (timed once, first): candidates measured at different times become
comparable, because a busy spell raises both sides of a ratio alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from litestage_chain.engine.generation import GenerationConfig, generate
from litestage_chain.engine.prefix_cache import PrefixCache
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.append_store import AppendStore, content_key
from litestage_chain.errors import InvalidInputError, LiteStageError
from litestage_chain.offline.store import plans_payload

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel

COST_FORMAT = "cost-v1"
REFERENCE = "full-model-reference-v2"
"""v2: the reference also times prefill after a cached prefix (`prefill_context_seconds`); a v1 reference lacks it and
is timed again, while plans' ratios (no context terms) stay valid."""


class PlanCosts(BaseModel):
    """Seconds per prefill token and per decode step, by batch size, of one plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_token_seconds: dict[int, float] = Field(description="batch size -> seconds per prefilled token")
    decode_step_seconds: dict[int, float] = Field(description="batch size -> seconds per decode forward pass")
    context_tokens: int = Field(0, ge=0, description="context (KV entries) the decode steps were timed at")
    decode_context_seconds: dict[int, float] = Field(
        default_factory=dict, description="batch size -> extra seconds per decode step per token of context beyond "
        "`context_tokens` (attention reads every cached key and value); empty: context not modelled",
    )
    prefill_context_seconds: dict[int, float] = Field(
        default_factory=dict, description="batch size -> extra seconds per prefilled token per token already cached "
        "before it (a reused few-shot prefix or earlier stage: every prefilled token attends to it, and a call copies "
        "a shared prefix into its own cache); empty: not modelled",
    )

    @field_validator("prefill_token_seconds", "decode_step_seconds")
    @classmethod
    def _sizes_and_costs(cls, value: dict[int, float]) -> dict[int, float]:
        if not value:
            raise ValueError("at least one batch size must be measured")
        if any(size < 1 or cost < 0 for size, cost in value.items()):
            raise ValueError(f"batch sizes must be >= 1 and costs >= 0, got {value}")
        return dict(sorted(value.items()))

    def prefill(self, batch_size: int, reused: float | None = None) -> float:
        """Seconds per prefilled token at `batch_size` after `reused` cached tokens (None: priced as timed)."""
        base = _interpolate(self.prefill_token_seconds, batch_size)
        if reused is None or not self.prefill_context_seconds:
            return base
        return base + _interpolate(self.prefill_context_seconds, batch_size) * max(reused, 0.0)

    def decode(self, batch_size: int, context: float | None = None) -> float:
        """Seconds of one decode step of `batch_size` rows whose mean context is `context` tokens (None: as timed)."""
        base = _interpolate(self.decode_step_seconds, batch_size)
        if context is None or not self.decode_context_seconds:
            return base
        slope = _interpolate(self.decode_context_seconds, batch_size)
        return max(base + slope * (context - self.context_tokens), 0.0)

    def scaled(self, ratios: PlanCosts) -> PlanCosts:
        """These costs times per-size `ratios` (a plan's costs relative to the full model's)."""
        return PlanCosts(
            prefill_token_seconds={b: c * ratios.prefill(b) for b, c in self.prefill_token_seconds.items()},
            decode_step_seconds={b: c * ratios.decode(b) for b, c in self.decode_step_seconds.items()},
            context_tokens=self.context_tokens,
            decode_context_seconds=dict(self.decode_context_seconds),
            prefill_context_seconds=dict(self.prefill_context_seconds),
        )

    def with_attention_share(self, share: float) -> PlanCosts:
        """The context terms scaled to the share of attention sub-layers a plan runs (only attention reads the cache,
        and a skipped layer's cached entries are neither read nor copied)."""
        return self.model_copy(update={
            "decode_context_seconds": {b: c * share for b, c in self.decode_context_seconds.items()},
            "prefill_context_seconds": {b: c * share for b, c in self.prefill_context_seconds.items()},
        })


def _interpolate(table: Mapping[int, float], size: int) -> float:
    """Linear in the batch size between measured sizes; the nearest measured size outside them."""
    if size < 1:
        raise InvalidInputError(f"batch size must be >= 1, got {size}")
    sizes = sorted(table)
    if size <= sizes[0]:
        return table[sizes[0]]
    if size >= sizes[-1]:
        return table[sizes[-1]]
    for low, high in zip(sizes, sizes[1:]):
        if low <= size <= high:
            share = (size - low) / (high - low)
            return table[low] + share * (table[high] - table[low])
    raise AssertionError("unreachable")


class RowTokens(BaseModel):
    """One question's tokens in one stage call: prompt tokens prefilled by the call, and tokens generated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefilled: int = Field(ge=0)
    generated: int = Field(ge=0)
    context: int | None = Field(None, ge=0, description="the whole prompt, shared prefix included: the KV entries "
                                "before the first decode step (None: not known, decode steps priced as timed)")

    @classmethod
    def from_record(cls, record: Sequence[int] | None) -> RowTokens | None:
        """From an `EvalResult.tokens` entry: (prefilled, generated[, prompt tokens]) or None."""
        if record is None:
            return None
        return cls(prefilled=record[0], generated=record[1], context=record[2] if len(record) > 2 else None)


def tokens_of(result_tokens: Mapping[str, Sequence[Sequence[int] | None]]) -> dict[str, list[RowTokens | None]]:
    """`EvalResult.tokens` as `RowTokens` per call, what `predict_seconds` takes."""
    return {call: [RowTokens.from_record(row) for row in rows] for call, rows in result_tokens.items()}


def batch_seconds(costs: PlanCosts, rows: Sequence[RowTokens]) -> list[float]:
    """Predicted seconds of every row of one batch (prefill of the whole batch + its own decode steps)."""
    if not rows:
        return []
    size = len(rows)
    prefill = sum(row.prefilled * costs.prefill(size, None if row.context is None else row.context - row.prefilled)
                  for row in rows)
    # The forward pass after step s runs the rows with more than s + 1 tokens: the active count only changes where a
    # row finishes, so the decode time is summed segment by segment between those points.
    ends = sorted({max(row.generated - 1, 0) for row in rows})
    finished_by: dict[int, float] = {0: 0.0}  # passes -> decode seconds elapsed after that many forward passes
    elapsed, done = 0.0, 0
    for end in ends:
        if end > done:
            active = [row for row in rows if row.generated - 1 > done]
            contexts = [row.context for row in active]
            if any(c is None for c in contexts):
                elapsed += (end - done) * costs.decode(len(active))
            else:  # the context grows by one token per step: price the segment at its middle step
                middle = sum(contexts) / len(contexts) + (done + end - 1) / 2  # type: ignore[arg-type]
                elapsed += (end - done) * costs.decode(len(active), middle)
            done = end
        finished_by[end] = elapsed
    return [prefill + finished_by[max(row.generated - 1, 0)] for row in rows]


def predict_seconds(
    costs_for: Callable[[str], PlanCosts], tokens: Mapping[str, Sequence[RowTokens | None]], batch_size: int
) -> float:
    """Predicted mean seconds per question: every call (stage) batched in question order, `batch_size` at a time.

    `tokens[call][i]` is question i's tokens in that call, None when the call did not run for it (the fallback
    re-run of an unreadable summary); `costs_for(call)` the costs of the plan that call ran.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    counts = {len(rows) for rows in tokens.values()}
    if len(counts) != 1 or 0 in counts:
        raise InvalidInputError(f"every call needs the tokens of the same questions, got counts {sorted(counts)}")
    total = 0.0
    for call, rows in tokens.items():
        present = [row for row in rows if row is not None]
        costs = costs_for(call)
        for start in range(0, len(present), batch_size):
            total += sum(batch_seconds(costs, present[start : start + batch_size]))
    return total / counts.pop()


# ------------------------------------------------------------------------------------------------ measurement


class PlanTimer(Protocol):
    """Times one plan once; with `context`, also the extra decode cost per token of context (the reference only)."""

    def __call__(self, plan: SkipPlan, *, context: bool = False) -> PlanCosts: ...


def engine_timer(
    model: LoadedModel, batch_sizes: Sequence[int], prompt_tokens: int = 128, decode_steps: int = 16,
    long_context: int = 1024,
) -> PlanTimer:
    """A timer running the engine: one prefill of `prompt_tokens` per row and `decode_steps` forced steps per size.

    Asked for the context costs (the full model's reference timings), it also runs the same `prompt_tokens` after a
    shared prefix that makes the prompt `long_context` tokens, as a stage prompt follows its few-shot exemplars: the
    extra cost of a prefilled token per cached token before it, and of a decode step per token of context (a plan's
    are the full model's times its share of attention sub-layers, see `CostModel.costs`). Why the prefill term: a
    stage prefills 70-120 tokens after 350 cached ones, which on the benchmark model costs about 10% more per token
    than the same tokens prefilled alone.
    """
    if prompt_tokens < 1 or decode_steps < 2:
        raise InvalidInputError("the cost timer needs at least 1 prompt token and 2 decode steps")
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise InvalidInputError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    room = model.max_positions - decode_steps - 1
    length = min(prompt_tokens, room)
    long_length = max(min(long_context, room), length)
    prompt = [(7 + 31 * i) % model.vocab_size for i in range(long_length)]  # fixed, content-free token ids
    config = GenerationConfig(max_new_tokens=decode_steps, ignore_eos=True)
    cached = long_length - length  # the shared prefix before the last `length` tokens of the long prompt

    def time_plan(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        prefill: dict[int, float] = {}
        decode: dict[int, float] = {}
        decode_slope: dict[int, float] = {}
        prefill_slope: dict[int, float] = {}
        prefixes = PrefixCache() if context else None  # private: the prefix's computation is timed apart
        for size in sizes:
            result = generate(model, [prompt[:length]] * size, plan=plan, config=config)[0]
            prefill[size] = result.prefill_seconds / (size * length)
            decode[size] = result.decode_seconds / (result.generated_tokens - 1)
            if context and cached > 0:
                longer = generate(model, [prompt] * size, plan=plan, config=config, shared_prefix=prompt[:cached],
                                  prefix_cache=prefixes)[0]
                step = longer.decode_seconds / (longer.generated_tokens - 1)
                decode_slope[size] = max(step - decode[size], 0.0) / cached
                per_token = longer.prefill_seconds / (size * length)
                prefill_slope[size] = max(per_token - prefill[size], 0.0) / cached
        return PlanCosts(prefill_token_seconds=prefill, decode_step_seconds=decode,
                         context_tokens=length + decode_steps // 2, decode_context_seconds=decode_slope,
                         prefill_context_seconds=prefill_slope)

    return time_plan


class SublayerCosts(BaseModel):
    """The share of the full model's cost per prefilled token and per decode step that one sub-layer of each kind
    takes, by batch size: a plan's cost ratio is one minus its skipped sub-layers' shares.

    Why: timed plan by plan, two alternating rounds on a shared CPU gave ratios off by up to 30% (an OBQA plan skipping
    one MLP of 28 came out at 0.70 of the full model's prefill cost, where its weights make it about 0.97), and a
    search that believed them predicted 1.34x for plans measured at 1.11-1.17x. Every attention sub-layer of a model
    holds the same weights, as does every MLP, so one timing of many skipped sub-layers of a kind, repeated, measures
    the per-sub-layer share with the noise divided by their number.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention: PlanCosts = Field(description="the share of one attention sub-layer (a cost ratio per sub-layer)")
    mlp: PlanCosts = Field(description="the share of one MLP sub-layer")

    @classmethod
    def from_ratios(cls, attention: PlanCosts, attention_count: int, mlp: PlanCosts, mlp_count: int) -> SublayerCosts:
        """From the measured ratios of a plan skipping `attention_count` attention sub-layers and one skipping
        `mlp_count` MLP sub-layers."""

        def share(ratios: PlanCosts, count: int) -> PlanCosts:
            return PlanCosts(
                prefill_token_seconds={b: max(1.0 - r, 0.0) / count for b, r in ratios.prefill_token_seconds.items()},
                decode_step_seconds={b: max(1.0 - r, 0.0) / count for b, r in ratios.decode_step_seconds.items()},
            )

        return cls(attention=share(attention, attention_count), mlp=share(mlp, mlp_count))

    def describe(self, batch_size: int) -> str:
        """One line for a profile's notes: what one sub-layer of each kind costs at `batch_size`."""
        return (f"one attention sub-layer {100 * self.attention.prefill(batch_size):.2f}% of a prefilled token and "
                f"{100 * self.attention.decode(batch_size):.2f}% of a decode step at batch {batch_size}, one MLP "
                f"{100 * self.mlp.prefill(batch_size):.2f}% and {100 * self.mlp.decode(batch_size):.2f}%")

    def ratios(self, plan: SkipPlan) -> PlanCosts:
        """A plan's costs relative to the full model's (never below 5%: the embedding and head always run)."""
        attention, mlp = len(plan.attention), len(plan.mlp)

        def ratio(pick: Callable[[PlanCosts], dict[int, float]]) -> dict[int, float]:
            return {b: max(1.0 - attention * pick(self.attention)[b] - mlp * pick(self.mlp)[b], 0.05)
                    for b in pick(self.attention)}

        return PlanCosts(prefill_token_seconds=ratio(lambda c: c.prefill_token_seconds),
                         decode_step_seconds=ratio(lambda c: c.decode_step_seconds))


class CostModel:
    """Per-plan costs measured alternating with the full model, kept in memory and (with `path`) in a JSONL file.

    `timer(plan)` measures one plan once; `rounds` alternating pairs (full first in even rounds) are taken per plan.
    `identity` keys the file's records (model weights, timer settings): a record of other settings is never used.

    With `calibration_rounds` (and `num_layers`), a plan's ratios come from `SublayerCosts` instead: two calibration
    plans, half the layers' attention and half the layers' MLP skipped, each timed that many alternating rounds once;
    no plan is then timed on its own.
    """

    def __init__(
        self, timer: PlanTimer, identity: str, *, rounds: int = 2, path: str | Path | None = None,
        num_layers: int | None = None, calibration_rounds: int | None = None,
    ) -> None:
        if rounds < 1:
            raise InvalidInputError(f"the cost model needs at least one round per plan, got {rounds}")
        if calibration_rounds is not None and (calibration_rounds < 1 or not num_layers or num_layers < 2):
            raise InvalidInputError("per-sub-layer costs need calibration_rounds >= 1 and a model of >= 2 layers, got "
                                    f"{calibration_rounds} rounds and {num_layers} layers")
        self.timer = timer
        self.identity = identity
        self.num_layers = num_layers
        self.rounds = rounds
        self.calibration_rounds = calibration_rounds
        self._sublayer: SublayerCosts | None = None
        self.reference: list[PlanCosts] = []
        self._ratios: dict[str, PlanCosts] = {}
        self.measurements = 0
        self._full_median: PlanCosts | None = None
        self._absolute: dict[str, PlanCosts] = {}
        self.store: AppendStore[CostRecord] = AppendStore(path, parse=_parse_cost_line, what="cost record",
                                                          error=CostLogError)
        stored = self.store.get(self._reference_key())
        if stored is not None:
            self.reference = list(stored.full)

    def _key(self, plan: SkipPlan, rounds: int | None = None) -> str:
        fields: dict[str, object] = {"format": COST_FORMAT, "plan": plans_payload({"p": plan}), "identity": self.identity}
        if rounds is not None:  # a calibration plan's record: its rounds are part of what was measured
            fields["calibration_rounds"] = rounds
        return content_key(fields)

    def _reference_key(self) -> str:
        return content_key({"format": COST_FORMAT, "reference": REFERENCE, "identity": self.identity})

    def _save(self, key: str, ratios: PlanCosts | None, full: Sequence[PlanCosts]) -> None:
        record = CostRecord(ratios=ratios, full=list(full))
        line = json.dumps({"key": key, "identity": self.identity, **record.model_dump(mode="json")})
        self.store.append([(key, record, line)])

    def ratios(self, plan: SkipPlan) -> PlanCosts:
        """The plan's costs relative to the full model's: from the per-sub-layer shares in calibrated mode, else
        measured for this plan (median over alternating rounds), once."""
        if plan.is_empty:
            return _unit_ratios(self.full_costs())
        if self.calibration_rounds is not None:
            return self.sublayer_costs().ratios(plan)
        return self._measured(plan, self.rounds)

    @property
    def calibrated_shares(self) -> SublayerCosts | None:
        """The per-sub-layer shares if a plan has been priced from them (nothing is timed to answer)."""
        return self._sublayer

    def sublayer_costs(self) -> SublayerCosts:
        """The per-sub-layer shares, from the two calibration plans (measured once, kept in the log)."""
        if self._sublayer is None:
            assert self.calibration_rounds is not None and self.num_layers is not None
            layers = list(range(0, self.num_layers, 2))  # every other layer: half of them, spread over the depth
            attention = self._measured(SkipPlan(attention=layers), self.calibration_rounds, calibration=True)
            mlp = self._measured(SkipPlan(mlp=layers), self.calibration_rounds, calibration=True)
            self._sublayer = SublayerCosts.from_ratios(attention, len(layers), mlp, len(layers))
        return self._sublayer

    def _measured(self, plan: SkipPlan, rounds: int, calibration: bool = False) -> PlanCosts:
        key = self._key(plan, rounds if calibration else None)
        stored = self.store.get(key)
        if key not in self._ratios and stored is not None and stored.ratios is not None:
            self._ratios[key] = stored.ratios
        if key not in self._ratios:
            full_runs: list[PlanCosts] = []
            plan_runs: list[PlanCosts] = []
            for round_number in range(rounds):
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for is_full in order:
                    (full_runs if is_full else plan_runs).append(self.timer(SkipPlan() if is_full else plan))
            self.measurements += 1
            ratios = _median_ratios(plan_runs, full_runs)
            self._ratios[key] = ratios
            self._save(key, ratios, full_runs)
        return self._ratios[key]

    def full_costs(self) -> PlanCosts:
        """The full model's reference costs: the median of `rounds` timings taken once, first (and kept in the log).

        Fixed once measured, so every candidate's predicted latency, and so the search's choices, are the same when
        an interrupted search resumes.
        """
        if not self.reference:
            self.reference = [self.timer(SkipPlan(), context=True) for _ in range(self.rounds)]
            self._save(self._reference_key(), None, self.reference)
        if self._full_median is None:
            self._full_median = _median_costs(self.reference)
        return self._full_median

    def costs(self, plan: SkipPlan) -> PlanCosts:
        """The plan's absolute costs: its ratios times the full model's reference costs."""
        key = self._key(plan)
        if key not in self._absolute:
            costs = self.full_costs().scaled(self.ratios(plan))
            if self.num_layers:
                costs = costs.with_attention_share(1.0 - len(plan.attention) / self.num_layers)
            self._absolute[key] = costs
        return self._absolute[key]

    def predict(
        self, plans: Mapping[str, SkipPlan], tokens: Mapping[str, Sequence[RowTokens | None]], batch_size: int
    ) -> float:
        """Predicted mean seconds per question of calls run with `plans[call]` and these token counts."""
        unknown = sorted(set(tokens) - set(plans))
        if unknown:
            raise InvalidInputError(f"token counts for call(s) {unknown} that have no plan")
        return predict_seconds(lambda call: self.costs(plans[call]), tokens, batch_size)


class CostLogError(LiteStageError):
    """The cost log exists but a line other than a partial last one cannot be read back."""


class CostRecord(BaseModel):
    """One line of the cost log: a plan's cost ratios (None for the full-model reference) and the full-model timings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratios: PlanCosts | None
    full: list[PlanCosts]


def _parse_cost_line(raw: bytes) -> tuple[str, CostRecord]:
    data = json.loads(raw)
    return str(data["key"]), CostRecord(ratios=data["ratios"], full=data["full"])


def _unit_ratios(sizes: PlanCosts) -> PlanCosts:
    return PlanCosts(prefill_token_seconds={b: 1.0 for b in sizes.prefill_token_seconds},
                     decode_step_seconds={b: 1.0 for b in sizes.decode_step_seconds})


def _median_costs(samples: Sequence[PlanCosts]) -> PlanCosts:
    sizes_p = samples[0].prefill_token_seconds
    sizes_d = samples[0].decode_step_seconds
    sizes_c = samples[0].decode_context_seconds
    sizes_pc = samples[0].prefill_context_seconds
    return PlanCosts(
        prefill_token_seconds={b: median(s.prefill_token_seconds[b] for s in samples) for b in sizes_p},
        decode_step_seconds={b: median(s.decode_step_seconds[b] for s in samples) for b in sizes_d},
        context_tokens=samples[0].context_tokens,
        decode_context_seconds={b: median(s.decode_context_seconds[b] for s in samples) for b in sizes_c},
        prefill_context_seconds={b: median(s.prefill_context_seconds[b] for s in samples) for b in sizes_pc},
    )


def _median_ratios(plan_runs: Sequence[PlanCosts], full_runs: Sequence[PlanCosts]) -> PlanCosts:
    """Median over rounds of plan cost / full cost, each round's pair measured back to back."""
    pairs = list(zip(plan_runs, full_runs, strict=True))

    def ratio(pick: Callable[[PlanCosts], dict[int, float]]) -> dict[int, float]:
        return {b: median(pick(p)[b] / pick(f)[b] if pick(f)[b] > 0 else 1.0 for p, f in pairs) for b in pick(pairs[0][1])}

    return PlanCosts(prefill_token_seconds=ratio(lambda c: c.prefill_token_seconds),
                     decode_step_seconds=ratio(lambda c: c.decode_step_seconds))


def sublayer_weights(model: LoadedModel) -> list[tuple[int, int]]:
    """Projection weights (parameter counts) of every layer's attention and MLP sub-layer.

    Decoding one token reads every weight of every sub-layer it runs once, and on a CPU decode time follows the bytes
    read, so a sub-layer's share of the weights is its share of a decode step (the cost-aware ranking uses this).
    """
    view = model.view
    hidden = int(view.embed.weight.shape[1])
    weights = []
    for attention, mlp in zip(view.attention, view.mlp, strict=True):
        q = attention.num_heads * attention.head_dim
        kv = attention.num_kv_heads * attention.head_dim
        weights.append((hidden * (q + 2 * kv) + q * hidden, 3 * hidden * mlp.intermediate_size))
    return weights

