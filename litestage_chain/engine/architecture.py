"""A flat, prepared view of a decoder-only transformer, so the engine can run (or skip) each sub-layer itself.

The engine does not call the transformers decoder's `forward`: that path derives positions and masks from KV-cache
layer 0 and writes every layer's cache, which breaks as soon as attention sub-layers are skipped. Instead it reads
the modules once into `DecoderView` and runs them with explicit positions and its own cache.

At preparation q/k/v projections are fused into one matrix and MLP gate/up into another (one GEMV instead of three
or two on the decode hot path). The original `nn.Linear` modules are re-pointed at views of the fused storage, so the
transformers model keeps working unchanged and no weight is stored twice (a model loaded in a smaller weight format
then drops those float32 projections altogether, see `loading.py`). Families that already store them fused (Phi-3)
are used as they are.

The families differ only in small, well-defined ways, recorded per family in `FAMILIES` and per sub-layer in
`AttentionParts` / `MlpParts`: norms on the query/key heads (Qwen3, Gemma 3), norms after a sub-layer's output
(Gemma 2/3), soft-capped attention and final logits (Gemma 2), sliding-window layers (Mistral, Phi-3, Gemma 2/3,
Qwen with `use_sliding_window`), partial rotary (Phi-4-mini) and a second rotary table for local layers (Gemma 3).
Everything else (Gemma's embedding scale and (1 + w) RMSNorm, activations) lives inside the transformers modules
the view calls, so it is exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from litestage_chain.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """Where one transformers decoder family keeps the parts the engine runs, and what it adds to Llama's layer."""

    label: str
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """`self_attn` projections whose outputs are q, k, v in this order (one name: already fused)."""
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    """`mlp` projections whose outputs are gate, up in this order (one name: already fused)."""
    activation: str = "act_fn"
    mlp_norm: str = "post_attention_layernorm"
    attention_out_norm: Optional[str] = None
    mlp_out_norm: Optional[str] = None
    qk_norm: bool = False
    window_from_config: bool = False
    """True: `config.sliding_window` applies to every layer; False: each attention module names its own."""


