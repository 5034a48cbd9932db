"""AdaSkip (He et al., AAAI 2025) as its reference implementation (ASISys/AdaSkip) does it, on this engine.

What the reference does, and what is reproduced here:

* **Offline importance from prefills.** Over the first requests' prompts (prefill only), every attention and FFN
  sub-layer gets the mean over tokens of cos(residual before, residual after), averaged over requests, and the mean
  ratio ||residual after|| / ||residual before|| (norms of the whole prompt's hidden states). Reproduced by
  `adaskip_calibration` over the stage prompts of calibration questions (prompts only, no generated text).
* **One joint ranking of raw similarities.** The reference concatenates the attention and the FFN similarities into
  one list and skips the N highest (`select_indices(attn_sim + mlp_sim, N)`): no per-kind standardisation.
  Reproduced by `adaskip_joint_ranking` (ties: lower layer, attention first).
* **Norm-ratio compensation.** In place of a skipped sub-layer the reference multiplies the hidden states by that
  sub-layer's mean output/input norm ratio (`hidden_states * attn_prefill_ratio_diffreq_avg[i]`), rather than
  passing the residual through unchanged. Reproduced by `adaskip_plan`: the plan carries the factors
  (`SkipPlan.scale`) and the engine applies them where the skipped sub-layer would have run.
* **Skipping in prefill and decode.** The reference's end-to-end variant skips in both phases, as every method here
  does; its decode-only variant is not reproduced.

Not reproduced: the reference's online decode step, which after 20 decoded tokens of a request measures the FFN
similarities on those tokens and additionally skips FFN sub-layers whose similarity reaches the offline threshold
(`EXTRA_SKIP_MLP_LAYER_ID`, compensated with decode-time ratios). It changes the plan inside one generation, per
request, which this engine's per-call plans do not do (a batch shares one plan); with the reference's default
minimum of zero extra sub-layers it only ever adds skipping, so leaving it out makes AdaSkip skip less, not more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from litestage_chain.errors import InvalidInputError
from litestage_chain.engine.forward import new_cache, run_layers
from litestage_chain.offline.importance import SubLayer, rank_sublayers
from litestage_chain.engine.skip_plan import SkipPlan

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel


class AdaSkipCalibration(BaseModel):
    """Mean prefill similarity and output/input norm ratio of every sub-layer: [layer] -> (attention, mlp)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    similarity: list[tuple[float, float]] = Field(min_length=1)
    norm_ratio: list[tuple[float, float]] = Field(min_length=1)
    prompts: int = Field(ge=1)

    @model_validator(mode="after")
    def _same_layers(self) -> AdaSkipCalibration:
        if len(self.similarity) != len(self.norm_ratio):
            raise ValueError(f"{len(self.similarity)} layers of similarity but {len(self.norm_ratio)} of norm ratio")
        return self


def prefill_statistics(model: LoadedModel, token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_layers, 2] mean token cosine and whole-prompt norm ratio (after / before) of every sub-layer."""
    ids = list(token_ids)
    if not ids:
        raise InvalidInputError("token_ids is empty")
    if len(ids) > model.max_positions:
        raise InvalidInputError(f"{len(ids)} tokens exceed the model's context of {model.max_positions}")
    view = model.view
    similarity = torch.zeros(view.num_layers, 2, dtype=torch.float64)
    ratio = torch.zeros(view.num_layers, 2, dtype=torch.float64)

    def observe(layer: int, kind: str, before: torch.Tensor, after: torch.Tensor) -> None:
        column = 0 if kind == "attention" else 1
        similarity[layer, column] = F.cosine_similarity(before.float(), after.float(), dim=-1).mean().double()
        ratio[layer, column] = (after.float().norm() / before.float().norm().clamp_min(1e-12)).double()

    tokens = torch.tensor(ids, dtype=torch.long)[None, :]
    cache = new_cache(view, SkipPlan(), 1, len(ids), tokens.device)
    positions = torch.arange(len(ids))[None, :]
    with torch.inference_mode():
        run_layers(view, view.embed(tokens), positions, cache, 0, None, SkipPlan(), observer=observe)
    return similarity, ratio


def adaskip_calibration(model: LoadedModel, stage_prompts: Mapping[str, Sequence[str]]) -> AdaSkipCalibration:
    """Average the prefill statistics over every prompt of every stage (the reference averages over requests)."""
    prompts = [prompt for rows in stage_prompts.values() for prompt in rows]
    if not prompts:
        raise InvalidInputError("AdaSkip calibration needs at least one prompt")
    similarity = torch.zeros(model.num_layers, 2, dtype=torch.float64)
    ratio = torch.zeros(model.num_layers, 2, dtype=torch.float64)
    for prompt in prompts:
        sims, ratios = prefill_statistics(model, model.encode(prompt))
        similarity += sims
        ratio += ratios
    similarity /= len(prompts)
    ratio /= len(prompts)
    return AdaSkipCalibration(
        similarity=[(float(a), float(m)) for a, m in similarity.tolist()],
        norm_ratio=[(float(a), float(m)) for a, m in ratio.tolist()],
        prompts=len(prompts),
    )


def adaskip_joint_ranking(similarity: torch.Tensor) -> list[SubLayer]:
    """Both kinds in one order by raw similarity, highest first, as the reference's `select_indices` does."""
    if similarity.ndim != 2 or similarity.shape[1] != 2 or similarity.shape[0] < 1:
        raise InvalidInputError(f"expected a [num_layers, 2] similarity tensor, got shape {tuple(similarity.shape)}")
    return rank_sublayers(similarity.double())


def adaskip_plan(calibration: AdaSkipCalibration, count: int, *, compensate: bool = True) -> SkipPlan:
    """Skip the `count` sub-layers of highest similarity, each replaced by its norm ratio (with `compensate`)."""
    ranking = adaskip_joint_ranking(torch.tensor(calibration.similarity, dtype=torch.float64))
    if not 0 <= count <= len(ranking):
        raise InvalidInputError(f"cannot skip {count} sub-layers: the model has {len(ranking)}")
    chosen = ranking[:count]
    plan = SkipPlan.from_sublayers(chosen)
    if not compensate:
        return plan
    scale = [(layer, kind, calibration.norm_ratio[layer][0 if kind == "attention" else 1]) for layer, kind in chosen]
    return SkipPlan(attention=plan.attention, mlp=plan.mlp, scale=scale)
