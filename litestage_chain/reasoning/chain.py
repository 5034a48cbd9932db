"""The three-stage reasoning chain: question + choices -> recall -> analysis -> summary -> `ReasoningResult`.

Each stage is a plain LCEL runnable (its prompt | the chat model bound to that stage's budget | a parser), and the
chain is a `RunnableSequence` of steps that each add one stage's output to a state dict. Two properties matter for
LiteStage and shape the design:

* every step implements `batch` by batching its stage node, so `chain.batch(questions)` runs all questions through
  recall in one batched decode, then analysis, then summary (what the offline search needs to score many
  questions per candidate plan);
* the answer is read from the summary with a tolerant extractor, and when none can be read the summary is re-run on
  the full model (a layer-skipped summary is the cheapest stage to redo); the result records that it happened.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import get_config_list
from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.budgets.coerce import as_stage_budgets
from litestage_chain.budgets.stage_budgets import StageBudgets
from litestage_chain.budgets.stages import STAGES, Stage, check_stage
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.data.types import Question, QuestionKind
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import LoadedModel
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.engine.sources import DEFAULT_MODEL
from litestage_chain.errors import InvalidInputError
from litestage_chain.reasoning.answer import extract, extract_correct_option
from litestage_chain.reasoning.prompts import PromptSet, prompt_values
from litestage_chain.reasoning.stage_output import StageOutput, State
from litestage_chain.reasoning.shared_context import (
    SHARED_STOPS,
    MEASURED_CONTEXT,
    SUMMARY_LEAD,
    ContextFormat,
    continued_summary_prompt,
    format_mismatch,
    resolve_context,
    reuses_context,
    shared_prompt,
)

DEFAULT_MAX_TOKENS: dict[Stage, int] = {"recall": 64, "analysis": 160, "summary": 24}
"""Per-stage token budgets: recall is one sentence, analysis one line per option, summary one line."""
STAGE_STOPS: dict[Stage, list[str]] = {
    "recall": ["\n\n", "Question:", "Options:"],
    "analysis": ["\n\n", "Question:", "So the answer"],
    "summary": ["\n"],
}
"""Stop strings that end a stage where its format ends, so a rambling (skipped) model does not run to the limit."""

_UNSET: Any = object()


class ReasoningResult(BaseModel):
    """The chain's output: the answer and, per stage, the text, tokens, seconds and skipped sub-layers."""

    model_config = ConfigDict(frozen=True)

    question: Question
    answer: str | None = Field(description="the chosen option label, or None if none could be read")
    answer_text: str | None = Field(description="the chosen option's text")
    answer_source: Literal["summary", "fallback", "analysis"] | None = Field(
        description="where the answer was read: the summary, the full-model summary re-run, or the analysis"
    )
    stages: dict[Stage, StageOutput]
    fallback_used: bool = Field(description="whether the summary was re-run on the full model")
    fallback: StageOutput | None = Field(None, description="the full-model summary re-run, when it happened")
    total_seconds: float = Field(
        description="wall time from the chain's start to this result; for stage nodes run one by one (a graph), "
        "which keep no start time, the sum of their stages' seconds"
    )

    @property
    def correct(self) -> bool | None:
        """Whether the answer matches the question's gold label (None when the question has none)."""
        return None if self.question.answer is None else self.answer == self.question.answer.upper()

    @property
    def generated_tokens(self) -> int:
        """Tokens generated across all stages, the fallback included."""
        extra = self.fallback.generated_tokens if self.fallback else 0
        return sum(s.generated_tokens for s in self.stages.values()) + extra

    @property
    def model_seconds(self) -> float:
        """Prefill + decode seconds across all stages, the fallback included."""
        extra = self.fallback.seconds if self.fallback else 0.0
        return sum(s.seconds for s in self.stages.values()) + extra