FAMILIES: dict[str, Family] = {
    "llama": Family("Llama"),
    "qwen2": Family("Qwen2"),
    "qwen3": Family("Qwen3", qk_norm=True),
    "mistral": Family("Mistral", window_from_config=True),
    "phi3": Family("Phi-3", qkv=("qkv_proj",), gate_up=("gate_up_proj",), activation="activation_fn",
                   window_from_config=True),
    "gemma2": Family("Gemma 2", mlp_norm="pre_feedforward_layernorm", attention_out_norm="post_attention_layernorm",
                     mlp_out_norm="post_feedforward_layernorm"),
    "gemma3_text": Family("Gemma 3", mlp_norm="pre_feedforward_layernorm", attention_out_norm="post_attention_layernorm",
                          mlp_out_norm="post_feedforward_layernorm", qk_norm=True),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


@dataclass(frozen=True)
class AttentionParts:
    """The modules of one attention sub-layer, with q/k/v fused."""

    norm: nn.Module
    qkv: nn.Module
    o_proj: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    q_norm: Optional[nn.Module] = None
    """RMSNorm of each query head before rotary (Qwen3, Gemma 3); `k_norm` likewise for keys."""
    k_norm: Optional[nn.Module] = None
    out_norm: Optional[nn.Module] = None
    """Norm of the sub-layer's output before it joins the residual stream (Gemma's post-attention norm)."""
    softcap: Optional[float] = None
    """Attention scores become softcap * tanh(scores / softcap) before the mask and softmax (Gemma 2)."""
    window: Optional[int] = None
    """Sliding window: a query at position p sees keys at positions (p - window, p] only."""
    rope: Optional[str] = None
    """Which rotary table this layer uses, for families with one per layer type (Gemma 3); None: the only one."""


@dataclass(frozen=True)
class MlpParts:
    """The modules of one gated MLP sub-layer, with gate/up fused."""

    norm: nn.Module
    gate_up: nn.Module
    down_proj: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    intermediate_size: int
    out_norm: Optional[nn.Module] = None
    """Norm of the MLP's output before it joins the residual stream (Gemma's post-feedforward norm)."""


@dataclass(frozen=True)
class DecoderView:
    """Everything the engine needs to run a decoder sub-layer by sub-layer."""

    embed: nn.Module
    rotary: nn.Module
    attention: tuple[AttentionParts, ...]
    mlp: tuple[MlpParts, ...]
    final_norm: nn.Module
    lm_head: nn.Module
    logit_softcap: Optional[float] = None
    """Final logits become logit_softcap * tanh(logits / logit_softcap) (Gemma 2)."""

    @property
    def num_layers(self) -> int:
        return len(self.attention)

    def rotations(self, hidden: torch.Tensor, positions: torch.Tensor) -> dict[Optional[str], tuple[torch.Tensor, ...]]:
        """cos and sin ([B, 1, T, rotary dims]) at `positions` for every rotary table the layers use."""
        tables: dict[Optional[str], tuple[torch.Tensor, ...]] = {}
        for kind in {parts.rope for parts in self.attention}:
            cos, sin = self.rotary(hidden, positions) if kind is None else self.rotary(hidden, positions, kind)
            tables[kind] = (cos.unsqueeze(1), sin.unsqueeze(1))
        return tables

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (float32) of final-layer hidden states, soft-capped where the family does."""
        logits = self.lm_head(self.final_norm(hidden)).float()
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def _unsupported(config: Any, reason: str) -> UnsupportedArchitectureError:
    model_type = getattr(config, "model_type", None)
    families = ", ".join(family.label for family in FAMILIES.values())
    return UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}: {reason} (the skipping engine runs {families} decoders: "
        f"model types {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


def _rope_per_layer_type(config: Any) -> bool:
    """Whether the config has one rotary table per layer type (Gemma 3: local layers use another base)."""
    params = getattr(config, "rope_parameters", None) or {}
    return bool(params) and all(isinstance(value, dict) for value in params.values())


def _rope_types(config: Any) -> list[str]:
    """The rotary scaling types a config uses."""
    params = getattr(config, "rope_parameters", None) or {}
    tables = params.values() if _rope_per_layer_type(config) else [params]
    return [str(table.get("rope_type", "default")) for table in tables]


def check_supported(config: object) -> None:
    """Raise `UnsupportedArchitectureError` unless the engine can run this config exactly."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3":
        raise _unsupported(config, "this is the multimodal Gemma 3; the text-only checkpoints (model type "
                           "'gemma3_text', e.g. gemma-3-270m and gemma-3-1b) run")
    if model_type not in FAMILIES:
        raise _unsupported(config, "not a known decoder family")
    if getattr(config, "use_bidirectional_attention", False):
        raise _unsupported(config, "bidirectional attention is not a causal decoder")
    if "dynamic" in " ".join(_rope_types(config)):
        raise _unsupported(config, "dynamic rotary scaling changes every position's rotation as the sequence grows, "
                           "which a KV cache cannot follow")


def context_length(config: Any) -> int:
    """How many positions the engine may use: the config's context, and for LongRoPE models (Phi-3/3.5/4-mini with
    long context) only the original one, since beyond it transformers switches every position to other frequencies
    and recomputes the whole cache, which this engine does not."""
    length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    if "longrope" in _rope_types(config):
        original = (getattr(config, "rope_parameters", None) or {}).get("original_max_position_embeddings")
        original = original or getattr(config, "original_max_position_embeddings", None)
        if original:
            length = min(length, int(original))
    return length


def _fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    """Concatenate linears along the output dim and re-point the originals at views of the fused weight."""
    weight = torch.cat([lin.weight.data for lin in linears], dim=0).contiguous()
    has_bias = [lin.bias is not None for lin in linears]
    bias = None
    if any(has_bias):
        bias = torch.cat(
            [lin.bias.data if lin.bias is not None else weight.new_zeros(lin.out_features) for lin in linears]
        ).contiguous()
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    offset = 0
    for lin, own_bias in zip(linears, has_bias):
        n = lin.out_features
        lin.weight = nn.Parameter(weight[offset : offset + n], requires_grad=False)
        if own_bias:
            lin.bias = nn.Parameter(bias[offset : offset + n], requires_grad=False)  # type: ignore[index]
        offset += n
    return fused


def _is_plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def _fused(block: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """One module computing the named projections of `block` side by side (the module itself if only one)."""
    parts = [getattr(block, name) for name in names]
    if len(parts) == 1:
        return parts[0]
    return _fuse_linears(parts) if all(map(_is_plain_linear, parts)) else _UnfusedConcat(parts)


def _window(family: Family, config: Any, attn: nn.Module) -> Optional[int]:
    """The layer's sliding window, if it has one (None also where a family sets `sliding_window` to null)."""
    owner = config if family.window_from_config else attn
    window = getattr(owner, "sliding_window", None)
    return int(window) if window else None


def build_decoder_view(model: nn.Module) -> DecoderView:
    """Read a transformers causal LM into a `DecoderView` (fusing projections where they are plain linears)."""
    config = model.config
    check_supported(config)
    family = FAMILIES[config.model_type]
    inner = model.model
    attention: list[AttentionParts] = []
    mlp: list[MlpParts] = []
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    layer_types = getattr(config, "layer_types", None)
    per_type_rope = _rope_per_layer_type(config) and layer_types is not None
    for index, layer in enumerate(inner.layers):
        attn = layer.self_attn
        attention.append(
            AttentionParts(
                norm=layer.input_layernorm,
                qkv=_fused(attn, family.qkv),
                o_proj=attn.o_proj,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
                q_norm=attn.q_norm if family.qk_norm else None,
                k_norm=attn.k_norm if family.qk_norm else None,
                out_norm=getattr(layer, family.attention_out_norm) if family.attention_out_norm else None,
                softcap=getattr(config, "attn_logit_softcapping", None) or None,
                window=_window(family, config, attn),
                rope=layer_types[index] if per_type_rope else None,
            )
        )
        block = layer.mlp
        mlp.append(
            MlpParts(
                norm=getattr(layer, family.mlp_norm),
                gate_up=_fused(block, family.gate_up),
                down_proj=block.down_proj,
                act=getattr(block, family.activation),
                intermediate_size=int(config.intermediate_size),
                out_norm=getattr(layer, family.mlp_out_norm) if family.mlp_out_norm else None,
            )
        )
    return DecoderView(
        embed=inner.embed_tokens,
        rotary=inner.rotary_emb,
        attention=tuple(attention),
        mlp=tuple(mlp),
        final_norm=inner.norm,
        lm_head=model.lm_head,
        logit_softcap=getattr(config, "final_logit_softcapping", None) or None,
    )


class _UnfusedConcat(nn.Module):
    """Fallback when projections are not plain linears (e.g. already replaced by a quantised module)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)
