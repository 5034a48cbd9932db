"""Drop-in replacements for ``nn.Linear`` with cheaper weight formats.

Every module here keeps the ``nn.Linear`` contract the decode loop relies on: ``forward(x)``
takes ``[..., in_features]`` and returns ``[..., out_features]`` in the dtype of ``x``, and
``in_features`` / ``out_features`` attributes exist. Weights are buffers, not parameters,
because they are inference-only and must not be touched by optimisers.

Why several paths inside one forward: decode calls carry one (or a few) token rows, where the
compiled GEMV reads the low-bit weights once and wins by the byte ratio; prefill carries many
rows, where a float GEMM is compute-bound and the fastest thing is to dequantise once and
hand the product to ATen's matmul.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litestage_chain.quant.kernels import get_kernels

WeightFormat = Literal["float32", "bfloat16", "int8", "int4"]
WEIGHT_FORMATS: tuple[str, ...] = ("float32", "bfloat16", "int8", "int4")

#: Rows of ``x`` up to which the compiled GEMV beats dequantise + matmul (the kernel reads the
#: weights once per 4 rows). Measured with benchmarks/cpu_formats.py --rows.
GEMV_MAX_ROWS = 8

DEFAULT_INT4_GROUP = 32


def _flatten(x: torch.Tensor, in_features: int) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(f"expected last dim {in_features}, got shape {tuple(x.shape)}")
    return x.reshape(-1, in_features).to(torch.float32).contiguous()


def _bias_or_none(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()


class _LowBitLinear(nn.Module):
    """Shared shape bookkeeping and the GEMV-or-matmul dispatch."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight these codes stand for."""
        raise NotImplementedError

    def _gemv(self, x2: torch.Tensor) -> torch.Tensor | None:
        """Compiled small-batch product, or ``None`` when the kernels are unavailable."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flatten(x, self.in_features)
        y = self._gemv(x2) if x2.shape[0] <= GEMV_MAX_ROWS else None
        if y is None:
            y = F.linear(x2, self.dequantize())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def weight_bytes(self) -> int:
        """Bytes read per full pass over the weights (what decode speed is bound by)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: ``w ~= q * scale[:, None]``, q in [-127, 127]."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(_LowBitLinear):
    """int8 weights, one float32 scale per output row; float32 activations (weight-only)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        out_features, in_features = qweight.shape
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8_rows(linear.weight)
        return cls(q, scale, _bias_or_none(linear))

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.scale[:, None]

    def _gemv(self, x2: torch.Tensor) -> torch.Tensor | None:
        kernels = get_kernels()
        return None if kernels is None else kernels.int8_gemv(x2, self.qweight, self.scale)


def quantize_int4_groups(weight: torch.Tensor, group: int = DEFAULT_INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group`` inputs: ``w ~= scale * q + min``, q in [0, 15].

    Returns the packed codes ``uint8 [out, in/2]`` (within a group, byte j holds element j in
    its low nibble and element j + group/2 in its high nibble, the layout the kernel loads)
    and ``float16 [out, in/group, 2]`` (scale, min) pairs. The same scale+min form as GGUF
    Q4_K keeps re-quantising a Q4_K checkpoint close to lossless.
    """
    w = weight.detach().to(torch.float32)
    out_features, in_features = w.shape
    if group % 32 or in_features % group:
        raise ValueError(f"int4 needs in_features ({in_features}) divisible by group ({group}), a multiple of 32")
    g = w.reshape(out_features, in_features // group, group)
    lo = g.amin(dim=-1)
    hi = g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).to(torch.float16)
    minimum = lo.to(torch.float16)
    scale32 = scale.to(torch.float32).clamp_min(1e-8)[..., None]
    q = torch.round((g - minimum.to(torch.float32)[..., None]) / scale32).clamp_(0, 15).to(torch.uint8)
    half = group // 2
    packed = (q[..., :half] | (q[..., half:] << 4)).reshape(out_features, in_features // 2)
    return packed.contiguous(), torch.stack([scale, minimum], dim=-1).contiguous()


def unpack_int4(packed: torch.Tensor, group: int) -> torch.Tensor:
    """Codes ``uint8 [out, in]`` in [0, 15] from the packed layout of :func:`quantize_int4_groups`."""
    out_features = packed.shape[0]
    g = packed.reshape(out_features, -1, group // 2)
    return torch.cat([g & 0xF, g >> 4], dim=-1).reshape(out_features, -1)


class Int4Linear(_LowBitLinear):
    """Packed 4-bit weights with a float16 (scale, min) per group; float32 activations."""

    def __init__(self, qweight: torch.Tensor, params: torch.Tensor, group: int, bias: torch.Tensor | None) -> None:
        out_features = qweight.shape[0]
        in_features = qweight.shape[1] * 2
        super().__init__(in_features, out_features, bias)
        self.group = int(group)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("params", params.to(torch.float16).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = DEFAULT_INT4_GROUP) -> Int4Linear:
        packed, params = quantize_int4_groups(linear.weight, group)
        return cls(packed, params, group, _bias_or_none(linear))

    def dequantize(self) -> torch.Tensor:
        q = unpack_int4(self.qweight, self.group).to(torch.float32)
        q = q.reshape(self.out_features, -1, self.group)
        p = self.params.to(torch.float32)
        return (q * p[..., :1] + p[..., 1:]).reshape(self.out_features, self.in_features)

    def _gemv(self, x2: torch.Tensor) -> torch.Tensor | None:
        kernels = get_kernels()
        return None if kernels is None else kernels.int4_gemv(x2, self.qweight, self.params, self.group)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"


class BFloat16Linear(nn.Module):
    """bfloat16 weights computed in bfloat16: the half-size reference format.

    Kept for comparison: on this CPU class ATen's bf16 GEMV is slower than float32 despite
    reading half the bytes, which is why the integer formats exist.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BFloat16Linear:
        return cls(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())

    def dequantize(self) -> torch.Tensor:
        return self.weight.to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


def convert_linear(linear: nn.Linear, fmt: WeightFormat, *, int4_group: int = DEFAULT_INT4_GROUP) -> nn.Module:
    """One ``nn.Linear`` in format ``fmt``; ``"float32"`` returns the module unchanged."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
    if fmt == "float32":
        return linear
    if fmt == "bfloat16":
        return BFloat16Linear.from_linear(linear)
    if fmt == "int8":
        return Int8Linear.from_linear(linear)
    if fmt == "int4":
        return Int4Linear.from_linear(linear, int4_group)
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")
