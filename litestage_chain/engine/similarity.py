"""Public entry point for sub-layer importance measurement on a loaded model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from litestage_chain.engine.forward import sublayer_cosines
from litestage_chain.errors import InvalidInputError

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel


def sublayer_similarity(model: "LoadedModel", token_ids: Sequence[int]) -> torch.Tensor:
    """Mean cos(residual before, after) of every sub-layer over one prompt's tokens: [num_layers, 2] (attn, mlp)."""
    ids = list(token_ids)
    if not ids:
        raise InvalidInputError("token_ids is empty")
    if len(ids) > model.max_positions:
        raise InvalidInputError(f"{len(ids)} tokens exceed the model's context of {model.max_positions}")
    return sublayer_cosines(model.view, torch.tensor(ids, dtype=torch.long))