def build_reasoning_chain(
    model: str | LoadedModel | ChatLiteStage = DEFAULT_MODEL,
    *,
    plans: Mapping[str, SkipPlan] | Any = None,
    early_exit: EarlyExitConfig | Mapping[str, EarlyExitConfig | None] | None = _UNSET,
    max_tokens: Mapping[str, int] | None = None,
    prompts_dir: str | None = None,
    num_shots: int = 2,
    fallback: bool = True,
    context: ContextFormat | None = None,
) -> Runnable[Any, ReasoningResult]:
    """Build the recall -> analysis -> summary chain.

    Args:
        model: a model source, a `LoadedModel`, or a `ChatLiteStage` (its sampling settings are kept).
        plans: per-stage skip plans, `{stage: SkipPlan}`, or a searched `Profile`; `None` runs the full model.
        early_exit: one `EarlyExitConfig` for every stage, or `{stage: config-or-None}`; when not given, the
            profile's per-stage setting (if `plans` is a profile) or the model's own setting applies.
        max_tokens: per-stage token budgets overriding `DEFAULT_MAX_TOKENS`.
        prompts_dir: a folder laid out like the repository's `prompts/` (default: that folder).
        num_shots: worked examples shown before the question at every stage.
        fallback: re-run the summary on the full model when no answer can be read from it.
        context: "separate" gives every stage its own few-shot prompt that repeats the question and the earlier
            outputs (the paper's format); "shared" makes the stages consecutive segments of one sequence, so each
            stage reuses the KV entries of everything before it and prefills only its header (`shared_context.py`);
            "continued" is "separate" with the summary continuing the analysis's turn, reusing its KV entries.
            Not given: the format a searched profile (`plans`, or the `ChatLiteStage`'s) was searched in; for
            plain skip plans "separate"; for the full model "continued" (`shared_context.DEFAULT_CONTEXT` says
            why). A given format unlike a searched profile's warns.

    The chain takes `{"question": str, "choices": [...]}` (a benchmark data row works as is, or a `Question`) and
    returns a `ReasoningResult`. `chain.batch(questions)` runs stage by stage with batched decoding.
    """
    chat = _chat_model(model, plans)
    given = context is not None
    context = resolve_context(context, _plans_context(chat))
    searched = chat.stage_profile.context if chat.stage_profile is not None else None
    if given and searched is not None and context != searched:
        warnings.warn(format_mismatch(searched, context), stacklevel=2)  # the caller's choice: said, not refused
    prompts = PromptSet.load(prompts_dir)
    budgets = {**DEFAULT_MAX_TOKENS, **{check_stage(k): v for k, v in (max_tokens or {}).items()}}
    per_stage_exit = _early_exit_per_stage(early_exit)
    nodes = {
        stage: stage_node(
            chat, stage, prompts, num_shots=num_shots, max_tokens=budgets[stage], context=context,
            **per_stage_exit[stage],
        )
        for stage in STAGES
    }
    steps: list[Runnable[Any, Any]] = [
        RunnableLambda(_start, name="question"),
        *(StageStep(stage, nodes[stage]) for stage in STAGES),
        answer_node(
            chat, prompts, num_shots=num_shots, max_tokens=budgets["summary"], fallback=fallback, context=context
        ),
    ]
    first, *rest = steps
    return first.pipe(*rest, name="LiteStageReasoning")


