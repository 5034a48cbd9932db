"""`ChatLiteStage`: a LangChain chat model running a small local model with LiteStage layer skipping.

Every call decides its own budget: which sub-layers to skip (`skip_plan`, or the plan of `stage` in
`stage_profile`) and when to stop early. Budgets are per call, never state on the loaded model, so `.bind(stage=...)`
copies, `configurable_fields` rebuilds and concurrent calls with different budgets all share one set of weights
safely. Weights load on first use (construction stays cheap) through `load_model`'s process-wide cache.

Calls sharing a budget are generated as one padded batch (`batch`, `abatch`), which is where a CPU
gets most of its throughput.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import (
    BaseChatModel,
    LanguageModelInput,
    ModelProfile,
)
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    LLMResult,
)
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, InstanceOf, field_validator, model_validator
from typing_extensions import override

from litestage_chain.budgets.coerce import as_stage_budgets
from litestage_chain.budgets.stage_budgets import StageBudgets, capped_budget
from litestage_chain.budgets.stages import STAGES, Stage, check_stage
from litestage_chain.chat.call_options import (
    FINISH_REASONS,
    MAX_TOKENS_ALIASES,
    canonical_kwargs,
    response_format_schema,
)
from litestage_chain.chat.conversation import build_conversation, count_message_tokens
from litestage_chain.chat.continuation import encode_segments, prompt_segments, split_continuation
from litestage_chain.chat.guided import fill_object
from litestage_chain.chat.tools import (
    TOOL_CALL_OPEN,
    ParsedToolCalls,
    ToolLike,
    ToolSpec,
    call_prefix,
    forced_tool_name,
    openai_tools,
    parse_tool_calls,
    strip_echoed_instructions,
    tool_specs,
)
from litestage_chain.engine.choice import choose_option
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.generation import (
    GenerationConfig,
    GenerationResult,
    generate,
)
from litestage_chain.engine.loading import LoadedModel, load_model
from litestage_chain.engine.prefix_cache import PrefixCache
from litestage_chain.engine.quant.formats import kernel_path
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.engine.sources import DEFAULT_MODEL
from litestage_chain.errors import GenerationCancelled, InvalidInputError, LiteStageError

# Keyword arguments a call (invoke/stream/batch, or .bind) may pass; anything else is a typo worth an error.
# Aliases (`max_new_tokens`, `num_predict`, `max_completion_tokens`) are renamed first, see `call_options`.
CALL_KWARGS = frozenset(
    {"stage", "skip_plan", "early_exit", "max_tokens", "temperature", "top_p", "top_k", "seed", "model", "tools",
     "tool_choice", "response_prefix", "response_schema", "response_format", "parallel_tool_calls", "strict",
     "stream", "reuse_context"}
)
# How many tokens a model offered tools and a response format may write before it opens a call or the JSON answer.
_DECIDE_TOKENS = 24


@dataclass(frozen=True)
class PreparedCall:
    """Everything one generation needs, resolved from the instance fields and the call's overrides."""

    loaded: LoadedModel
    model_name: str
    stage: Stage | None
    plan: SkipPlan
    config: GenerationConfig
    prompt: str
    prefix: str
    tools: tuple[ToolSpec, ...]
    forced_tool: str | None = None
    schema: dict[str, Any] | None = None
    shared_prefix: str | None = None
    instructions: str = ""
    """The tool instructions added to the system prompt (lines a small model may echo back as its content)."""
    single_call: bool = False
    """`parallel_tool_calls=False`: keep only the first tool call of a reply."""
    segments: tuple[tuple[str, SkipPlan], ...] | None = None
    """The prompt as pieces with the plan each is computed under (a continued turn, or context reuse)."""
    reuse_context: bool = False
    store_context: bool = False
    """`reuse_context="store"`: a plain call (exactly as without the context cache) that stores its prompt and
    output there for the calls that continue it."""

    @property
    def guided(self) -> bool:
        """Whether the reply is JSON filled value by value (forced tool call or structured output)."""
        return self.forced_tool is not None or self.schema is not None

    def batch_key(self) -> tuple[int, SkipPlan, GenerationConfig, bool, bool, bool]:
        """Calls with equal keys can share one batched `generate` (one plan, one decoding config)."""
        return (id(self.loaded), self.plan, self.config, self.reuse_context, self.store_context,
                self.segments is not None)


