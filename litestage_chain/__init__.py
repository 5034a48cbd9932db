"""litestage_chain: LiteStage latency-aware layer skipping for multi-stage reasoning with small local models.

The engine (loading, skip plans, generation) is imported eagerly; the LangChain layer, the offline search and the
benchmark data are imported on first use, so `import litestage_chain` stays cheap for engine-only users.
"""

from importlib import import_module
from typing import Any

from litestage_chain.early_exit import EarlyExitConfig
from litestage_chain.errors import (
    InvalidInputError,
    LiteStageError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from litestage_chain.generation import GenerationConfig, GenerationResult, generate
from litestage_chain.loading import LoadedModel, from_pretrained_objects, load_model
from litestage_chain.similarity import sublayer_similarity
from litestage_chain.skip_plan import SkipPlan

_LAZY: dict[str, str] = {
    # LangChain layer
    "ChatLiteStage": "litestage_chain.chat_model",
    "ReasoningResult": "litestage_chain.chain",
    "build_reasoning_chain": "litestage_chain.chain",
    "stage_node": "litestage_chain.chain",
    "answer_node": "litestage_chain.chain",
    "run_batch": "litestage_chain.chain",
    "StageOutput": "litestage_chain.stages",
    "PromptSet": "litestage_chain.prompts",
    "StructuredOutputError": "litestage_chain.structured",
    # offline configuration
    "Profile": "litestage_chain.profile",
    "ProfileError": "litestage_chain.profile",
    "ProfileMismatchError": "litestage_chain.profile",
    "shipped_profiles": "litestage_chain.profile",
    "Importance": "litestage_chain.importance",
    "compute_importance": "litestage_chain.importance",
    "plan_for_count": "litestage_chain.importance",
    "SearchConfig": "litestage_chain.search",
    "SearchResult": "litestage_chain.search",
    "search_budgets": "litestage_chain.search",
    "EvalResult": "litestage_chain.search_store",
    "ResultsStore": "litestage_chain.search_store",
    "ChainEvaluator": "litestage_chain.search_eval",
    "search_profile": "litestage_chain.offline",
    "search_benchmark_profile": "litestage_chain.offline",
    # benchmark data
    "DataError": "litestage_chain.data",
    "QuestionSet": "litestage_chain.data",
    "load_benchmark": "litestage_chain.data",
    "load_jsonl": "litestage_chain.data",
    "search_questions": "litestage_chain.data",
    "report_questions": "litestage_chain.data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'litestage_chain' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EarlyExitConfig",
    "GenerationConfig",
    "GenerationResult",
    "InvalidInputError",
    "LiteStageError",
    "LoadedModel",
    "ModelLoadError",
    "SkipPlan",
    "UnsupportedArchitectureError",
    "from_pretrained_objects",
    "generate",
    "load_model",
    "sublayer_similarity",
    *_LAZY,
]