def stage_node(
    model: ChatLiteStage | str | LoadedModel,
    stage: Stage,
    prompts: PromptSet | None = None,
    *,
    num_shots: int = 2,
    max_tokens: int | None = None,
    name: str | None = None,
    context: ContextFormat | None = None,
    **budget: Any,
) -> Runnable[State, StageOutput]:
    """One stage as a runnable: the stage prompt | the model bound to the stage's budget | a `StageOutput` parser.

    It reads a state dict holding `question` (a `Question`, a benchmark row or `{"question", "choices"}`) and the
    outputs of the earlier stages under their names, so the three nodes can also be a graph's nodes (LangGraph):
    each returns `{stage: node.invoke(state)}`, and `answer_node` reads the answer at the end.
    `model` is a `ChatLiteStage` (its stage profile budgets the node), a model source or a `LoadedModel`.
    `prompts` defaults to the repository's `prompts/`. `max_tokens` defaults to the stage's `DEFAULT_MAX_TOKENS`
    (bound to the call, so it replaces the model's own `max_tokens`, as in the chain).
    `budget` may hold `skip_plan=` and/or `early_exit=` to override what the model's stage profile says.
    The model call is tagged `stage:<name>` and carries `litestage_stage` metadata, so streamed tokens
    (`astream_events`, callbacks) can be told apart by stage.
    `context="shared"` renders the shared-context format (`shared_context.py`): the node continues one assistant
    turn after a shared few-shot prefix and reuses the KV entries of everything the earlier stages read and wrote.
    `context="continued"` renders recall and analysis as in the separate format and the summary as the analysis's
    turn continued, reusing the KV entries of the analysis's prompt and output. Not given: chosen from the model's
    plans as in `build_reasoning_chain` (give every node of one graph the same format: a continued summary reads the
    KV entries its analysis node stored).
    """
    stage = check_stage(stage)
    model = model if isinstance(model, ChatLiteStage) else ChatLiteStage(model=model)
    # a given format is checked, not compared with the profile's: the chain warns once, not once per node
    chosen = context is None
    context = resolve_context(context, _plans_context(model))
    node_plan = budget.get("skip_plan")
    if chosen and node_plan is not None and not node_plan.is_empty and context != MEASURED_CONTEXT:
        # the format comes from the model, which every node of a graph shares; a plan given to one node alone would
        # make its node differ from the others if it counted, so it does not, and the caller hears about it
        warnings.warn(f"stage_node({stage!r}, skip_plan=...) with no context= runs in the {context!r} format chosen "
                      f"from the model's plans; give every node of the graph the same context= (e.g. "
                      f"{MEASURED_CONTEXT!r}, where plain skip plans are measured)", stacklevel=2)
    prompts = prompts if prompts is not None else PromptSet.load()
    templates: dict[QuestionKind, ChatPromptTemplate] = {
        kind: stage_template(prompts, kind, stage, num_shots, context) for kind in ("mcq", "yesno")
    }

    def render(state: State) -> PromptValue:
        checked = _checked_state(state, stage)
        return stage_prompt(templates[checked["question"].kind].invoke(prompt_values(checked)), stage, checked, context)

    format_binding = stage_format(stage, context)
    bound = model.bind(
        stage=stage, max_tokens=DEFAULT_MAX_TOKENS[stage] if max_tokens is None else max_tokens,
        **{**format_binding, **budget},
    ).with_config(
        tags=[f"stage:{stage}"],
        metadata={"litestage_stage": stage, "litestage_node": name or stage},
        run_name=f"{name or stage}_model",
    )

    def parse(message: AIMessage) -> StageOutput:
        return StageOutput.from_message(stage, message)

    sequence = RunnableLambda(render, name=f"{stage}_prompt") | bound | RunnableLambda(parse, name=f"{stage}_parse")
    return sequence.with_config(run_name=name or stage)


def stage_template(
    prompts: PromptSet, kind: QuestionKind, stage: Stage, num_shots: int, context: ContextFormat
) -> ChatPromptTemplate:
    """The conversation a stage's prompt starts from: the shared one, the analysis's (the continued format's
    summary continues it), or the stage's own."""
    if context == "shared":
        return prompts.shared_chat_prompt(kind, num_shots=num_shots)
    if context == "continued" and stage == "summary":
        return prompts.chat_prompt(kind, "analysis", num_shots=num_shots)
    return prompts.chat_prompt(kind, stage, num_shots=num_shots)


def stage_prompt(prompt: PromptValue, stage: Stage, state: State, context: ContextFormat) -> PromptValue:
    """A stage's rendered template as the stage sends it: with the turn it continues, where its format has one."""
    if context == "shared":
        return shared_prompt(prompt.to_messages(), stage, state)
    if context == "continued" and stage == "summary":
        return continued_summary_prompt(prompt.to_messages(), state)
    return prompt


def stage_format(stage: Stage, context: ContextFormat) -> dict[str, Any]:
    """A stage call's format bindings: its stop strings, whether it uses the context cache, and the summary's
    forced lead where the summary continues a turn."""
    binding: dict[str, Any] = {"stop": SHARED_STOPS[stage] if context == "shared" else STAGE_STOPS[stage]}
    if reuses_context(context, stage):
        # the continued analysis continues nothing: it runs as in the separate format and stores what the summary
        # continues
        binding["reuse_context"] = "store" if context == "continued" and stage == "analysis" else True
    if context != "separate" and stage == "summary":
        binding["response_prefix"] = SUMMARY_LEAD
    return binding


def answer_node(
    model: ChatLiteStage | str | LoadedModel,
    prompts: PromptSet | None = None,
    *,
    num_shots: int = 2,
    max_tokens: int | None = None,
    fallback: bool = True,
    context: ContextFormat | None = None,
) -> Runnable[State, ReasoningResult]:
    """The chain's last step as a runnable: reads the answer off a state holding the three stages' outputs.

    When no answer can be read from the summary and `fallback` is on, the summary is re-run on the full model
    (batched over the questions that need it), exactly as in `build_reasoning_chain`; pass the summary node's
    `prompts`, `num_shots`, `max_tokens` and `context` so the re-run uses the same settings.
    """
    fallback_node = (
        stage_node(
            model, "summary", prompts, num_shots=num_shots, max_tokens=max_tokens,
            skip_plan=SkipPlan(), early_exit=None, name="summary_fallback", context=context,
        )
        if fallback
        else None
    )
    return FinalizeStep(fallback_node)