class ChatLiteStage(BaseChatModel):
    """Chat model over a local decoder with LiteStage per-stage layer skipping and early exit.

    Example:
        ```python
        from litestage_chain import ChatLiteStage, SkipPlan

        llm = ChatLiteStage(max_tokens=64)                  # the embedded SmolLM2-135M-Instruct
        llm.invoke("Name a fruit.")
        fast = llm.bind(skip_plan=SkipPlan(attention=[20, 25], mlp=[27]))
        fast.invoke("Name a fruit.").response_metadata["skipped"]
        ```

    Budget resolution for a call, first match wins: `skip_plan=` passed to the call; the plan of the call's
    `stage` in `stage_profile`; the instance's `skip_plan`. Early exit likewise: `early_exit=` on the call; the
    profile's setting for the stage (a searched `Profile` always has one, `None` meaning off; a plain
    `{stage: SkipPlan}` mapping has none); the instance's `early_exit`. A profile's token cap for the stage goes
    with its early exit (both say when the stage stops): while the profile's early exit applies, the call generates
    at most the smaller of its `max_tokens` and the cap; a call passing `early_exit=` sets how it stops itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model: str | InstanceOf[LoadedModel] = DEFAULT_MODEL
    """Model source (embedded name, GGUF path, local HF dir, hub id) or an already loaded `LoadedModel`."""
    weights: Literal["auto", "float32", "bfloat16", "int8", "int4"] = "auto"
    """Weight format the engine runs the projections in (ignored when `model` is a `LoadedModel`). "auto" is the
    model's recommended format: int4 for both embedded models (the fastest format that passed the accuracy guard),
    float32 otherwise."""
    max_tokens: int = Field(256, ge=1)
    """Most tokens to generate per call."""
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Sampling temperature; 0 is greedy (deterministic)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    """Sample among the k likeliest tokens only (with temperature > 0); None keeps them all."""
    seed: int | None = None
    """Seed for sampling (temperature > 0); same seed, same output."""
    stop: list[str] | None = None
    """Stop strings; the output is cut before the first one."""
    skip_plan: SkipPlan = Field(default_factory=SkipPlan)
    """Sub-layers to skip when neither the call nor the stage profile says otherwise."""
    stage: Stage | None = None
    """Reasoning stage this model runs (`recall`, `analysis`, `summary`); selects the plan in `stage_profile`."""
    stage_profile: StageBudgets | None = None
    """Per-stage budgets. Accepts a mapping stage -> `SkipPlan`, a searched `Profile` or its file or shipped name
    (`"csqa"`), or an object with `plan_for(stage)`/`early_exit_for(stage)`; stored as `StageBudgets`
    (`litestage_chain.budgets.coerce.as_stage_budgets`). Stored as `stage_profile` because `profile` is
    langchain-core's model-capabilities field; `ChatLiteStage(profile=...)` with stage budgets lands here too."""
    early_exit: EarlyExitConfig | None = None
    """Confidence-based early exit; `None` disables it."""
    streaming: bool = False
    """Generate token by token even on `invoke`, so streaming callbacks and `astream_events` see every piece."""
    max_retries: int = Field(2, ge=0)
    """How many times `with_structured_output` asks again after a reply fails to parse or validate."""
    reuse_prefix: bool = True
    """Reuse the KV entries of everything before the last message across calls with the same plan (system
    prompt, few-shot exemplars, conversation history), so repeated stage prompts are not prefilled again. Usage
    metadata counts those tokens as cached input (`cache_creation` when stored, `cache_read` when reused)."""
    reuse_context: bool = False
    """Reuse the KV entries of any earlier call's prompt *and output* that this call's prompt continues, whatever
    plan computed them (the model's context cache, see `context_cache.py`), and store this call's for later ones.
    Shared-context reasoning stages turn it on; a conversation gains from it too. Response metadata reports
    `reused_tokens` and `prefilled_tokens`. A call may pass `reuse_context="store"`: its prompt continues nothing,
    so it runs as a plain call (the same output as without the cache, also with int8/int4 weights) and only stores
    its entries for the calls that continue it (the continued format's analysis)."""

    @model_validator(mode="before")
    @classmethod
    def _route_stage_profile(cls, data: Any) -> Any:
        """Accept `profile=<stage budgets>` as an alias of `stage_profile`.

        `profile` is langchain-core's model-capabilities field (a dict of feature flags). A value that is clearly a
        stage budget (an object with `plan_for`, or a mapping keyed by stage names) is moved to `stage_profile`;
        a capabilities dict stays where it is.
        """
        if isinstance(data, dict) and any(alias in data for alias in MAX_TOKENS_ALIASES):
            data = canonical_kwargs(data)  # max_new_tokens / num_predict / max_completion_tokens -> max_tokens
        if isinstance(data, dict) and "profile" in data and "stage_profile" not in data:
            value = data["profile"]
            is_budget = (
                hasattr(value, "plan_for")
                or isinstance(value, (str, os.PathLike))  # a profile's file or shipped name, e.g. "csqa"
                or (isinstance(value, Mapping) and bool(value) and set(value) <= set(STAGES))
            )
            if is_budget:
                data = {k: v for k, v in data.items() if k != "profile"}
                data["stage_profile"] = value
        if isinstance(data, dict) and isinstance(data.get("stage_profile"), str):
            # a shipped profile's name is looked up among the profiles of the model this instance runs
            source = data.get("model", DEFAULT_MODEL)
            data = {**data, "stage_profile": as_stage_budgets(
                data["stage_profile"], model=source.name if isinstance(source, LoadedModel) else str(source))}
        return data

    @field_validator("stage_profile", mode="before")
    @classmethod
    def _coerce_profile(cls, value: Any) -> StageBudgets | None:
        return as_stage_budgets(value)

    @field_validator("stop", mode="before")
    @classmethod
    def _coerce_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    # ------------------------------------------------------------------ identity

    @property
    def _llm_type(self) -> str:
        return "litestage"

    @property
    def model_name(self) -> str:
        """The model's name without loading it (a `LoadedModel`'s own name, else the source string)."""
        return self.model.name if isinstance(self.model, LoadedModel) else self.model

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "weights": self.weights,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "stage": self.stage,
            "reuse_context": self.reuse_context,  # segments then run under their own plans: other outputs
            "skip_plan": self.skip_plan.model_dump(mode="json"),
            "early_exit": self.early_exit.model_dump() if self.early_exit else None,
            # a stage's budget comes from the profile: two models differing only there must not share cache entries
            "stage_profile": self.stage_profile.identity() if self.stage_profile is not None else None,
        }

    @override
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="litestage",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            text_inputs=True,
            text_outputs=True,
            image_inputs=False,
            audio_inputs=False,
            pdf_inputs=False,
            video_inputs=False,
            tool_calling=True,
            tool_choice=True,
            structured_output=True,
            open_weights=True,
        )

    # ------------------------------------------------------------------ token counting

    @override
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` from this model's own tokenizer (offline; langchain-core's default fetches GPT-2's)."""
        return self.loaded_model().encode(text)

    @override
    def get_num_tokens(self, text: str) -> int:
        return len(self.get_token_ids(text))

    @override
    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[ToolLike] | None = None
    ) -> int:
        """Tokens of `messages` as this model reads them: rendered by its chat template, tool instructions included
        (the reply's opening turn marker is not counted)."""
        # message-likes ("user", "Hi") too, as everywhere else in LangChain's message APIs
        converted = convert_to_messages(messages)
        return count_message_tokens(self.loaded_model(), converted, tool_specs(tools) if tools else ())

    # ------------------------------------------------------------------ call preparation

    def loaded_model(self, source: str | LoadedModel | None = None) -> LoadedModel:
        """The loaded weights for `source` (default: this instance's model), loading them on first use."""
        source = self.model if source is None else source
        return source if isinstance(source, LoadedModel) else load_model(source, weights=self.weights)

    def resolve_budget(self, stage: str | None, **overrides: Any) -> tuple[SkipPlan, EarlyExitConfig | None]:
        """The plan and early exit a call with `stage` and these overrides runs with (see the class docstring)."""
        budgets = self.stage_profile
        checked = check_stage(stage) if stage is not None else None
        if "skip_plan" in overrides and overrides["skip_plan"] is not None:
            plan = _as_plan(overrides["skip_plan"])
        elif checked is not None and budgets is not None:
            plan = budgets.plan_for(checked)
        else:
            plan = self.skip_plan
        if "early_exit" in overrides:
            early = _as_early_exit(overrides["early_exit"])
        elif checked is not None and budgets is not None and budgets.sets_early_exit:
            early = budgets.early_exit_for(checked)
        else:
            early = self.early_exit
        return plan, early

    def stage_cap(self, stage: str | None, *, own_early_exit: bool = False) -> int | None:
        """The profile's token cap for a call with `stage`: applies where the profile's early exit does (see the
        class docstring), so not to a call that passes its own `early_exit`; None otherwise."""
        budgets = self.stage_profile
        if stage is None or budgets is None or not budgets.sets_early_exit or own_early_exit:
            return None
        return budgets.max_tokens_for(check_stage(stage))

    def prepare(
        self, messages: Sequence[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> PreparedCall:
        """Validate a call's messages and overrides and render its prompt; raises `InvalidInputError`."""
        kwargs = canonical_kwargs(kwargs)
        unknown = sorted(set(kwargs) - CALL_KWARGS)
        if unknown:
            raise InvalidInputError(
                f"unknown argument(s) {unknown} for ChatLiteStage; supported per-call arguments: "
                f"{', '.join(sorted(CALL_KWARGS - {'stream'}))}"
            )
        messages, continuation = split_continuation(messages)
        stage = kwargs.get("stage", self.stage)
        plan, early = self.resolve_budget(stage, **{k: kwargs[k] for k in ("skip_plan", "early_exit") if k in kwargs})
        loaded = self.loaded_model(kwargs.get("model") or None)
        if self.stage_profile is not None and "skip_plan" not in kwargs:
            self.stage_profile.check_model(loaded)  # a searched profile only fits the weights it was searched on
        plan.check(loaded.num_layers)
        offered = kwargs.get("tools") and kwargs.get("tool_choice") != "none"  # "none": the tools are not offered
        specs = tuple(tool_specs(kwargs["tools"])) if offered else ()
        forced = forced_tool_name(kwargs.get("tool_choice"), specs) if specs else None
        answering = bool(specs) and forced is None and bool(messages) and isinstance(messages[-1], ToolMessage)
        if answering:
            # Left to decide right after a tool result, a small model calls the same tool again and again (a
            # ToolNode/tools_condition loop never ends): its turn is the answer, so the tools are not offered and
            # the earlier calls are told in words, not in the call format it would copy.
            specs = ()
        stops = list(stop if stop is not None else (self.stop or []))
        schema = kwargs.get("response_schema")
        if schema is not None and not isinstance(schema, dict):
            raise InvalidInputError("response_schema must be a JSON schema dict")
        if schema is None:
            schema = response_format_schema(kwargs.get("response_format"))
        budget = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(budget, int):  # anything else is GenerationConfig's to reject
            budget = capped_budget(budget, self.stage_cap(stage, own_early_exit="early_exit" in kwargs))
        try:
            config = GenerationConfig(
                max_new_tokens=budget,
                temperature=kwargs.get("temperature", self.temperature),
                top_p=kwargs.get("top_p", self.top_p),
                top_k=kwargs.get("top_k", self.top_k),
                seed=kwargs.get("seed", self.seed),
                stop=stops,
                early_exit=early,
            )
        except ValueError as exc:
            raise InvalidInputError(f"invalid generation settings: {exc}") from exc
        _check_last_message(messages)
        conversation = build_conversation(loaded, messages, specs, forced, answering=answering)
        chat, instructions, template_tools = conversation.chat, conversation.instructions, conversation.template_tools
        prompt = loaded.render_chat(chat, tools=template_tools)
        shared_prefix = None
        if self.reuse_prefix and len(chat) >= 2:
            shared_prefix = loaded.render_chat(chat[:-1], tools=template_tools, add_generation_prompt=False)
        prefix = "" if (forced or schema) else str(kwargs.get("response_prefix") or "")
        reuse_value = kwargs.get("reuse_context", self.reuse_context)
        if reuse_value not in (True, False, "store"):
            raise InvalidInputError(f"reuse_context must be True, False or 'store', got {reuse_value!r}")
        reuse_context = bool(reuse_value) and not (specs or schema)
        # "store": a prompt that continues no earlier call runs as a plain call and stores its entries afterwards, so
        # its output is the separate format's, bit for bit (a plain call cannot compute a skipped attention layer's
        # entries: such a plan reuses and stores through the context cache's own prefill instead)
        store_context = reuse_context and reuse_value == "store" and continuation is None and not plan.attention
        segments = None
        if continuation is not None or reuse_context:
            if specs or schema:
                raise InvalidInputError("a continued assistant turn cannot be combined with tools or a schema")
            segments = prompt_segments(prompt, shared_prefix, continuation, prefix, plan)
            whole = "".join(text for text, _ in segments)
            prompt = whole[: len(whole) - len(prefix)]
            if shared_prefix is not None and not prompt.startswith(shared_prefix):
                shared_prefix = None
        return PreparedCall(
            loaded=loaded,
            model_name=str(kwargs.get("model") or loaded.name),
            stage=check_stage(stage) if stage is not None else None,
            plan=plan,
            config=config,
            prompt=prompt + prefix,
            prefix=prefix,
            tools=specs,
            forced_tool=forced,
            schema=schema,
            shared_prefix=shared_prefix,
            instructions=instructions,
            single_call=kwargs.get("parallel_tool_calls") is False,
            segments=segments,
            reuse_context=reuse_context,
            store_context=store_context,
        )

    # ------------------------------------------------------------------ generation

    def _run(self, calls: Sequence[PreparedCall], on_token: Any = None) -> list[GenerationResult]:
        """Generate for calls that share one batch key, in one batched engine call (guided calls one by one)."""
        first = calls[0]
        if first.tools and first.forced_tool is None:
            return [self._run_tools_auto(call) for call in calls]
        if first.guided:
            return [self._run_guided(call) for call in calls]
        prompts: list[Any] = [c.prompt for c in calls]
        reuse: dict[str, Any] = {}
        if first.store_context:
            reuse = {"store_to": first.loaded.context_cache}
        elif first.segments is not None:
            encoded = [encode_segments(c.loaded, c.segments or ()) for c in calls]
            prompts = [ids for ids, _ in encoded]
            if first.reuse_context:
                reuse = {"context_cache": first.loaded.context_cache, "prompt_plans": [runs for _, runs in encoded]}
        return generate(
            first.loaded,
            prompts,
            plan=first.plan,
            config=first.config,
            on_token=on_token,
            # The engine reuses a prefix only when every row starts with it; mixed prefixes prefill in full.
            shared_prefix=first.shared_prefix if all(c.shared_prefix == first.shared_prefix for c in calls) else None,
            **reuse,
            **_cancel_kwargs(),
        )

    def _run_tools_auto(self, call: PreparedCall) -> GenerationResult:
        """Tools bound, none forced: the model decides; if it opens a `<tool_call>`, the call is filled guided.

        Generation stops at the opening tag; when that is why it stopped, the text so far is kept as content and
        the call itself continues exactly like a forced `"any"` call. With a response format as well (an agent's
        structured answer), a reply that opens no call is the JSON answer, filled like `with_structured_output`.
        """
        update: dict[str, Any] = {"stop": (*call.config.stop, TOOL_CALL_OPEN)}
        if call.schema is not None:
            update = {"stop": (*call.config.stop, TOOL_CALL_OPEN, "{"),
                      "max_new_tokens": min(call.config.max_new_tokens, _DECIDE_TOKENS)}
        config = call.config.model_copy(update=update)
        first = generate(
            call.loaded, [call.prompt], plan=call.plan, config=config, shared_prefix=call.shared_prefix,
            **_cancel_kwargs(),
        )[0]
        opened = first.finish_reason == "stop" and TOOL_CALL_OPEN in call.loaded.decode(first.token_ids)
        if not opened and call.schema is not None:
            answer = self._run_guided(replace(call, tools=()))
            return _combined(call, answer.text, [first, answer], truncated=answer.finish_reason == "length")
        if not opened:
            return first
        lead = first.text.rstrip()
        forced = call.tools[0].name if len(call.tools) == 1 else "any"
        continuation = replace(call, prompt=call.prompt + first.text, forced_tool=forced, schema=None)
        continued = self._run_guided(continuation, lead=(lead + "\n") if lead else "")
        return _combined(call, continued.text, [first, continued])

    def _run_guided(self, call: PreparedCall, lead: str = "") -> GenerationResult:
        """Fill a forced tool call or a structured reply value by value (see `litestage_chain.chat.guided`).

        `lead` is text already generated before the call (auto tool mode); it starts the returned text.
        """

        # Every step extends the same prompt: its KV entries are computed once, by the first step, and reused by the
        # next ones. The prompt is this call's alone, so its entry lives in a table of this call, not the model's.
        own_prompt = PrefixCache(max_entries=1)

        def step(continuation: str, stops: Sequence[str], max_new: int) -> GenerationResult:
            config = call.config.model_copy(update={"max_new_tokens": max(1, max_new), "stop": tuple(stops)})
            return generate(
                call.loaded, [call.prompt + continuation], plan=call.plan, config=config, shared_prefix=call.prompt,
                prefix_cache=own_prompt, **_cancel_kwargs(),
            )[0]

        def choose(continuation: str, options: Sequence[str]) -> int:
            return choose_option(
                call.loaded, call.prompt + continuation, options, call.plan, shared_prefix=call.prompt,
                prefix_cache=own_prompt,
            )

        budget = call.config.max_new_tokens
        if call.schema is not None:
            filled = fill_object(step, "", call.schema, budget=budget, choose=choose)
            return _combined(call, filled.text, filled.results, truncated=filled.truncated)
        text = call_prefix(call.forced_tool, call.tools)  # '<tool_call>\n{"name": "' (+ the name if known)
        name = call.forced_tool
        if name == "any":
            # The name is chosen among the bound tools by the model's likelihood, never written freely.
            names = [s.name for s in call.tools]
            name = names[choose(text, [n + '"' for n in names])]
            text += name + '", "arguments": '
        spec = next(s for s in call.tools if s.name == name)
        filled = fill_object(step, text, spec.parameters, budget=budget, choose=choose)
        text += filled.text + "}\n</tool_call>"
        return _combined(call, lead + text, filled.results, truncated=filled.truncated)

    def _message(self, call: PreparedCall, result: GenerationResult) -> AIMessage:
        text = call.prefix + result.text
        metadata = _response_metadata(call, result)
        usage = _usage(result)
        if call.tools:
            parsed: ParsedToolCalls = parse_tool_calls(text, call.tools)
            tool_calls = parsed.tool_calls[:1] if call.single_call else parsed.tool_calls
            if tool_calls:
                metadata["finish_reason"] = "tool_calls"
            return AIMessage(
                content=strip_echoed_instructions(parsed.content, call.instructions),
                tool_calls=tool_calls,
                invalid_tool_calls=parsed.invalid_tool_calls,
                usage_metadata=usage,
                response_metadata=metadata,
            )
        return AIMessage(content=text, usage_metadata=usage, response_metadata=metadata)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self.prepare(messages, stop, **kwargs)
        on_token = None
        if run_manager is not None and run_manager.handlers:
            # As ChatOllama does: an invoke still reports every token to the callbacks (tracing, streaming handlers).
            def on_token(row: int, piece: str) -> None:
                run_manager.on_llm_new_token(piece, chunk=ChatGenerationChunk(message=AIMessageChunk(content=piece)))

        result = self._run([call], on_token=on_token)[0]
        return ChatResult(generations=[ChatGeneration(message=self._message(call, result))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Decoding is CPU-bound torch work: run it on a worker thread so the event loop stays responsive; tokens
        # reach the async callbacks through the loop, in order. Cancelling the task stops the decode in that thread.
        loop = asyncio.get_running_loop()
        sync_manager = None
        if run_manager is not None and run_manager.handlers:
            sync_manager = _LoopTokenRelay(run_manager, loop)
        return await _cancellable(functools.partial(self._generate, messages, stop, cast(Any, sync_manager), **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self.prepare(messages, stop, **kwargs)
        if call.tools or call.guided:
            # A half-written tool call cannot be told apart from text until it is complete: emit one chunk.
            yield _whole_message_chunk(self._message(call, self._run([call])[0]))
            return
        if call.prefix:
            yield ChatGenerationChunk(message=AIMessageChunk(content=call.prefix))
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()
        worker = _StreamWorker(self, call, pieces.put)
        worker.start()
        try:
            while True:
                kind, value = pieces.get()
                if kind == "piece":
                    yield ChatGenerationChunk(message=AIMessageChunk(content=value))
                elif kind == "done":
                    yield _final_chunk(call, value)
                    return
                else:
                    raise value
        finally:
            worker.cancel()
            worker.join()  # it stops at its next token; none of its work outlives the stream

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        call = await loop.run_in_executor(None, functools.partial(self.prepare, messages, stop, **kwargs))
        if call.tools or call.guided:
            result = await loop.run_in_executor(None, self._run, [call])
            yield _whole_message_chunk(self._message(call, result[0]))
            return
        if call.prefix:
            yield ChatGenerationChunk(message=AIMessageChunk(content=call.prefix))
        pieces: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        worker = _StreamWorker(self, call, lambda item: loop.call_soon_threadsafe(pieces.put_nowait, item))
        worker.start()
        try:
            while True:
                kind, value = await pieces.get()
                if kind == "piece":
                    yield ChatGenerationChunk(message=AIMessageChunk(content=value))
                elif kind == "done":
                    yield _final_chunk(call, value)
                    return
                else:
                    raise value
        finally:
            worker.cancel()

    # ------------------------------------------------------------------ true batching

    def _can_batch(self, kwargs: Mapping[str, Any]) -> bool:
        """Batching bypasses the per-call cache and rate limiter, so only use it when neither is active."""
        if kwargs.get("tools") or kwargs.get("response_schema") or self.rate_limiter is not None:
            return False
        if self.cache is False:
            return True
        return self.cache is None and get_llm_cache() is None

    @override
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Batched generation: inputs sharing a budget decode together (`max_concurrency` caps the batch size).

        Every input still gets its own callback run (so tracing and `astream_events` look the same as for single
        calls); only the decoding is shared. Falls back to LangChain's per-input threads when a cache, a rate
        limiter or tools are in play.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        if len(inputs) < 2 or not self._can_batch(kwargs):
            return cast(
                list[AIMessage], super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
            )
        size = configs[0].get("max_concurrency") or len(inputs)
        outputs: list[Any] = []
        for start in range(0, len(inputs), size):
            outputs.extend(
                self._batch_generate(
                    [self._convert_input(item).to_messages() for item in inputs[start : start + size]],
                    configs[start : start + size],
                    return_exceptions=return_exceptions,
                    **kwargs,
                )
            )
        return outputs

    @override
    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """`batch` on a worker thread, so one batched decode does not block the event loop."""
        return await _cancellable(
            functools.partial(self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)
        )

    def _batch_generate(
        self,
        message_lists: list[list[BaseMessage]],
        configs: list[RunnableConfig],
        *,
        return_exceptions: bool,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:
        """One callback run per input, one engine call per group of inputs that share a budget."""
        structured = kwargs.pop("ls_structured_output_format", None)
        kwargs.pop("structured_output_format", None)
        kwargs.pop("stream", None)
        params = self._get_invocation_params(stop=stop, **kwargs)
        options: dict[str, Any] = {"stop": stop}
        if structured:
            options["ls_structured_output_format"] = structured
        ls_params = self._get_ls_params_with_defaults(stop=stop, **kwargs)
        run_managers: list[CallbackManagerForLLMRun] = []
        for messages, config in zip(message_lists, configs, strict=True):
            manager = CallbackManager.configure(
                config.get("callbacks"),
                self.callbacks,
                self.verbose,
                config.get("tags"),
                self.tags,
                {**(config.get("metadata") or {}), **ls_params},
                self.metadata,
            )
            (run_manager,) = manager.on_chat_model_start(
                self._serialized,
                [messages],
                invocation_params=params,
                options=options,
                name=config.get("run_name"),
                run_id=config.pop("run_id", None),
                batch_size=len(message_lists),
            )
            run_managers.append(run_manager)
        outcomes: list[AIMessage | Exception | None] = [None] * len(message_lists)
        groups: dict[Any, list[tuple[int, PreparedCall]]] = {}
        for index, messages in enumerate(message_lists):
            try:
                call = self.prepare(messages, stop, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported on this input's run, raised or returned below
                outcomes[index] = exc
                continue
            groups.setdefault(call.batch_key(), []).append((index, call))
        for members in groups.values():

            def on_token(row: int, piece: str, members: list[tuple[int, PreparedCall]] = members) -> None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                run_managers[members[row][0]].on_llm_new_token(piece, chunk=chunk)

            try:
                results: list[GenerationResult | Exception] = list(
                    self._run([call for _, call in members], on_token=on_token)
                )
            except LiteStageError as exc:
                if len(members) == 1 or isinstance(exc, GenerationCancelled):
                    results = [exc] * len(members)
                else:  # one input's error (say, too long for the context) must not fail the others with it
                    results = [self._run_alone(call, run_managers[index]) for index, call in members]
            except Exception as exc:  # noqa: BLE001 - the whole group failed together
                results = [exc] * len(members)
            for (index, call), result in zip(members, results, strict=True):
                if isinstance(result, Exception):
                    outcomes[index] = result
                    continue
                message = self._message(call, result)
                message.id = f"lc_run--{run_managers[index].run_id}"
                outcomes[index] = message
        for outcome, run_manager in zip(outcomes, run_managers, strict=True):
            if isinstance(outcome, Exception):
                run_manager.on_llm_error(outcome, response=LLMResult(generations=[]))
            else:
                run_manager.on_llm_end(LLMResult(generations=[[ChatGeneration(message=cast(AIMessage, outcome))]]))
        if not return_exceptions:
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        return cast(list[AIMessage | Exception], outcomes)

    def _run_alone(self, call: PreparedCall, run_manager: CallbackManagerForLLMRun) -> GenerationResult | Exception:
        """One input of a failed batch, generated by itself: its result, or the error that is its own."""

        def on_token(_row: int, piece: str) -> None:
            run_manager.on_llm_new_token(piece, chunk=ChatGenerationChunk(message=AIMessageChunk(content=piece)))

        try:
            return self._run([call], on_token=on_token)[0]
        except Exception as exc:  # noqa: BLE001 - reported on this input's run, raised or returned by the caller
            return exc

    # ------------------------------------------------------------------ tools and structured output

    @override
    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (kept as OpenAI-format dicts); calls come back in `AIMessage.tool_calls`.
        `tool_choice`: `None`/`"auto"` lets the model decide, `"any"`/`"required"`/`True` forces some tool (which
        one is chosen among the bound tools by the model), a tool name forces that tool. In auto mode a reply right
        after a tool result is an answer: the tools are not offered again for it (force a call to chain tools).
        `strict`: arguments are always filled to the schema, so this only marks the dicts as OpenAI does.
        `parallel_tool_calls=False` keeps at most one call per reply. `response_format` (OpenAI style, as
        `create_agent` passes it) makes a reply that calls no tool a JSON answer of that schema.
        See `litestage_chain.chat.tools` for the wire format.
        """
        bound = openai_tools(tools, strict=strict)
        forced_tool_name(tool_choice, tool_specs(bound))  # validate now, not at the first call
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=bound, tool_choice=tool_choice, **kwargs)

    @override
    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Return a runnable whose output is `schema` (a pydantic model instance, else a dict).

        All methods work the same way on a local model: the keys are described in the prompt, the reply is filled
        value by value (arrays, nested objects, enums and `Optional` fields included, see `litestage_chain.guided`),
        parsed and validated, and a failed reply is sent back with the error for up to `max_retries` more tries
        before `StructuredOutputError` is raised. `max_tokens` caps the whole reply: a reply cut by it comes back
        with finish reason "length" and fails validation naming the keys it lacks. `method` (one of
        "json_schema", "function_calling", "json_mode"; anything else is an error) and `strict` are accepted for
        API compatibility.
        """
        from litestage_chain.chat.structured import structured_output_runnable

        if kwargs:
            raise InvalidInputError(f"unsupported with_structured_output arguments: {sorted(kwargs)}")
        if method not in STRUCTURED_METHODS:
            raise InvalidInputError(f"unknown method {method!r}; use one of {', '.join(STRUCTURED_METHODS)}")
        return structured_output_runnable(self, schema, include_raw=include_raw, method=method)


STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")


class _LoopTokenRelay:
    """Hands tokens from the decoding thread to an async run manager on its event loop, one at a time, in order."""

    def __init__(self, run_manager: AsyncCallbackManagerForLLMRun, loop: asyncio.AbstractEventLoop) -> None:
        self.handlers = run_manager.handlers
        self._run_manager = run_manager
        self._loop = loop

    def on_llm_new_token(self, token: str, *, chunk: ChatGenerationChunk | None = None) -> None:
        coroutine = self._run_manager.on_llm_new_token(token, chunk=chunk)
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class _StreamWorker:
    """Runs one generation on a thread and pushes ("piece", str) / ("done", result) / ("error", exc) items.

    Cancelling (consumer stopped iterating) makes the next token callback raise, which aborts the decode loop
    instead of burning CPU on text nobody reads.
    """

    def __init__(self, model: ChatLiteStage, call: PreparedCall, put: Any) -> None:
        self._model = model
        self._call = call
        self._put = put
        self._cancelled = threading.Event()
        context = contextvars.copy_context()
        context.run(_CANCEL.set, self._cancelled)  # the engine stops at its next step, even between printed pieces
        self._thread = threading.Thread(target=context.run, args=(self._work,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def join(self) -> None:
        self._thread.join()

    def _on_token(self, row: int, piece: str) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        self._put(("piece", piece))

    def _work(self) -> None:
        try:
            result = self._model._run([self._call], on_token=self._on_token)[0]
        except (_Cancelled, GenerationCancelled):
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, which re-raises it
            self._put(("error", exc))
            return
        self._put(("done", result))


class _Cancelled(Exception):
    """Raised inside the decode loop to stop a stream whose consumer went away."""


_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("litestage_cancel", default=None)
"""Set in the context an async call's worker thread runs in: `_run` hands it to `generate`, which stops at its
next step once the event is set."""


def _cancel_kwargs() -> dict[str, threading.Event]:
    """`generate`'s `cancel` argument when this call can be cancelled (async calls and streams), else nothing."""
    cancel = _CANCEL.get()
    return {"cancel": cancel} if cancel is not None else {}


async def _cancellable(work: Any) -> Any:
    """Run `work()` on a worker thread; cancelling the awaiting task also stops the generation in that thread.

    `run_in_executor` alone cannot stop a running thread, so a cancelled `ainvoke` would keep decoding to the end
    for nobody; here the task's cancellation sets the event the engine checks before every decoding step."""
    cancel = threading.Event()
    context = contextvars.copy_context()
    context.run(_CANCEL.set, cancel)
    future = asyncio.get_running_loop().run_in_executor(None, context.run, work)
    try:
        return await future
    except asyncio.CancelledError:
        cancel.set()
        raise


def _check_last_message(messages: Sequence[BaseMessage]) -> None:
    """An empty last user message is refused, as `generate` refuses an empty prompt: the model would only be
    answering its chat template."""
    last = messages[-1] if messages else None
    if isinstance(last, HumanMessage) and isinstance(last.content, str) and not last.content.strip():
        raise InvalidInputError(f"message {len(messages) - 1} (HumanMessage) is empty: there is nothing to answer")


def _as_plan(value: Any) -> SkipPlan:
    if isinstance(value, SkipPlan):
        return value
    try:
        return SkipPlan.model_validate(value)
    except ValueError as exc:
        raise InvalidInputError(f"invalid skip_plan: {exc}") from exc


def _as_early_exit(value: Any) -> EarlyExitConfig | None:
    if value is None or value is False:
        return None
    if isinstance(value, EarlyExitConfig):
        return value
    try:
        return EarlyExitConfig.model_validate(value)
    except ValueError as exc:
        raise InvalidInputError(f"invalid early_exit: {exc}") from exc


def _usage(result: GenerationResult) -> UsageMetadata:
    """Token counts; prompt tokens served from the shared-prefix table are cached input, as providers report them.

    `cache_creation` marks the call that computed and stored the prefix, `cache_read` the calls that reused it, so
    a user can see how much of a conversation's prompt the model did not prefill again.
    """
    usage = UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.generated_tokens,
        total_tokens=result.prompt_tokens + result.generated_tokens,
    )
    if result.prefix_tokens:
        kind = "cache_creation" if result.prefix_computed else "cache_read"
        usage["input_token_details"] = InputTokenDetails(**{kind: result.prefix_tokens})  # type: ignore[typeddict-item]
    return usage


def _response_metadata(call: PreparedCall, result: GenerationResult) -> dict[str, Any]:
    return {
        "model_name": call.model_name,
        "model_provider": "litestage",
        "weights": call.loaded.weights,
        "kernel": kernel_path(call.loaded.weights),
        "stage": call.stage,
        "skipped": {"attention": list(result.plan.attention), "mlp": list(result.plan.mlp)},
        "num_skipped": result.plan.num_skipped,
        "early_exit": result.early_exited,
        "finish_reason": FINISH_REASONS[result.finish_reason],
        "engine_finish_reason": result.finish_reason,
        "prefill_seconds": result.prefill_seconds,
        "decode_seconds": result.decode_seconds,
        "prefix_seconds": result.prefix_seconds,
        "reused_tokens": result.reused_tokens,
        "prefilled_tokens": result.prompt_tokens - result.reused_tokens,
    }


def _final_chunk(call: PreparedCall, result: GenerationResult) -> ChatGenerationChunk:
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            usage_metadata=_usage(result),
            response_metadata=_response_metadata(call, result),
            chunk_position="last",
        )
    )


def _whole_message_chunk(message: AIMessage) -> ChatGenerationChunk:
    tool_call_chunks = [
        {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i, "type": "tool_call_chunk"}
        for i, c in enumerate(message.tool_calls)
    ]
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=message.content,
            tool_call_chunks=tool_call_chunks,
            invalid_tool_calls=message.invalid_tool_calls,
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _combined(
    call: PreparedCall, text: str, results: Sequence[GenerationResult], *, truncated: bool = False
) -> GenerationResult:
    """One result standing for the several engine calls of a guided reply (tokens and seconds summed).

    `truncated`: the reply's token budget ran out before the JSON was complete (finish reason "length").
    """
    return GenerationResult(
        text=text,
        token_ids=[t for r in results for t in r.token_ids],
        confidences=[c for r in results for c in r.confidences],
        prompt_tokens=call.loaded.count_tokens(call.prompt),
        generated_tokens=sum(r.generated_tokens for r in results),
        # the guided steps' "shared prefix" is this call's own prompt (a private table, see `_run_guided`): computing
        # it is this call's prefill, not a one-time cost shared with other calls
        prefill_seconds=sum(r.prefill_seconds + r.prefix_seconds for r in results),
        decode_seconds=sum(r.decode_seconds for r in results),
        early_exited=any(r.early_exited for r in results),
        finish_reason="length" if truncated else "stop",
        plan=call.plan,
    )


