"""litestage_chain: LiteStage latency-aware layer skipping for multi-stage reasoning with small local models.

The engine (loading, skip plans, generation) is imported eagerly; the LangChain layer, the offline search and the
benchmark data are imported on first use, so `import litestage_chain` stays cheap for engine-only users.
"""

from importlib import import_module
from typing import Any

from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.generation import (
    GenerationConfig,
    GenerationResult,
    generate,
)
from litestage_chain.engine.loading import (
    LoadedModel,
    from_pretrained_objects,
    load_model,
)
from litestage_chain.engine.similarity import sublayer_similarity
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import (
    InvalidInputError,
    LiteStageError,
    ModelLoadError,
    ProfileError,
    ProfileMismatchError,
    UnsupportedArchitectureError,
)

_LAZY: dict[str, str] = {
    # LangChain layer and reasoning chain
    "ChatLiteStage": "litestage_chain.chat.chat_model",
    "ReasoningResult": "litestage_chain.reasoning.chain",
    "build_reasoning_chain": "litestage_chain.reasoning.chain",
    "stage_node": "litestage_chain.reasoning.chain",
    "answer_node": "litestage_chain.reasoning.chain",
    "run_batch": "litestage_chain.reasoning.chain",
    "StageOutput": "litestage_chain.reasoning.stage_output",
    "PromptSet": "litestage_chain.reasoning.prompts",
    "ContextCache": "litestage_chain.engine.context_cache",
    "StructuredOutputError": "litestage_chain.chat.structured",
    # offline configuration
    "Profile": "litestage_chain.budgets.profile",
    "StageBudget": "litestage_chain.budgets.stage_budgets",
    "StageBudgets": "litestage_chain.budgets.stage_budgets",
    "shipped_profiles": "litestage_chain.budgets.profile",
    "Importance": "litestage_chain.offline.importance",
    "compute_importance": "litestage_chain.offline.importance",
    "plan_for_count": "litestage_chain.offline.importance",
    "SearchConfig": "litestage_chain.offline.search",
    "SearchResult": "litestage_chain.offline.search",
    "search_budgets": "litestage_chain.offline.search",
    "EvalResult": "litestage_chain.offline.store",
    "ResultsStore": "litestage_chain.offline.store",
    "ChainEvaluator": "litestage_chain.offline.evaluator",
    "search_profile": "litestage_chain.offline.pipeline",
    "search_benchmark_profile": "litestage_chain.offline.pipeline",
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
    "ProfileError",
    "ProfileMismatchError",
    "SkipPlan",
    "UnsupportedArchitectureError",
    "from_pretrained_objects",
    "generate",
    "load_model",
    "sublayer_similarity",
    *_LAZY,
]
