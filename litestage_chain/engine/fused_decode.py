"""Batch-1 decoding through the compiled decode step (`quant/csrc/decode_step.h`) where the model allows it.

Why: on a small model a token is hundreds of small ATen ops, and Python between them was a third of a 135M model's
decode time on one thread (benchmarks/README.md, section 4), which llama.cpp does not pay. For one sequence whose
layers are all Llama-shaped and whose projections are int8/int4 on the compiled kernels, `decode_one` hands the
decoder layers to one compiled call per token; the embedding, the final norm and the output head stay in Python (one
op each). Everything else, and every batch of two or more rows, keeps `forward.py`'s path.

What "Llama-shaped" means here: an RMSNorm of the Llama/Qwen2/Mistral/Phi-3 kind before each sub-layer, fused q/k/v
(biases allowed), one full-width rotary table, no per-head or output norms, no soft-capping, no sliding window, a
SiLU-gated MLP, and float32 activations and cache. The projections run the same kernels on the same rounded
activations as the Python path, so they agree bit for bit; norms, attention and the activation agree up to float
summation order (tests/engine/test_fused_decode.py compares logits and greedy tokens).

`LITESTAGE_FUSED_DECODE=0` (or `set_enabled(False)`) turns it off: A/B measurements and tests.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch

from litestage_chain.engine.architecture import DecoderView
from litestage_chain.engine.kv_cache import KVCache
from litestage_chain.engine.quant.formats import Int4Linear, Int8Linear, _route
from litestage_chain.engine.skip_plan import SkipPlan

_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm", "Phi3RMSNorm")
"""RMSNorm classes computing weight * (x * rsqrt(mean(x^2) + eps)) in float32 (Gemma's (1 + w) form is not one)."""
_ACTIVATIONS = ("SiLU", "SiLUActivation")

_enabled = [os.environ.get("LITESTAGE_FUSED_DECODE", "1") != "0"]
_programs: dict[int, tuple["weakref.ref[DecoderView]", Any]] = {}
"""Per view, by identity (converted views of one model share modules, e.g. the embedding, so no module can be the
key): its compiled program, or False when the model is not eligible. An entry goes when its view does."""


def set_enabled(enabled: bool) -> bool:
    """Use the compiled decode step where eligible (the default) or never; returns the previous setting, so that a
    caller can restore it (and not turn the step back on under `LITESTAGE_FUSED_DECODE=0`)."""
    previous = _enabled[0]
    _enabled[0] = bool(enabled)
    return previous


@contextmanager
def enabled_as(enabled: bool) -> Iterator[None]:
    """The compiled step on or off for a block, then back to what it was (A/B runs and tests)."""
    previous = set_enabled(enabled)
    try:
        yield
    finally:
        set_enabled(previous)


def enabled() -> bool:
    return _enabled[0]


def _linear_args(module: torch.nn.Module) -> Optional[tuple[Any, ...]]:
    """(bits, codes, parameters, bias) of an int8/int4 projection with a float32 bias or none; None otherwise."""
    bias = module.bias if getattr(module, "bias", None) is not None else None
    if bias is not None and bias.dtype != torch.float32:
        return None
    if type(module) is Int4Linear:
        return 4, module.qweight, module.params, bias
    if type(module) is Int8Linear:
        return 8, module.qweight, module.scales, bias
    return None


def _norm_args(module: torch.nn.Module, hidden: int) -> Optional[tuple[torch.Tensor, float]]:
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if type(module).__name__ not in _NORMS or weight is None or eps is None:
        return None
    if weight.dtype != torch.float32 or weight.numel() != hidden:
        return None
    return weight.detach().contiguous(), float(eps)


def _build(view: DecoderView, kernels: Any) -> Any:
    """The compiled program for `view`, or False if any layer is not Llama-shaped with int8/int4 projections."""
    if len({parts.rope for parts in view.attention}) != 1 or view.embed.weight.dtype != torch.float32:
        return False
    first = view.attention[0]
    hidden = view.embed.weight.shape[1]
    program = None
    for parts, mlp in zip(view.attention, view.mlp):
        if (parts.q_norm is not None or parts.k_norm is not None or parts.out_norm is not None
                or parts.softcap is not None or parts.window is not None or mlp.out_norm is not None
                or type(mlp.act).__name__ not in _ACTIVATIONS
                or (parts.num_heads, parts.num_kv_heads, parts.head_dim, parts.scaling)
                != (first.num_heads, first.num_kv_heads, first.head_dim, first.scaling)):
            return False
        norms = (_norm_args(parts.norm, hidden), _norm_args(mlp.norm, hidden))
        linears = [_linear_args(m) for m in (parts.qkv, parts.o_proj, mlp.gate_up, mlp.down_proj)]
        if any(n is None for n in norms) or any(lin is None for lin in linears):
            return False
        expected = [(parts.num_heads + 2 * parts.num_kv_heads) * parts.head_dim, hidden, 2 * mlp.intermediate_size,
                    hidden]
        if [m.out_features for m in (parts.qkv, parts.o_proj, mlp.gate_up, mlp.down_proj)] != expected:
            return False
        if program is None:
            program = kernels.DecodeProgram(hidden, parts.num_heads, parts.num_kv_heads, parts.head_dim,
                                            mlp.intermediate_size, parts.scaling)
        (attn_norm, attn_eps), (mlp_norm, mlp_eps) = norms  # type: ignore[misc]
        qkv, o_proj, gate_up, down = linears
        program.add_layer(attn_norm, attn_eps, *qkv, *o_proj, mlp_norm, mlp_eps, *gate_up, *down)
    return program if program is not None else False


def _low_bit(view: DecoderView) -> bool:
    """Whether the model's projections are int8/int4. Checked before anything touches the kernels: a float model
    never needs them, so it must not build them (a compiler, ~40 s, and a cache directory it may not have)."""
    return type(view.attention[0].qkv) in (Int4Linear, Int8Linear)


def program_for(view: DecoderView) -> Any:
    """The model's compiled program, or None where the fused step cannot run it (made once per model)."""
    if not _enabled[0] or not _low_bit(view):
        return None
    kernels = _route()[0]  # before the memo: the route can change (a CPU without kernels is simulated by tests)
    if kernels is None or not hasattr(kernels, "DecodeProgram"):
        return None
    found = _programs.get(id(view))
    if found is not None and found[0]() is view:
        return found[1] or None
    _remember(view, _build(view, kernels))
    return _programs[id(view)][1] or None


def _remember(view: DecoderView, program: Any) -> None:
    key = id(view)
    _programs[key] = (weakref.ref(view), program)
    weakref.finalize(view, _programs.pop, key, None)


def _session(program: Any, kernels: Any, view: DecoderView, cache: KVCache, plan: SkipPlan) -> Any:
    """The call's session: its plan and cache buffers bound once (stored on the cache, which drop_rows resets)."""
    found = cache.fused_session
    if found is not None and found[0] == plan:
        return found[1]
    layers = range(view.num_layers)
    scales = {(layer, kind): factor for layer, kind, factor in plan.scale}
    session = kernels.DecodeSession(
        program,
        [cache.keys.get(layer) for layer in layers],
        [cache.values.get(layer) for layer in layers],
        [layer in plan.attention for layer in layers],
        [layer in plan.mlp for layer in layers],
        [scales.get((layer, "attention"), 1.0) for layer in layers],
        [scales.get((layer, "mlp"), 1.0) for layer in layers],
    )
    cache.fused_session = (plan, session)
    return session


def decode_one_fused(
    view: DecoderView,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    cache: KVCache,
    start: int,
    plan: SkipPlan,
) -> Optional[torch.Tensor]:
    """`forward.decode_one`'s logits [1, V] through the compiled step, or None when it does not apply here."""
    if tokens.shape[0] != 1 or key_valid is not None or not cache.fused_ok():
        return None
    program = program_for(view)
    if program is None:
        return None
    hidden = view.embed(tokens[:, None])  # [1, 1, d]
    cos, sin = view.rotations(hidden, positions[:, None])[view.attention[0].rope]
    if cos.shape[-1] != view.attention[0].head_dim:  # partial rotary: not a layer the compiled step runs
        _remember(view, False)
        return None
    session = _session(program, _route()[0], view, cache, plan)
    state = hidden.reshape(-1).contiguous()
    session.step(state, cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous(), start)
    return view.logits(state.view(1, 1, -1))[:, 0, :]
