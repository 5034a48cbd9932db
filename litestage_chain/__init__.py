"""litestage_chain: LiteStage latency-aware layer skipping for multi-stage reasoning with small local models."""

from litestage_chain.early_exit import EarlyExitConfig
from litestage_chain.errors import (
    InvalidInputError,
    LiteStageError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from litestage_chain.generation import GenerationConfig, GenerationResult, generate
from litestage_chain.loading import LoadedModel, from_pretrained_objects, load_model
from litestage_chain.skip_plan import SkipPlan
from litestage_chain.similarity import sublayer_similarity

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
]
