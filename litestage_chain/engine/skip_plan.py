"""`SkipPlan`: which attention and which MLP sub-layers a call skips.

LiteStage skips attention (MHSA) and MLP (FFN) sub-layers independently, so a plan is two sets of layer indices.
Plans are immutable values passed per call, never stored on the model: that is what makes concurrent calls with
different plans on one loaded model safe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_validator, model_serializer, model_validator

from litestage_chain.errors import InvalidInputError

SubLayerKind = Literal["attention", "mlp"]
SubLayer = tuple[int, SubLayerKind]
"""One sub-layer: (layer index, kind). Rankings and the search speak in these."""


class SkipPlan(BaseModel):
    """The sub-layers one generation call skips. `SkipPlan()` skips nothing (the full model).

    Indices are 0-based decoder layer numbers; they are sorted and de-duplicated on construction, so two plans
    that skip the same sub-layers compare equal and hash equal (usable as dict keys and cache keys).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()
    scale: tuple[tuple[int, SubLayerKind, float], ...] = Field(
        (), description="(layer, kind, factor): the residual stream is multiplied by `factor` where that skipped "
        "sub-layer would have run (AdaSkip's compensation, the sub-layer's mean output/input norm ratio); default none",
    )

    @field_validator("attention", "mlp", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> tuple[int, ...]:
        if value is None:
            return ()
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"must be a list of layer indices, got {value!r}")
        indices = []
        for item in value:  # type: ignore[union-attr]
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"layer indices must be integers, got {item!r}")
            if item < 0:
                raise ValueError(f"layer indices must be >= 0, got {item}")
            indices.append(item)
        return tuple(sorted(set(indices)))

    @field_validator("scale", mode="before")
    @classmethod
    def _sort_scale(cls, value: object) -> object:
        if value is None:
            return ()
        if isinstance(value, (list, tuple)):
            return tuple(sorted((tuple(item) for item in value), key=lambda item: (item[0], str(item[1]))))
        return value

    @model_validator(mode="after")
    def _scale_only_skipped(self) -> "SkipPlan":
        seen = set()
        for layer, kind, factor in self.scale:
            if not self.skips(layer, kind):
                raise ValueError(f"scale names {kind} sub-layer {layer}, which the plan does not skip")
            if (layer, kind) in seen:
                raise ValueError(f"scale names {kind} sub-layer {layer} twice")
            if not factor > 0.0:
                raise ValueError(f"scale factor of {kind} sub-layer {layer} must be > 0, got {factor}")
            seen.add((layer, kind))
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_scale(self, handler: "object", info: SerializationInfo) -> dict[str, object]:
        # plans without compensation serialise exactly as before the field existed: stored keys stay valid
        data = handler(self)  # type: ignore[operator]
        if not self.scale:
            data.pop("scale", None)
        return data

    def scale_for(self, layer: int, kind: SubLayerKind) -> float | None:
        """The compensation factor standing in for a skipped sub-layer, or None (the residual passes unchanged)."""
        for scaled_layer, scaled_kind, factor in self.scale:
            if scaled_layer == layer and scaled_kind == kind:
                return factor
        return None

    @property
    def num_skipped(self) -> int:
        """How many sub-layers this plan skips (attention and MLP counted separately)."""
        return len(self.attention) + len(self.mlp)

    @property
    def is_empty(self) -> bool:
        return self.num_skipped == 0

    def check(self, num_layers: int) -> None:
        """Raise `InvalidInputError` naming the first index that does not exist in a model of `num_layers` layers."""
        for kind, indices in (("attention", self.attention), ("mlp", self.mlp)):
            bad = [i for i in indices if i >= num_layers]
            if bad:
                raise InvalidInputError(
                    f"SkipPlan.{kind} names layer(s) {bad}, but the model has {num_layers} layers "
                    f"(valid indices 0..{num_layers - 1})"
                )

    def skips(self, layer: int, kind: SubLayerKind) -> bool:
        return layer in (self.attention if kind == "attention" else self.mlp)

    def describe(self) -> str:
        """A short human-readable summary, e.g. 'attn[3,7] mlp[5]' or 'full model'."""
        if self.is_empty:
            return "full model"
        parts = []
        if self.attention:
            parts.append("attn[" + ",".join(map(str, self.attention)) + "]")
        if self.mlp:
            parts.append("mlp[" + ",".join(map(str, self.mlp)) + "]")
        if self.scale:
            parts.append(f"({len(self.scale)} compensated)")
        return " ".join(parts)

    @classmethod
    def from_sublayers(cls, sublayers: "list[tuple[int, SubLayerKind]]") -> "SkipPlan":
        """Build a plan from (layer, kind) pairs, the form an importance ranking produces."""
        attention = [layer for layer, kind in sublayers if kind == "attention"]
        mlp = [layer for layer, kind in sublayers if kind == "mlp"]
        unknown = [kind for _, kind in sublayers if kind not in ("attention", "mlp")]
        if unknown:
            raise InvalidInputError(f"unknown sub-layer kind(s) {unknown}; expected 'attention' or 'mlp'")
        return cls(attention=attention, mlp=mlp)
