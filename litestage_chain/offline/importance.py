"""LiteStage step 1: rank every attention and MLP sub-layer by how redundant it is.

A sub-layer whose output barely changes the residual stream (cosine similarity of the stream before
and after it close to 1) contributes little and is skipped first. Similarity is measured on the full
model over calibration prompts of every reasoning stage: the stage-s prompt holds the question and the
outputs of the stages before it, so each stage is measured on the text it will actually see. The
per-stage means are kept (they differ between stages and are worth inspecting), and the ranking the
search uses accumulates them over stages.

Measuring takes a forward pass per prompt, so results are cached on disk keyed by the model's weights
sha256 and a hash of the tokenised prompts.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from litestage_chain.engine import similarity
from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.engine.skip_plan import SkipPlan, SubLayer, SubLayerKind
from litestage_chain.errors import InvalidInputError

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel

CalibrationPrompt = Union[str, Sequence[int]]
IMPORTANCE_FORMAT_VERSION = 1


class Importance(BaseModel):
    """Per-stage mean sub-layer similarity of one model, and the ranking derived from it.

    `per_stage[stage][layer] == (attention_similarity, mlp_similarity)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = IMPORTANCE_FORMAT_VERSION
    model_name: str
    weights_sha256: str
    prompt_hash: str
    num_layers: int = Field(ge=1)
    prompts_per_stage: dict[str, int]
    per_stage: dict[str, list[tuple[float, float]]]

    @model_validator(mode="after")
    def _shapes_agree(self) -> Importance:
        if sorted(self.per_stage) != sorted(self.prompts_per_stage):
            raise ValueError("per_stage and prompts_per_stage name different stages")
        for stage, rows in self.per_stage.items():
            if len(rows) != self.num_layers:
                raise ValueError(f"stage {stage!r} has {len(rows)} layers of values, expected {self.num_layers}")
        return self

    @property
    def stages(self) -> list[str]:
        return list(self.per_stage)

    def stage_tensor(self, stage: str) -> torch.Tensor:
        """[num_layers, 2] similarities of one stage (column 0 attention, column 1 MLP)."""
        if stage not in self.per_stage:
            raise InvalidInputError(f"no importance measured for stage {stage!r}; have {self.stages}")
        return torch.tensor(self.per_stage[stage], dtype=torch.float64)

    def accumulated(self) -> torch.Tensor:
        """Similarity accumulated over stages (their sum), the score the shared ranking sorts by."""
        return torch.stack([self.stage_tensor(stage) for stage in self.per_stage]).sum(dim=0)

    @property
    def ranking(self) -> list[SubLayer]:
        """Every sub-layer, most redundant (highest accumulated similarity) first."""
        return rank_sublayers(self.accumulated())

    def stage_ranking(self, stage: str) -> list[SubLayer]:
        """The ranking one stage alone would give (for inspection; the search uses `ranking`)."""
        return rank_sublayers(self.stage_tensor(stage))


def rank_sublayers(scores: torch.Tensor) -> list[SubLayer]:
    """Order (layer, kind) by descending score; ties go to the lower layer, attention before MLP (deterministic)."""
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise InvalidInputError(f"expected a [num_layers, 2] score tensor, got shape {tuple(scores.shape)}")
    kinds: tuple[SubLayerKind, SubLayerKind] = ("attention", "mlp")
    entries = [
        (float(scores[layer, column]), layer, column)
        for layer in range(scores.shape[0])
        for column in range(2)
    ]
    entries.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [(layer, kinds[column]) for _, layer, column in entries]


def plan_for_count(ranking: Sequence[SubLayer], count: int) -> SkipPlan:
    """The plan skipping the `count` most redundant sub-layers of `ranking`."""
    if count < 0:
        raise InvalidInputError(f"skip count must be >= 0, got {count}")
    if count > len(ranking):
        raise InvalidInputError(f"cannot skip {count} sub-layers: the ranking has only {len(ranking)}")
    return SkipPlan.from_sublayers(list(ranking[:count]))


def _tokenise(model: LoadedModel, stage: str, prompts: Sequence[CalibrationPrompt]) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise InvalidInputError(f"stage {stage!r}: expected a list of prompts, got {type(prompts).__name__}")
    if not prompts:
        raise InvalidInputError(f"stage {stage!r} has no calibration prompts")
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = model.encode(prompt) if isinstance(prompt, str) else [int(token) for token in prompt]
        if not ids:
            raise InvalidInputError(f"stage {stage!r}, prompt {index}: empty prompt")
        encoded.append(ids)
    return encoded


def prompt_hash(encoded: Mapping[str, Sequence[Sequence[int]]]) -> str:
    """sha256 of the tokenised prompts of every stage (stage order is part of the identity)."""
    payload = json.dumps([[stage, [list(ids) for ids in rows]] for stage, rows in encoded.items()], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_path(cache_dir: Path, weights_sha256: str, prompts_sha256: str) -> Path:
    return cache_dir / f"{weights_sha256[:24]}-{prompts_sha256[:24]}.json"


def _read_cache(path: Path, weights_sha256: str, prompts_sha256: str) -> Importance | None:
    if not path.is_file():
        return None
    try:
        cached = Importance.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, OSError) as error:
        warnings.warn(f"ignoring unreadable importance cache {path}: {error}", stacklevel=3)
        return None
    if cached.weights_sha256 != weights_sha256 or cached.prompt_hash != prompts_sha256:
        return None  # a hash-prefix collision; recompute
    return cached


def _write_cache(path: Path, importance: Importance) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(importance.model_dump_json(), encoding="utf-8")
    temporary.replace(path)


def compute_importance(
    model: LoadedModel,
    stage_prompts: Mapping[str, Sequence[CalibrationPrompt]],
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Importance:
    """Mean sub-layer similarity per stage over already-built calibration prompts (text or token ids).

    `stage_prompts` maps each stage name to its prompts. Results are cached under `cache_dir` (default:
    the library cache) keyed by the weights sha256 and the prompt hash; a model without a weights
    sha256 (built from in-memory objects) is never cached, since nothing identifies it.
    """
    if not stage_prompts:
        raise InvalidInputError("no stages given: stage_prompts is empty")
    encoded = {stage: _tokenise(model, stage, prompts) for stage, prompts in stage_prompts.items()}
    prompts_sha256 = prompt_hash(encoded)
    path: Path | None = None
    if cache:
        if model.weights_sha256:
            path = cache_path(Path(cache_dir) if cache_dir is not None else cache_root() / "importance",
                              model.weights_sha256, prompts_sha256)
            hit = _read_cache(path, model.weights_sha256, prompts_sha256)
            if hit is not None:
                return hit
        else:
            warnings.warn(
                f"model {model.name!r} has no weights sha256, so its importance is not cached", stacklevel=2
            )

    total = sum(len(rows) for rows in encoded.values())
    per_stage: dict[str, list[tuple[float, float]]] = {}
    with tqdm(total=total, desc="sub-layer similarity", disable=not progress) as bar:
        for stage, rows in encoded.items():
            accumulated = torch.zeros(model.num_layers, 2, dtype=torch.float64)
            for ids in rows:
                accumulated += similarity.sublayer_similarity(model, ids).double()
                bar.update(1)
            mean = accumulated / len(rows)
            per_stage[stage] = [(float(a), float(m)) for a, m in mean.tolist()]

    result = Importance(
        model_name=model.name,
        weights_sha256=model.weights_sha256,
        prompt_hash=prompts_sha256,
        num_layers=model.num_layers,
        prompts_per_stage={stage: len(rows) for stage, rows in encoded.items()},
        per_stage=per_stage,
    )
    if path is not None:
        _write_cache(path, result)
    return result
