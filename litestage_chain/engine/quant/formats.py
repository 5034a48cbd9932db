"""Drop-in replacements for ``nn.Linear`` with cheaper weight formats.

Every module here keeps the ``nn.Linear`` contract the decode loop relies on: ``forward(x)``
takes ``[..., in_features]`` and returns ``[..., out_features]`` in the dtype of ``x``, and
``in_features`` / ``out_features`` attributes exist. Weights are buffers, not parameters,
because they are inference-only and must not be touched by optimisers.

Three paths. With a SIMD kernel path (see kernels.py; AVX-512 VNNI, AVX2 or NEON) every call,
decode or prefill, runs on the low-bit weights directly; it quantises the activation rows to
int8 in groups of 32 (as GGUF Q8_0 does). Measured on this project's CPUs, that beats both
float32 matmul and dequantise-then-matmul at every row count tried (1-256, benchmarks/README.md).
On a CPU with none of those, the compiled portable path (plain C++ at the baseline ISA) runs calls
of at most ``PORTABLE_MAX_ROWS`` rows (decode), where reading fewer bytes pays; larger calls
(prefill) dequantise the weight on the fly, a cache-sized tile of rows at a time, and multiply
each tile with ATen's GEMM, which reuses each weight across the rows better than the portable
kernel (csrc/gemv_dequant.h); no float32 copy of the weight is made whole or kept. Those calls
round their activations as the kernels do first, so every compiled path computes one function
(up to summation order) whatever the row count. Without
any compiled kernels (no compiler), the module dequantises once, keeps the float32 weight and
calls ATen: the numbers are those of the rounded weights at float32 speed and size, so the
format still works everywhere but only pays where the kernels run.

The weights are stored in the kernels' blocked layout (see csrc/gemv_common.h): rows padded to
a multiple of 16 and inputs to a multiple of 32 with zeros, 16 rows interleaved per block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from litestage_chain.engine.quant.kernels import get_kernels
from litestage_chain.engine.weight_formats import WEIGHT_FORMATS, WeightFormat

#: Inputs per int4 (scale, min) group and per activation-quantisation group.
GROUP = 32
_ROWS = 16  # output rows per block


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


_fast: list[object] = []  # memo of _fast_kernels() and _kernel_max_rows(): they sit on the per-token path


#: Kernel paths that beat float32 matmul at every row count (benchmarks/README.md): the modules use them for every call.
FAST_ISAS = ("avx512_vnni", "avx2", "neon")

#: The path compiled for the baseline ISA, on CPUs with none of ``FAST_ISAS``.
PORTABLE_ISA = "portable"

PORTABLE_MAX_ROWS = 8
"""Most rows a call sends through the portable kernel; larger calls multiply the float32 weight, dequantised on the
fly a tile at a time, with ATen's GEMM.

