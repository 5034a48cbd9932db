"""LangChain's standard chat-model test suites, run against ChatLiteStage.

Unit tests need no weights. Integration tests run on the real default model (SmolLM2-135M-Instruct, loaded once
per session by `load_model`'s cache) with a small token budget to keep CI fast.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from litestage_chain.chat.chat_model import ChatLiteStage


class TestChatLiteStageUnit(ChatModelUnitTests):
    # Skipped by the suite itself, with its own reason: test_init_from_env (a local model reads no environment
    # variables) and test_serdes (the model holds loaded weights, so it is not LangChain-serialisable).

    @property
    def chat_model_class(self) -> type[ChatLiteStage]:
        return ChatLiteStage

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no API key and makes no network requests, so `api_key` and `timeout` do not apply
        # (the model rejects unknown arguments instead of ignoring them).
        params = super().standard_chat_model_params
        params.pop("api_key")
        params.pop("timeout")
        return params


@pytest.mark.integration
class TestChatLiteStageIntegration(ChatModelIntegrationTests):
    # Skipped by the suite itself, with its own reason: media inputs (image/audio/PDF/video: the model reads text
    # only), Anthropic-format inputs, VCR timing (no HTTP to record).

    @property
    def chat_model_class(self) -> type[ChatLiteStage]:
        return ChatLiteStage

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m", "max_tokens": 12}

    @property
    def model_override_value(self) -> str:
        # Another source string for the same weights (the embedded GGUF file's path): a per-call `model=` override
        # is exercised end to end without loading a second model.
        from litestage_chain.engine.sources import resolve_source

        return resolve_source("smollm2-135m").location

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        # The earlier turns of a conversation are its shared prefix: stored by the first call, reused by the next.
        both = ["cache_read_input", "cache_creation_input"]
        return {"invoke": both, "stream": both}

    def _conversation_reply(self, *, stream: bool, fresh: bool) -> AIMessage:
        model = ChatLiteStage(**self.chat_model_params)
        conversation = [SystemMessage("You answer in one word."), HumanMessage("What colour is the sky?")]
        if fresh:
            model.loaded_model().prefix_cache.clear()
        else:
            model.invoke(conversation)  # stores the system turn's KV entries
        if not stream:
            return model.invoke(conversation)
        merged = None
        for chunk in model.stream(conversation):
            merged = chunk if merged is None else merged + chunk
        assert merged is not None
        return AIMessage(content=merged.content, usage_metadata=merged.usage_metadata)

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        return self._conversation_reply(stream=stream, fresh=False)

    def invoke_with_cache_creation_input(self, *, stream: bool = False) -> AIMessage:
        return self._conversation_reply(stream=stream, fresh=True)

    @property
    def supports_json_mode(self) -> bool:
        # method="json_mode" takes the same prompt-and-validate path as the other methods.
        return True

    @pytest.mark.xfail(
        reason="model capability, not plumbing: with tool_choice left to the model, SmolLM2-135M answers the "
        "weather question in prose instead of calling the tool. Forced tool calls work (test_tool_calling, "
        "test_tool_choice) and auto mode is covered on scripted output in tests/test_chat_model_tools.py.",
        strict=False,
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
