"""Convert the projections of a prepared ``DecoderView`` to a cheaper weight format.

Why on the view and not the transformers model: the decode loop runs the view's modules
(fused q/k/v, o_proj, fused gate/up, down_proj, lm_head), so converting exactly those gives
the fast path with one GEMV per fused projection. The input view and its modules are not
modified; ``load_model`` then releases the float32 projections it no longer needs.
"""

from __future__ import annotations

import dataclasses
import os

from torch import nn

from litestage_chain.engine.architecture import DecoderView
from litestage_chain.engine.progress import first_run_step
from litestage_chain.engine.quant.convert import quantize_model_linears
from litestage_chain.engine.quant.formats import WeightFormat, default_lm_head_format
from litestage_chain.engine.quant.serialize import (
    converted_cache_path,
    load_cached_converted,
    save_converted_or_warn,
)


def view_linears(view: DecoderView) -> dict[str, nn.Module]:
    """The view's weight-carrying modules by a stable name (used as the cache key names)."""
    modules: dict[str, nn.Module] = {}
    for i, attn in enumerate(view.attention):
        modules[f"attention.{i}.qkv"] = attn.qkv
        modules[f"attention.{i}.o_proj"] = attn.o_proj
    for i, mlp in enumerate(view.mlp):
        modules[f"mlp.{i}.gate_up"] = mlp.gate_up
        modules[f"mlp.{i}.down_proj"] = mlp.down_proj
    modules["lm_head"] = view.lm_head
    return modules


def replace_view_modules(view: DecoderView, modules: dict[str, nn.Module]) -> DecoderView:
    """A copy of ``view`` with the modules named as in :func:`view_linears` swapped in."""
    attention = tuple(
        dataclasses.replace(a, qkv=modules[f"attention.{i}.qkv"], o_proj=modules[f"attention.{i}.o_proj"])
        for i, a in enumerate(view.attention)
    )
    mlp = tuple(
        dataclasses.replace(m, gate_up=modules[f"mlp.{i}.gate_up"], down_proj=modules[f"mlp.{i}.down_proj"])
        for i, m in enumerate(view.mlp)
    )
    return dataclasses.replace(view, attention=attention, mlp=mlp, lm_head=modules["lm_head"])


def quantize_decoder_view(
    view: DecoderView,
    fmt: WeightFormat,
    *,
    lm_head_fmt: WeightFormat | None = None,
    weights_id: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DecoderView:
    """A new view whose projections are in ``fmt`` (``lm_head`` in ``lm_head_fmt``, by default
    int8 for int4 layers); the input view is not modified.

    With ``weights_id`` (e.g. ``LoadedModel.weights_sha256``) the converted tensors are cached
    as safetensors and reused on the next load. Projections that are not ``nn.Linear`` (an
    unfused fallback) are left as they are.
    """
    head_fmt = lm_head_fmt if lm_head_fmt is not None else default_lm_head_format(fmt)
    if fmt == "float32" and head_fmt == "float32":
        return view
    current = view_linears(view)
    linears = {name: m for name, m in current.items() if type(m) is nn.Linear}
    expected = {name for name in linears if (head_fmt if name == "lm_head" else fmt) != "float32"}
    label = fmt if head_fmt == default_lm_head_format(fmt) else f"{fmt}-head-{head_fmt}"
    path = converted_cache_path(weights_id, label, cache_dir) if weights_id else None  # type: ignore[arg-type]
    converted: dict[str, nn.Module] | None = None
    if path is not None:
        cached = load_cached_converted(path) or {}
        if set(cached) == expected:
            converted = cached
    if converted is None:
        with first_run_step(f"converting the weights to {label}"):
            every = quantize_model_linears(linears, fmt, lm_head_fmt=head_fmt)
        converted = {name: every[name] for name in expected}
        if path is not None:
            save_converted_or_warn(converted, path, {"weights_id": weights_id or "", "format": label})
    return replace_view_modules(view, {**current, **converted})