Why 8: the portable kernel (SSE2 on x86-64, plain C++ elsewhere) reads each weight once per call and multiplies it
into the rows from L1, so its time grows with the rows (about 0.5 ms a row for four SmolLM2 layers' projections after
the first 2.9 ms, one thread), while float32 GEMM reads four times the bytes once for all rows. ``benchmarks/
portable_rows.py`` (benchmarks/README.md section 4), with ATen using AVX-512 beside it: the kernel is 1.3-1.8x
float32 from 1 to 8 rows (int8 and int4), 1.0-1.14x at 12 and 0.7-0.8x at 16, where tiles + ATen are as fast (0.7-0.8x)
and pull ahead at prefill sizes (0.94-0.96x float32 at 300 tokens)."""


def _route() -> list[object]:
    """``[module or None, row limit or None]``: what runs int8/int4 here, memoised until ``_fast.clear()``."""
    if not _fast:
        kernels = get_kernels()
        isa = kernels.kernel_isa() if kernels is not None else None
        if isa in FAST_ISAS:
            _fast[:] = [kernels, None]
        elif isa == PORTABLE_ISA:
            _fast[:] = [kernels, PORTABLE_MAX_ROWS]
        else:
            _fast[:] = [None, None]
    return _fast


@contextmanager
def forced_path(path: str) -> Iterator[object]:
    """Run int8/int4 calls in this block as on a CPU whose best kernel path is `path`, then as before.

    Tests and benchmarks compare paths on one machine; forcing the compiled module alone is not enough, because the
    modules memoise their route (`_route`), so the memo is dropped on the way in and out. Yields the compiled module.
    `path` "" means this CPU's own best path. Blocks nest: leaving one restores the enclosing block's path. Raises
    `RuntimeError` without the compiled kernels and `ValueError` (from the module) for a path this CPU cannot run.
    """
    module = get_kernels()
    if module is None:
        raise RuntimeError("no compiled kernels here: a kernel path cannot be forced")
    before = module.kernel_isa()  # the enclosing block's path, or this CPU's best: forcing that changes nothing
    module.force_isa(path)
    _fast.clear()
    try:
        yield module
    finally:
        module.force_isa(before)
        _fast.clear()


def _fast_kernels():  # noqa: ANN202 - the compiled module has no static type
    """The compiled module if a path of it that the modules use runs on this CPU, else ``None`` (the fallback)."""
    return _route()[0]


def _kernel_max_rows() -> int | None:
    """Most rows per call the kernels take here (``None``: every call), when ``_fast_kernels()`` is not ``None``."""
    return _route()[1]  # type: ignore[return-value]


def compiled_kernels_available() -> bool:
    """Whether int8/int4 decode runs on the compiled kernels here (otherwise they dequantise to float32: no faster)."""
    return _fast_kernels() is not None


def uses_kernel(rows: int) -> bool:
    """Whether a call of `rows` activation rows runs on the compiled kernels here.

    Else: without kernels, ``F.linear(x, dequantize())`` on the float activations; on the portable path above its row
    limit, the same GEMM on the activations rounded as the kernels round them (see `forward`)."""
    if _fast_kernels() is None:
        return False
    limit = _kernel_max_rows()
    return limit is None or rows <= limit


def kernel_path(fmt: str) -> str:
    """What computes the projections of a model in format `fmt` here, for tables and response metadata.

    int8/int4: the compiled kernel path (``"avx2"``, ``"avx512_vnni"``, ``"neon"``, or ``"portable"``, which runs
    decode while prefill dequantises on the fly, see ``PORTABLE_MAX_ROWS``) or ``"float32 fallback"`` where none was
    built (a user who sees that knows the small format saves no time); else ``"aten"``.
    """
    if fmt not in ("int8", "int4"):
        return "aten"
    kernels = _fast_kernels()
    return kernels.kernel_isa() if kernels is not None else "float32 fallback"


def round_activations_like_kernel(x2: torch.Tensor) -> torch.Tensor:
    """``x2 [M, K32]`` after the compiled path's int8 rounding (groups of 32, scale amax/127).

    The kernels compute exactly ``dequantize() @ round_activations_like_kernel(x)``; tests
    use this to check them, and to build float references that make the same choices.
    """
    g = x2.to(torch.float32).reshape(x2.shape[0], -1, GROUP)
    amax = g.abs().amax(dim=-1, keepdim=True)
    scale = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))  # the kernel's float32 ops, in order
    q = torch.round(g * inv).clamp_(-127, 127)
    return (q * scale).reshape(x2.shape)


def _pad_weight(weight: torch.Tensor) -> torch.Tensor:
    """float32 copy padded with zeros to [N16, K32]."""
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    return F.pad(w, (0, _round_up(k, GROUP) - k, 0, _round_up(n, _ROWS) - n))


def _bias_or_none(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()


class _BlockedLinear(nn.Module):
    """Shared shape bookkeeping and the GEMV-or-matmul dispatch."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.register_buffer("bias", bias)
        self._dense: torch.Tensor | None = None  # fallback-only float32 copy, never saved

    @property
    def padded_in_features(self) -> int:
        return _round_up(self.in_features, GROUP)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out_features, in_features]`` weight these codes stand for."""
        return self._dequantize_padded()[: self.out_features, : self.in_features]

    def _dequantize_padded(self) -> torch.Tensor:
        raise NotImplementedError

    def _kernel(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        raise NotImplementedError

    def _dequantize_compiled(self, kernels) -> torch.Tensor:  # noqa: ANN001
        """``dequantize()``'s values from one compiled pass (the torch ops take several passes, ~10x the time)."""
        raise NotImplementedError

    def _tiled_linear(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """``F.linear(x2, dequantize())`` (up to summation order) with the weight dequantised a cache-sized tile of
        rows at a time into a reused buffer: a whole float32 weight per call would be written to memory and faulted
        in each time, which costs more than the GEMM saves at prefill sizes (benchmarks/portable_rows.py)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dim {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        kernels, max_rows = _route()  # one lookup per call: this runs for every projection of every token
        if kernels is None:
            y = F.linear(x2, self._dense_copy())
        else:
            pad = self.padded_in_features - self.in_features
            x2 = F.pad(x2, (0, pad)) if pad else x2.contiguous()
            if max_rows is None or x2.shape[0] <= max_rows:  # what `uses_kernel` says, without looking it up again
                y = self._kernel(kernels, x2)
            else:  # many rows on the portable path: ATen's GEMM on the weight dequantised tile by tile, nothing kept.
                # The rows are rounded as the kernels round them first: every SIMD path rounds every call's rows and
                # the portable kernel its small calls', so without this a prompt's entries on a portable CPU would
                # depend on how many tokens each call carried (a context-cache call prefilling a few tokens would
                # differ from a cold prefill), and this path would compute another function than the SIMD ones.
                rounded = round_activations_like_kernel(x2)
                y = self._tiled_linear(kernels, rounded[:, : self.in_features].contiguous() if pad else rounded)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _dense_copy(self) -> torch.Tensor:
        """The kept float32 weight of the no-kernel fallback, made on first use."""
        if self._dense is None:
            self._dense = self.dequantize().contiguous()
        return self._dense

    def weight_bytes(self) -> int:
        """Bytes read per full pass over the weights (what decode speed is bound by)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of 32 inputs: ``w ~= q * scale``, q in [-127, 127].

    Returns codes ``int8 [N, K]`` and ``float16 [N, K/32]`` scales; K must be a multiple of
    32. Per-group rather than per-row scales cost 1/16 more bytes but follow the block grid of
    GGUF checkpoints (Q8_0 is exactly this format, so re-quantising it is lossless), where a
    single row scale loses precision wherever a row mixes small and large blocks.
    """
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"int8 groups need in_features ({k}) divisible by {GROUP}")
    g = w.reshape(n, k // GROUP, GROUP)
    scale = (g.abs().amax(dim=-1) / 127.0).to(torch.float16)
    s32 = scale.to(torch.float32)[..., None]
    inv = torch.where(s32 > 0, 1.0 / s32, torch.zeros_like(s32))
    q = torch.round(g * inv).clamp_(-127, 127).to(torch.int8)
    return q.reshape(n, k), scale


def pack_int8_blocked(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, K] and scales [N, K/32] -> (uint8 [N16/16, K/4, 16, 4] codes + 128, half [N16/16, K/32, 16])."""
    n, k = codes.shape
    n16 = _round_up(n, _ROWS)
    c = F.pad(codes.to(torch.int16), (0, 0, 0, n16 - n)) + 128
    blocked = c.to(torch.uint8).reshape(n16 // _ROWS, _ROWS, k // 4, 4).permute(0, 2, 1, 3).contiguous()
    s = F.pad(scales.to(torch.float16), (0, 0, 0, n16 - n)).reshape(n16 // _ROWS, _ROWS, k // GROUP)
    return blocked, s.permute(0, 2, 1).contiguous()


class Int8Linear(_BlockedLinear):
    """int8 weights with a float16 scale per row and group of 32 inputs."""

    def __init__(
        self, qweight: torch.Tensor, scales: torch.Tensor, in_features: int, out_features: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.to(torch.float16).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        codes, scales = quantize_int8_groups(_pad_weight(linear.weight))
        blocked, blocked_scales = pack_int8_blocked(codes, scales)
        return cls(blocked, blocked_scales, linear.in_features, linear.out_features, _bias_or_none(linear))

    def _dequantize_padded(self) -> torch.Tensor:
        blocks, k4 = self.qweight.shape[:2]
        codes = self.qweight.permute(0, 2, 1, 3).reshape(blocks * _ROWS, k4 * 4).to(torch.float32) - 128.0
        scales = self.scales.to(torch.float32).permute(0, 2, 1).reshape(blocks * _ROWS, -1, 1)
        return (codes.reshape(blocks * _ROWS, -1, GROUP) * scales).reshape(blocks * _ROWS, k4 * 4)

    def _kernel(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return kernels.int8_blocked_gemv(x2, self.qweight, self.scales, self.out_features)

    def _dequantize_compiled(self, kernels) -> torch.Tensor:  # noqa: ANN001
        return kernels.int8_blocked_dequantize(self.qweight, self.scales, self.out_features, self.in_features)

    def _tiled_linear(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return kernels.int8_blocked_linear(x2, self.qweight, self.scales, self.out_features)


def quantize_int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of 32 inputs: ``w ~= scale * q + min``, q in [0, 15].

    Returns codes ``uint8 [N, K]`` and ``float16 [N, K/32, 2]`` (scale, min) pairs; K must be
    a multiple of 32. The same scale+min form as GGUF Q4_K keeps re-quantising a Q4_K
    checkpoint close to lossless.
    """
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"int4 groups need in_features ({k}) divisible by {GROUP}")
    g = w.reshape(n, k // GROUP, GROUP)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).to(torch.float16)
    minimum = lo.to(torch.float16)
    step = scale.to(torch.float32).clamp_min(1e-8)[..., None]
    codes = torch.round((g - minimum.to(torch.float32)[..., None]) / step).clamp_(0, 15).to(torch.uint8)
    return codes.reshape(n, k), torch.stack([scale, minimum], dim=-1).contiguous()


def pack_int4_blocked(codes: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, K] and (scale, min) [N, K/32, 2] -> (uint8 [N16/16, K/8, 16, 4], half [N16/16, K/32, 2, 16])."""
    n, k = codes.shape
    n16 = _round_up(n, _ROWS)
    c = F.pad(codes, (0, 0, 0, n16 - n)).reshape(n16 // _ROWS, _ROWS, k // 8, 8)
    packed = (c[..., :4] | (c[..., 4:] << 4)).permute(0, 2, 1, 3).contiguous()
    p = F.pad(params.to(torch.float16), (0, 0, 0, 0, 0, n16 - n))
    p = p.reshape(n16 // _ROWS, _ROWS, k // GROUP, 2).permute(0, 2, 3, 1).contiguous()
    return packed, p


class Int4Linear(_BlockedLinear):
    """Packed 4-bit weights with a float16 (scale, min) per row and group of 32 inputs."""

    def __init__(
        self, qweight: torch.Tensor, params: torch.Tensor, in_features: int, out_features: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("params", params.to(torch.float16).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Linear:
        padded = _pad_weight(linear.weight)
        codes, params = quantize_int4_groups(padded)
        packed, blocked_params = pack_int4_blocked(codes, params)
        return cls(packed, blocked_params, linear.in_features, linear.out_features, _bias_or_none(linear))

    def _dequantize_padded(self) -> torch.Tensor:
        blocks, k8 = self.qweight.shape[:2]
        lo, hi = self.qweight & 0xF, self.qweight >> 4
        codes = torch.cat([lo, hi], dim=-1)  # [B, K/8, 16, 8]: inputs 0..3 then 4..7
        codes = codes.permute(0, 2, 1, 3).reshape(blocks * _ROWS, k8 * 8).to(torch.float32)
        p = self.params.to(torch.float32).permute(0, 3, 1, 2).reshape(blocks * _ROWS, -1, 2)
        grouped = codes.reshape(blocks * _ROWS, -1, GROUP)
        return (grouped * p[..., :1] + p[..., 1:]).reshape(blocks * _ROWS, k8 * 8)

    def _kernel(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return kernels.int4_blocked_gemv(x2, self.qweight, self.params, self.out_features)

    def _dequantize_compiled(self, kernels) -> torch.Tensor:  # noqa: ANN001
        return kernels.int4_blocked_dequantize(self.qweight, self.params, self.out_features, self.in_features)

    def _tiled_linear(self, kernels, x2: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return kernels.int4_blocked_linear(x2, self.qweight, self.params, self.out_features)


class BFloat16Linear(nn.Module):
    """bfloat16 weights computed in bfloat16: the half-size reference format.

    Kept for comparison: ATen's bf16 GEMV on this CPU class is not faster than float32
    despite reading half the bytes, which is why the integer formats exist.
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


def default_lm_head_format(fmt: WeightFormat) -> WeightFormat:
    """``lm_head`` format for a model converted to ``fmt``: int8 when the layers go int4.

    Why: the output projection maps onto 50-150k logits, where 4-bit rounding shows up
    directly as wrong tokens; GGUF Q4_K_M keeps it at 6 bits for the same reason. Measured on
    SmolLM2 (benchmarks/README.md): int4 everywhere has mean KL 0.043 vs float32, int4 layers
    with an int8 head 0.001.
    """
    return "int8" if fmt == "int4" else fmt


def convert_linear(linear: nn.Linear, fmt: WeightFormat) -> nn.Module:
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
        return Int4Linear.from_linear(linear)
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")
