"""A flat, prepared view of a decoder-only transformer, so the engine can run (or skip) each sub-layer itself.

The engine does not call the transformers decoder's `forward`: that path derives positions and masks from KV-cache
layer 0 and writes every layer's cache, which breaks as soon as attention sub-layers are skipped. Instead it reads
the modules once into `DecoderView` and runs them with explicit positions and its own cache.

At preparation q/k/v projections are fused into one matrix and MLP gate/up into another (one GEMV instead of three
or two on the decode hot path). The original `nn.Linear` modules are re-pointed at views of the fused storage, so the
transformers model keeps working unchanged and no weight is stored twice (a model loaded in a smaller weight format
then drops those float32 projections altogether, see `loading.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from litestage_chain.errors import UnsupportedArchitectureError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


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


@dataclass(frozen=True)
class MlpParts:
    """The modules of one gated MLP sub-layer, with gate/up fused."""

    norm: nn.Module
    gate_up: nn.Module
    down_proj: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    intermediate_size: int


@dataclass(frozen=True)
class DecoderView:
    """Everything the engine needs to run a decoder sub-layer by sub-layer."""

    embed: nn.Module
    rotary: nn.Module
    attention: tuple[AttentionParts, ...]
    mlp: tuple[MlpParts, ...]
    final_norm: nn.Module
    lm_head: nn.Module

    @property
    def num_layers(self) -> int:
        return len(self.attention)


def check_supported(config: object) -> None:
    """Raise `UnsupportedArchitectureError` unless the engine can run this config exactly."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}: the skipping engine runs {', '.join(SUPPORTED_MODEL_TYPES)} "
            "decoders"
        )
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedArchitectureError(
            f"unsupported architecture: {model_type} with sliding-window attention is not supported"
        )
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        raise UnsupportedArchitectureError(
            f"unsupported architecture: MLP activation {config.hidden_act!r} (expected silu)"  # type: ignore[attr-defined]
        )


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


def build_decoder_view(model: nn.Module) -> DecoderView:
    """Read a transformers causal LM into a `DecoderView` (fusing projections where they are plain linears)."""
    config = model.config
    check_supported(config)
    inner = model.model
    attention: list[AttentionParts] = []
    mlp: list[MlpParts] = []
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    for layer in inner.layers:
        attn = layer.self_attn
        projections = [attn.q_proj, attn.k_proj, attn.v_proj]
        qkv = _fuse_linears(projections) if all(map(_is_plain_linear, projections)) else _UnfusedConcat(projections)
        attention.append(
            AttentionParts(
                norm=layer.input_layernorm,
                qkv=qkv,
                o_proj=attn.o_proj,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
            )
        )
        block = layer.mlp
        gate_up_parts = [block.gate_proj, block.up_proj]
        gate_up = (
            _fuse_linears(gate_up_parts) if all(map(_is_plain_linear, gate_up_parts)) else _UnfusedConcat(gate_up_parts)
        )
        mlp.append(
            MlpParts(
                norm=layer.post_attention_layernorm,
                gate_up=gate_up,
                down_proj=block.down_proj,
                act=block.act_fn,
                intermediate_size=block.gate_proj.out_features,
            )
        )
    return DecoderView(
        embed=inner.embed_tokens,
        rotary=inner.rotary_emb,
        attention=tuple(attention),
        mlp=tuple(mlp),
        final_norm=inner.norm,
        lm_head=model.lm_head,
    )


class _UnfusedConcat(nn.Module):
    """Fallback when projections are not plain linears (e.g. already replaced by a quantised module)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)