class StageStep(Runnable[State, State]):
    """Adds one stage's output to the state; batches by batching the stage node (one decode per batch)."""

    def __init__(self, stage: Stage, node: Runnable[State, StageOutput]) -> None:
        self.stage = stage
        self.node = node
        self.name = f"{stage}_step"

    def invoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> State:
        return {**input, self.stage: self.node.invoke(input, config)}

    async def ainvoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> State:
        return {**input, self.stage: await self.node.ainvoke(input, config)}

    def batch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[State]:
        outputs = self.node.batch(inputs, config, return_exceptions=return_exceptions)
        return [o if isinstance(o, Exception) else {**i, self.stage: o} for i, o in zip(inputs, outputs, strict=True)]

    async def abatch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[State]:
        outputs = await self.node.abatch(inputs, config, return_exceptions=return_exceptions)
        return [o if isinstance(o, Exception) else {**i, self.stage: o} for i, o in zip(inputs, outputs, strict=True)]


class FinalizeStep(Runnable[State, ReasoningResult]):
    """Reads the answer; re-runs the summary on the full model (batched) for the questions that have none."""

    def __init__(self, fallback_node: Runnable[State, StageOutput] | None) -> None:
        self.fallback_node = fallback_node
        self.name = "answer"

    def invoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> ReasoningResult:
        return self.batch([input], config)[0]

    async def ainvoke(self, input: State, config: RunnableConfig | None = None, **kwargs: Any) -> ReasoningResult:
        return (await self.abatch([input], config))[0]

    def batch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[ReasoningResult]:
        inputs = [_checked_state(state, "answer") for state in inputs]
        retry = self._needs_fallback(inputs)
        reruns: list[Any] = []
        if retry and self.fallback_node is not None:
            configs = _config_list(config, len(inputs))
            reruns = self.fallback_node.batch(
                [inputs[i] for i in retry], [configs[i] for i in retry], return_exceptions=return_exceptions
            )
        return self._results(inputs, dict(zip(retry, reruns, strict=False)))

    async def abatch(
        self,
        inputs: list[State],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[ReasoningResult]:
        inputs = [_checked_state(state, "answer") for state in inputs]
        retry = self._needs_fallback(inputs)
        reruns: list[Any] = []
        if retry and self.fallback_node is not None:
            configs = _config_list(config, len(inputs))
            reruns = await self.fallback_node.abatch(
                [inputs[i] for i in retry], [configs[i] for i in retry], return_exceptions=return_exceptions
            )
        return self._results(inputs, dict(zip(retry, reruns, strict=False)))

    def _needs_fallback(self, inputs: Sequence[State]) -> list[int]:
        return [i for i, state in enumerate(inputs) if extract(state["summary"].text, state["question"]).label is None]

    def _results(self, inputs: Sequence[State], reruns: Mapping[int, Any]) -> list[Any]:
        results: list[Any] = []
        for index, state in enumerate(inputs):
            rerun = reruns.get(index)
            if isinstance(rerun, Exception):
                results.append(rerun)
                continue
            results.append(_result(state, rerun))
        return results


def run_batch(
    chain: Runnable[Any, ReasoningResult], questions: Iterable[Any], *, batch_size: int = 8
) -> list[ReasoningResult]:
    """Run many questions through a reasoning chain, stage by stage, `batch_size` questions per decode."""
    items = list(questions)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    results: list[ReasoningResult] = []
    for start in range(0, len(items), batch_size):
        results.extend(chain.batch(items[start : start + batch_size], config={"max_concurrency": batch_size}))
    return results


def plans_context(budgets: StageBudgets | None, skip_plan: SkipPlan | None = None) -> ContextFormat | None:
    """The format skip plans were measured in: a searched profile's; the separate format (the paper's, where plain
    plans are usually taken from) for plain plans that skip something; `None` for the full model (any format).

    Why plain plans do not get the continued format: a plan that skips an attention sub-layer runs the continued
    analysis through the context cache's prefill, and with int8/int4 weights its output then depends on what the
    cache held (`engine/context_cache.py`): the same question asked twice could read two answers."""
    if budgets is not None and budgets.context is not None:
        return budgets.context
    plans = [budget.plan for budget in budgets.stages.values()] if budgets is not None else []
    return MEASURED_CONTEXT if any(not plan.is_empty for plan in [*plans, skip_plan or SkipPlan()]) else None


def _plans_context(model: ChatLiteStage) -> ContextFormat | None:
    """`plans_context` of a chat model's stage budgets and its own skip plan."""
    return plans_context(model.stage_profile, model.skip_plan)


def _chat_model(model: str | LoadedModel | ChatLiteStage, plans: Any) -> ChatLiteStage:
    """A streaming `ChatLiteStage` carrying the per-stage plans (streaming so callbacks see every token)."""
    if isinstance(model, ChatLiteStage):
        update: dict[str, Any] = {"streaming": True}
        if plans is not None:
            update["stage_profile"] = as_stage_budgets(plans, model=model.model_name)
        return model.model_copy(update=update)
    return ChatLiteStage(model=model, stage_profile=plans, streaming=True)


def _early_exit_per_stage(early_exit: Any) -> dict[Stage, dict[str, Any]]:
    """The `early_exit=` binding of each stage ({} where the profile / model setting should apply)."""
    if early_exit is _UNSET:
        return {stage: {} for stage in STAGES}
    if early_exit is None or isinstance(early_exit, EarlyExitConfig):
        return {stage: {"early_exit": early_exit} for stage in STAGES}
    if isinstance(early_exit, Mapping):
        chosen = {check_stage(stage): value for stage, value in early_exit.items()}
        return {stage: ({"early_exit": chosen[stage]} if stage in chosen else {}) for stage in STAGES}
    raise InvalidInputError(f"early_exit must be an EarlyExitConfig, a mapping stage -> config, or None; got {early_exit!r}")


def _start(value: Any) -> State:
    return {"question": Question.coerce(value), "started": time.perf_counter()}


def _checked_state(state: Any, stage: str) -> State:
    """The state a stage reads, its question coerced once to a `Question`, or an error naming what is missing (a
    graph wired in the wrong order)."""
    if not isinstance(state, Mapping) or "question" not in state:
        got = f"keys {sorted(state)}" if isinstance(state, Mapping) else type(state).__name__
        raise InvalidInputError(f"the {stage} stage reads a state dict with a 'question'; got {got}")
    if isinstance(state["question"], str):
        raise InvalidInputError(
            f"the {stage} stage reads state['question'] as the whole question, a Question or "
            "{'question': ..., 'choices': [...]}; got the question text alone (wrap the chain's input: "
            "{'question': {'question': ..., 'choices': [...]}})"
        )
    earlier = STAGES[: STAGES.index(stage)] if stage in STAGES else STAGES
    missing = [name for name in earlier if not isinstance(state.get(name), StageOutput)]
    if missing:
        raise InvalidInputError(f"the {stage} stage needs the output of {', '.join(missing)} first; state has {sorted(state)}")
    return {**state, "question": Question.coerce(state["question"])}


def _result(state: State, rerun: StageOutput | None) -> ReasoningResult:
    question: Question = state["question"]
    stages = {stage: state[stage] for stage in STAGES}
    label = extract(stages["summary"].text, question).label
    source: Literal["summary", "fallback", "analysis"] | None = "summary" if label else None
    if label is None and rerun is not None:
        label = extract(rerun.text, question).label
        source = "fallback" if label else None
    if label is None:
        label = extract_correct_option(stages["analysis"].text, question)
        source = "analysis" if label else None
    return ReasoningResult(
        question=question,
        answer=label,
        answer_text=question.text_of(label),
        answer_source=source,
        stages=stages,
        fallback_used=rerun is not None,
        fallback=rerun,
        # a graph of stage nodes has no start time in its state: its stages' own seconds stand for the wall time
        total_seconds=(
            time.perf_counter() - state["started"] if "started" in state
            else sum(s.seconds for s in stages.values()) + (rerun.seconds if rerun else 0.0)
        ),
    )


def _config_list(config: RunnableConfig | list[RunnableConfig] | None, length: int) -> list[RunnableConfig]:
    return get_config_list(config, length)


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "STAGE_STOPS",
    "FinalizeStep",
    "ReasoningResult",
    "StageStep",
    "answer_node",
    "build_reasoning_chain",
    "run_batch",
    "stage_node",
]
