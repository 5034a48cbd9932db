"""Swap the Linear layers of a decoder (or a set of loose Linears) to another weight format.

Why only decoder layers and ``lm_head``: those hold nearly all the bytes read per decoded
token. Embedding lookups read one row per token and stay float32 (so a tied ``lm_head`` gets
its own quantised copy and the embedding is left untouched).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar, overload

from torch import nn

from litestage_chain.engine.quant.formats import (
    WEIGHT_FORMATS,
    WeightFormat,
    convert_linear,
    default_lm_head_format,
)

_DECODER_LINEAR = re.compile(r"(^|\.)layers\.\d+\.")
_LM_HEAD = re.compile(r"(^|\.)lm_head$")

M = TypeVar("M", bound=nn.Module)


def target_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the Linears to convert.

    In a model with ``layers.<i>`` blocks or an ``lm_head``, those Linears; in anything else
    (a container the decode loop built itself, e.g. of fused projections), every Linear.
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen = [n for n in linears if _DECODER_LINEAR.search(n) or _LM_HEAD.search(n)]
    return chosen if chosen else linears


def _replace(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@overload
def quantize_model_linears(
    model_or_modules: M, fmt: WeightFormat, *, lm_head_fmt: WeightFormat | None = ...
) -> M: ...
@overload
def quantize_model_linears(
    model_or_modules: Mapping[str, nn.Linear], fmt: WeightFormat, *, lm_head_fmt: WeightFormat | None = ...
) -> dict[str, nn.Module]: ...
@overload
def quantize_model_linears(
    model_or_modules: Sequence[nn.Linear], fmt: WeightFormat, *, lm_head_fmt: WeightFormat | None = ...
) -> list[nn.Module]: ...


def quantize_model_linears(
    model_or_modules: nn.Module | Mapping[str, nn.Linear] | Sequence[nn.Linear],
    fmt: WeightFormat,
    *,
    lm_head_fmt: WeightFormat | None = None,
) -> nn.Module | dict[str, nn.Module] | list[nn.Module]:
    """Convert Linears to ``fmt`` ("float32" leaves them as they are).

    * an ``nn.Module``: the decoder-layer Linears and ``lm_head`` are replaced **in place**
      (see :func:`target_linear_names`) and the same module is returned; pass a model copy the
      decode loop owns, not a shared one;
    * a mapping name -> Linear: a new dict name -> converted module;
    * a sequence of Linears: a new list of converted modules, in order.

    A module named ``lm_head`` (or ending in ``.lm_head``) gets ``lm_head_fmt``, by default
    :func:`default_lm_head_format` (int8 when ``fmt`` is int4).
    """
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")

    head_fmt = lm_head_fmt if lm_head_fmt is not None else default_lm_head_format(fmt)

    def one(linear: nn.Linear, name: str = "") -> nn.Module:
        return convert_linear(linear, head_fmt if _LM_HEAD.search(name) else fmt)

    if isinstance(model_or_modules, nn.Module):
        model = model_or_modules
        for name in target_linear_names(model):
            converted = one(model.get_submodule(name), name)
            if converted is not model.get_submodule(name):
                _replace(model, name, converted)
        return model
    if isinstance(model_or_modules, Mapping):
        return {name: one(linear, name) for name, linear in model_or_modules.items()}
    return [one(linear) for linear in model_or_modules]
