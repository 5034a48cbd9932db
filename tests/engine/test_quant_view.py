"""Converted decoder views run through the engine and stay close to the float logits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate
from litestage_chain.engine.forward import all_logits
from litestage_chain.engine.quant import Int4Linear, Int8Linear
from litestage_chain.engine.quant.formats import round_activations_like_kernel, uses_kernel
from litestage_chain.engine.quant.view import (
    quantize_decoder_view,
    replace_view_modules,
    view_linears,
)


def _with_view(lm: LoadedModel, fmt: str, **kwargs: object) -> LoadedModel:
    clone = copy.copy(lm)  # shallow: the shared session model is never modified
    clone.view = quantize_decoder_view(lm.view, fmt, **kwargs)  # type: ignore[arg-type]
    return clone


class _Emulated(nn.Module):
    """Float reference for a converted module: its dequantised weight, and (for calls the compiled
    kernels run) the same activation rounding."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.weight = module.dequantize()
        self.bias = module.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if uses_kernel(x2.shape[0]):
            x2 = round_activations_like_kernel(x2)
        return torch.nn.functional.linear(x2, self.weight, self.bias).reshape(*x.shape[:-1], -1)


def _dequantised(lm: LoadedModel) -> LoadedModel:
    """The same low-bit weights run as float matmuls: the exact reference for the kernels."""
    modules = {name: _Emulated(m) for name, m in view_linears(lm.view).items()}
    clone = copy.copy(lm)
    clone.view = replace_view_modules(lm.view, modules)
    return clone


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_view_logits_match_dequantised_float(tiny_model: LoadedModel, fmt: str) -> None:
    """The compiled path equals float matmuls on the same rounded weights and activations.

    Not bit-exact: a 1e-7 difference in summation order can move an activation across a
    rounding boundary in a later layer, so the bound is far below the quantisation error itself
    (compare test_view_logits_near_float) but above float round-off.
    """
    lm = _with_view(tiny_model, fmt)
    ids = torch.tensor(tiny_model.encode("hello quantised world"))
    ref = _dequantised(lm).view
    assert _rel(all_logits(lm.view, ids[:1], SkipPlan()), all_logits(ref, ids[:1], SkipPlan())) < 1e-3
    assert _rel(all_logits(lm.view, ids, SkipPlan()), all_logits(ref, ids, SkipPlan())) < 3e-2


# Random Gaussian weights through 4 layers are a worst case for rounding (real checkpoints are
# measured in benchmarks/README.md); these bounds only catch gross breakage.
@pytest.mark.parametrize("fmt, tol", [("bfloat16", 0.05), ("int8", 0.1), ("int4", 0.8)])
def test_view_logits_near_float(tiny_model: LoadedModel, fmt: str, tol: float) -> None:
    ids = torch.tensor(tiny_model.encode("hello quantised world"))
    ref = all_logits(tiny_model.view, ids, SkipPlan())
    got = all_logits(_with_view(tiny_model, fmt).view, ids, SkipPlan())
    rel = (got - ref).norm() / ref.norm()
    assert rel < tol, f"{fmt}: relative logit error {rel:.4f}"


def test_view_conversion_leaves_original_alone(tiny_model: LoadedModel) -> None:
    before = {name: type(m) for name, m in view_linears(tiny_model.view).items()}
    converted = _with_view(tiny_model, "int8").view
    assert {name: type(m) for name, m in view_linears(tiny_model.view).items()} == before
    kinds = {type(m) for m in view_linears(converted).values()}
    assert kinds == {Int8Linear}
    int4 = view_linears(quantize_decoder_view(tiny_model.view, "int4"))
    assert isinstance(int4["lm_head"], Int8Linear) and isinstance(int4["mlp.0.down_proj"], Int4Linear)
    head_fp32 = view_linears(quantize_decoder_view(tiny_model.view, "int4", lm_head_fmt="float32"))
    assert type(head_fp32["lm_head"]) is nn.Linear
    assert all(type(m) is nn.Linear for m in view_linears(tiny_model.view).values())


def test_generate_with_int8_view_and_skips(tiny_model: LoadedModel) -> None:
    lm = _with_view(tiny_model, "int8")
    prompt = tiny_model.render_chat([{"role": "user", "content": "hi"}])
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    plan = SkipPlan(attention=[1], mlp=[2])
    quant = generate(lm, [prompt, prompt + "x"], plan=plan, config=cfg)
    ref = generate(_dequantised(lm), [prompt, prompt + "x"], plan=plan, config=cfg)
    assert [len(r.token_ids) for r in quant] == [len(r.token_ids) for r in ref]
    assert [r.token_ids[:2] for r in quant] == [r.token_ids[:2] for r in ref]


def test_view_cache_roundtrip(tiny_model: LoadedModel, tmp_path: Path) -> None:
    first = quantize_decoder_view(tiny_model.view, "int4", weights_id="tiny", cache_dir=tmp_path)
    assert len(list((tmp_path / "converted").glob("*.safetensors"))) == 1
    second = quantize_decoder_view(tiny_model.view, "int4", weights_id="tiny", cache_dir=tmp_path)
    a, b = view_linears(first), view_linears(second)
    assert all(isinstance(m, Int4Linear) for n, m in b.items() if n != "lm_head")
    assert all(torch.equal(a[n].qweight, b[n].qweight) for n in a)
