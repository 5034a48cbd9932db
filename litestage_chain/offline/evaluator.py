"""The search's real evaluator: the three-stage reasoning chain run over questions with per-stage plans.

Two things make a budget search affordable on a CPU:

* Stage outputs are cached. Decoding is greedy, so a stage's output depends only on its plan, its
  early-exit rule and its inputs (the question and the earlier stages' outputs). While the search
  sweeps one stage, the stages before it in the chain keep their plans and inputs, and their outputs
  (with the latency measured when they were produced) are reused instead of regenerated.
* Questions are decoded in batches of `batch_size`. The default, 1, measures the latency a single
  question sees; larger batches are faster overall but report per-question times as they are inside a
  batch (each row's prefill plus the time until it finished), which is what batched serving sees.

Latency is the engine's prefill + decode time per question over all stages (including the full-model
summary re-run the chain does when no answer can be read), not LangChain's bookkeeping around it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from tqdm.auto import tqdm

from litestage_chain.append_store import content_key
from litestage_chain.budgets.stage_budgets import capped_budget
from litestage_chain.budgets.stages import STAGES, Stage, check_stage
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.data.types import Question
from litestage_chain.engine import fused_decode
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import LoadedModel
from litestage_chain.engine.quant.formats import kernel_path
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.store import EvalResult
from litestage_chain.reasoning.chain import (
    DEFAULT_MAX_TOKENS,
    STAGE_STOPS,
    FinalizeStep,
    ReasoningResult,
    stage_format,
    stage_node,
    stage_prompt,
    stage_template,
)
from litestage_chain.reasoning.prompts import PromptSet, prompt_values
from litestage_chain.reasoning.stage_output import StageOutput, State
from litestage_chain.reasoning.shared_context import (
    MEASURED_CONTEXT,
    SHARED_STOPS,
    SUMMARY_LEAD,
    ContextFormat,
    check_context,
    reads_earlier_kv,
)

FALLBACK = "fallback"


class CachedStage(Runnable[State, StageOutput]):
    """A stage node whose outputs are remembered by (stage, plan, early exit, prompt inputs).

    Misses are decoded in batches of `batch_size` through the wrapped node; hits cost nothing.
    """

    def __init__(
        self,
        name: str,
        node: Runnable[State, StageOutput],
        settings: Mapping[str, Any],
        cache: dict[str, StageOutput],
        counter: Counter[str],
        batch_size: int,
        progress: bool,
    ) -> None:
        self.name = name
        self.node = node
        self.settings = dict(settings)
        self.cache = cache
        self.counter = counter
        self.batch_size = batch_size
        self.progress = progress

    def key(self, state: State) -> str:
        question: Question = state["question"]
        payload = {"stage": self.name, "settings": self.settings, "id": question.id, "inputs": prompt_values(state)}
        if self.settings.get("reads_earlier_kv"):
            # a stage that reads the earlier stages' KV entries depends on the plans that wrote them
            payload["earlier_plans"] = [
                state[stage].skipped.model_dump(mode="json") for stage in STAGES if isinstance(state.get(stage), StageOutput)
            ]
        return content_key(payload)

    def invoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> StageOutput:
        return self.batch([input], config)[0]

    def batch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[StageOutput]:
        keys = [self.key(state) for state in inputs]
        todo = sorted({key: index for index, key in reversed(list(enumerate(keys))) if key not in self.cache}.values())
        with tqdm(total=len(todo), desc=self.name, disable=not self.progress or not todo, leave=False) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                outputs = self.node.batch([inputs[i] for i in chunk], {"max_concurrency": self.batch_size})
                for index, output in zip(chunk, outputs, strict=True):
                    self.cache[keys[index]] = output
                self.counter[self.name] += len(chunk)
                bar.update(len(chunk))
        return [self.cache[key] for key in keys]


class ChainEvaluator:
    """Evaluates per-stage skip plans by running the reasoning chain over questions (greedy decoding).

    Args:
        model: the loaded model (its weights sha256 is part of `identity`).
        early_exit: one `EarlyExitConfig` for every stage, or `{stage: config-or-None}`; None disables it.
        max_tokens: per-stage token budgets overriding the chain's defaults.
        prompts_dir, num_shots: the prompt templates and how many worked examples each stage shows.
        fallback: re-run the summary on the full model when no answer can be read (as the chain does).
        batch_size: questions decoded together (1 = single-question latency, see the module docstring).
        reuse_outputs: reuse unchanged stages' outputs (and their measured times) across evaluations. Turn
            off to time every stage afresh in every evaluation: slower, but candidates are then never
            compared on times measured under different machine load.
        context: the reasoning format, "separate" (a prompt per stage), "shared" (one sequence) or "continued"
            (separate, the summary continuing the analysis's turn); see `shared_context.py`. Default: the format
            measurements are made in (`MEASURED_CONTEXT`, "separate").
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        early_exit: EarlyExitConfig | Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int] | None = None,
        prompts_dir: str | None = None,
        num_shots: int = 2,
        fallback: bool = True,
        batch_size: int = 1,
        reuse_outputs: bool = True,
        progress: bool = False,
        context: ContextFormat = MEASURED_CONTEXT,
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.chat = ChatLiteStage(model=model, temperature=0.0)
        self.prompts = PromptSet.load(prompts_dir)
        self.num_shots = num_shots
        self.fallback = fallback
        self.batch_size = batch_size
        self.reuse_outputs = reuse_outputs
        self.progress = progress
        self.context = check_context(context)
        self.max_tokens: dict[Stage, int] = {**DEFAULT_MAX_TOKENS, **{check_stage(k): v for k, v in (max_tokens or {}).items()}}
        self.early_exit: dict[Stage, EarlyExitConfig | None] = _per_stage_early_exit(early_exit)
        self.generated: Counter[str] = Counter()  # stage -> stage generations actually decoded (cache misses)
        self._cache: dict[str, StageOutput] = {}
        self.identity = self._identity()

    def _identity(self) -> str:
        weights = self.model.weights_sha256 or f"unidentified:{self.model.name}:{id(self.model)}"
        if self.model.weights != "float32":  # another format gives other outputs and times (float32 keys unchanged)
            weights += f":{self.model.weights}"
        prompts = {
            "templates": {f"{k}/{s}": [t.system, t.user, t.assistant] for (k, s), t in sorted(self.prompts.templates.items())},
            "exemplars": {k: [e.model_dump(mode="json") for e in v] for k, v in sorted(self.prompts.exemplars.items())},
        }
        # v2: stage seconds no longer include the one-time computation of a shared prefix (see prefix_cache.py);
        # results stored under v1 were charged with it by run order and must not be mixed with v2 ones.
        # v3: a left-padded batch's prefill no longer computes the padding (forward.prefill_packed), so stage seconds
        # measured under v2 are slower than the same stages now and must not be compared with v3 ones.
        # "fresh_context": each run starts from an empty context cache (`run_stages`); times measured before could
        # include another plan's cached prompts and must not be mixed with these.
        shared: dict[str, Any] = {}
        if self.context == "shared":
            shared = {"context": "shared", "shared_stops": SHARED_STOPS}
        elif self.context == "continued":
            # "analysis": "plain": the analysis runs as in the separate format and then stores its entries; before,
            # it ran through the context cache's prefill, whose int8/int4 outputs differ now and then
            shared = {"context": "continued", "summary_lead": SUMMARY_LEAD, "analysis": "plain"}
        if shared:
            shared["fresh_context"] = True
        # An int8/int4 model decodes batch-1 steps (and a batch's last row) on the compiled step, which sums in another
        # order than the Python step, so a near-tie token can differ: results made with it switched off are kept
        # apart. Switched on (the default) keeps the key every stored result has.
        step = {"decode_step": "python"} if self.model.weights in ("int8", "int4") and not fused_decode.enabled() else {}
        # The kernel path too: another ISA's kernels (AVX2, VNNI, portable) sum in another order, and before this key
        # a StrategyQA search compared candidates run here with full-model answers stored by an earlier session (the
        # recall, a plan no candidate changed, gave other outputs, so part of every candidate's flips was the machine).
        if self.model.weights in ("int8", "int4"):
            step["kernel"] = kernel_path(self.model.weights)
        return "chain-v3:" + content_key({
            **shared,
            **step,
            "weights": weights,
            "max_tokens": self.max_tokens,
            "early_exit": {s: (e.model_dump() if e else None) for s, e in self.early_exit.items()},
            "num_shots": self.num_shots,
            "fallback": self.fallback,
            "batch_size": self.batch_size,
            "reuse_outputs": self.reuse_outputs,
            "stops": STAGE_STOPS,
            "prompts": prompts,
        })

    def early_exit_for(self, stage: str) -> EarlyExitConfig | None:
        return self.early_exit[check_stage(stage)]

    def _node(
        self, stage: Stage, plan: SkipPlan, early_exit: EarlyExitConfig | None, name: str, cap: int | None = None,
    ) -> CachedStage:
        budget = capped_budget(self.max_tokens[stage], cap)
        node = stage_node(
            self.chat, stage, self.prompts, num_shots=self.num_shots, max_tokens=budget,
            skip_plan=plan, early_exit=early_exit, name=name, context=self.context,
        )
        settings = {"plan": plan.model_dump(mode="json"), "early_exit": early_exit.model_dump() if early_exit else None,
                    "max_tokens": budget}
        if self.context != "separate":
            settings["context"] = self.context
        if reads_earlier_kv(self.context, stage):
            settings["reads_earlier_kv"] = True
        return CachedStage(name, node, settings, self._cache, self.generated, self.batch_size, self.progress)

    def run_stages(
        self,
        plans: Mapping[str, SkipPlan],
        questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> list[State]:
        """Chain states (question + every stage's output) for `questions` under `plans`, stage by stage.

        `early_exit` overrides the evaluator's early-exit rule of the stages it names (the search tries several);
        `max_tokens` caps the token budgets of the stages it names (None: the evaluator's budget).

        In a format that reuses the context cache (shared, continued) the model's context cache is emptied first but
        for the few-shot prefixes (pinned by the calls that computed them), so each run pays what a serving process
        pays for new questions: otherwise a run after another plan's run on the same questions would find its prompts
        cached (the continued analysis's whole prompt, when the two plans share the analysis) and be timed without
        their prefill. A few-shot prefix is computed by a plan's first run, timed apart (`prefix_seconds`, outside the
        model time either way), and kept for its later runs.
        """
        rules = {**self.early_exit, **_per_stage_early_exit(early_exit)} if early_exit is not None else self.early_exit
        caps = _per_stage_caps(max_tokens)
        missing = [stage for stage in STAGES if stage not in plans]
        if missing:
            raise InvalidInputError(f"no plan given for stage(s) {missing}")
        for stage in STAGES:
            plans[stage].check(self.model.num_layers)
        if self.context != "separate":
            self.model.context_cache.clear(keep_pinned=True)
        states: list[State] = [{"question": q, "started": time.perf_counter()} for q in questions]
        for stage in STAGES:
            outputs = self._node(stage, plans[stage], rules[stage], stage, caps[stage]).batch(states)
            states = [{**state, stage: output} for state, output in zip(states, outputs, strict=True)]
        return states

    def evaluate(
        self,
        plans: Mapping[str, SkipPlan],
        questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        """Run the chain with `plans` (`early_exit` overriding the evaluator's rules of the stages it names, and
        `max_tokens` capping their token budgets)."""
        if not questions:
            raise InvalidInputError("no questions to evaluate")
        if not self.reuse_outputs:
            self._cache.clear()
        states = self.run_stages(plans, questions, early_exit, max_tokens)
        fallback = self._node("summary", SkipPlan(), None, "summary_fallback") if self.fallback else None
        results: list[ReasoningResult] = FinalizeStep(fallback).batch(states)
        return summarise(results, questions, self.context)

    def render_prompt(self, stage: str, state: State) -> str:
        """The exact prompt text the model sees for `stage` in this chain state (for calibration)."""
        checked = check_stage(stage)
        question: Question = state["question"]
        template = stage_template(self.prompts, question.kind, checked, self.num_shots, self.context)
        messages = stage_prompt(template.invoke(prompt_values(state)), checked, state, self.context).to_messages()
        lead = {k: v for k, v in stage_format(checked, self.context).items() if k == "response_prefix"}
        return self.chat.prepare(messages, stage=checked, skip_plan=SkipPlan(), **lead).prompt


def summarise(
    results: Sequence[ReasoningResult], questions: Sequence[Question], context: ContextFormat = "separate"
) -> EvalResult:
    """Accuracy, mean latency and tokens per stage, and the answers, of one evaluation (run in `context`)."""
    labelled = all(q.answer is not None for q in questions)
    fallback_tokens = [r.fallback.generated_tokens if r.fallback else 0 for r in results]
    return EvalResult(
        accuracy=fmean(1.0 if r.correct else 0.0 for r in results) if labelled else None,
        mean_latency_seconds=fmean(r.model_seconds for r in results),
        stage_latency_seconds={stage: fmean(r.stages[stage].seconds for r in results) for stage in STAGES},
        generated_tokens_per_stage={
            **{stage: fmean(r.stages[stage].generated_tokens for r in results) for stage in STAGES},
            FALLBACK: fmean(fallback_tokens),
        },
        answers={q.id: r.answer for r, q in zip(results, questions, strict=True)},
        tokens={
            **{stage: [_row_tokens(r.stages[stage], _earlier(r, stage, context)) for r in results] for stage in STAGES},
            FALLBACK: [_row_tokens(r.fallback) if r.fallback else None for r in results],
        },
    )


def _row_tokens(output: StageOutput, earlier: StageOutput | None = None) -> tuple[int, int, int]:
    """(tokens the call prefilled itself, tokens it generated, its whole prompt): a shared prefix's reused entries
    cost no prefill, but its decode steps attend over them.

    A stage that continues an `earlier` stage's sequence (shared, continued formats) is counted as in a chain that
    ran that stage: everything but the earlier stage's prompt and output (less its last token, which no forward pass
    ran, so it has no entries). What this call loaded says otherwise when the earlier output was reused from the
    stage-output cache (the search does that): it left no KV entries, so the call prefilled the whole chain so far,
    which no chain in use does.
    """
    cached = output.prefix_tokens
    if earlier is not None:
        cached = earlier.prompt_tokens + earlier.generated_tokens - 1
    return max(output.prompt_tokens - cached, 0), output.generated_tokens, output.prompt_tokens


def _earlier(result: ReasoningResult, stage: Stage, context: ContextFormat) -> StageOutput | None:
    """The stage whose sequence `stage` continues in `context`, or None (it starts its own)."""
    return result.stages[STAGES[STAGES.index(stage) - 1]] if reads_earlier_kv(context, stage) else None


def _per_stage_caps(value: Mapping[str, int | None] | None) -> dict[Stage, int | None]:
    """`{stage: cap}` for every stage (None: uncapped); a cap below 1 is an error naming the stage."""
    caps: dict[Stage, int | None] = {stage: None for stage in STAGES}
    if value is None:
        return caps
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"max_tokens must be a mapping stage -> token cap (or None), got {value!r}")
    for stage, cap in value.items():
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise InvalidInputError(f"the token cap of stage {stage!r} must be an integer >= 1 or None, got {cap!r}")
        caps[check_stage(stage)] = cap
    return caps


def _per_stage_early_exit(
    value: EarlyExitConfig | Mapping[str, EarlyExitConfig | None] | None,
) -> dict[Stage, EarlyExitConfig | None]:
    if value is None or isinstance(value, EarlyExitConfig):
        return {stage: value for stage in STAGES}
    if isinstance(value, Mapping):
        chosen = {check_stage(stage): config for stage, config in value.items()}
        return {stage: chosen.get(stage) for stage in STAGES}
    raise InvalidInputError(f"early_exit must be an EarlyExitConfig, a mapping stage -> config, or None; got {value!r}")

