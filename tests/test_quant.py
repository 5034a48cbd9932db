"""Low-bit Linear replacements agree with the float reference and round-trip through safetensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from litestage_chain.quant import (
    BFloat16Linear,
    Int4Linear,
    Int8Linear,
    convert_linear,
    load_converted,
    quantize_model_linears,
    quantize_model_linears_cached,
    save_converted,
    target_linear_names,
)
from litestage_chain.quant import formats, kernels
from litestage_chain.quant.formats import quantize_int4_groups, quantize_int8_rows, unpack_int4

BUILD_PROBLEM = kernels.kernel_build_problem()
needs_kernels = pytest.mark.skipif(
    BUILD_PROBLEM is not None and "disabled" not in BUILD_PROBLEM,
    reason=f"C++ kernels cannot be built here: {BUILD_PROBLEM}",
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=["avx512", "portable"])
def kernel_module(request: pytest.FixtureRequest) -> Iterator[object]:
    module = kernels.get_kernels()
    if module is None:
        pytest.fail(f"kernels failed to build: {kernels.kernels_status()}")
    if request.param == "avx512" and module.kernel_isa() != "avx512":
        pytest.skip("CPU has no AVX-512; the portable path is covered by the other case")
    module.force_portable(request.param == "portable")
    try:
        yield module
    finally:
        module.force_portable(False)


def test_int8_rows_roundtrip_error_is_half_a_step() -> None:
    w = torch.randn(10, 40)
    q, scale = quantize_int8_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6)


def test_int4_pack_unpack_and_error_bound() -> None:
    w = torch.randn(6, 128)
    packed, params = quantize_int4_groups(w, 64)
    assert packed.shape == (6, 64) and params.shape == (6, 2, 2) and params.dtype == torch.float16
    codes = unpack_int4(packed, 64)
    assert codes.shape == (6, 128) and int(codes.max()) <= 15
    deq = Int4Linear(packed, params, 64, None).dequantize()
    step = params[..., 0].float().repeat_interleave(64, dim=1)
    assert torch.all((deq - w).abs() <= step * 0.5 + 2e-3)


@needs_kernels
@pytest.mark.parametrize("k", [16, 40, 64, 100])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
def test_int8_kernel_matches_dequantised_matmul(kernel_module, k: int, m: int) -> None:
    n = 13
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) + 0.1
    x = torch.randn(m, k)
    ref = x.double() @ (w.double() * scale.double()[:, None]).T
    out = kernel_module.int8_gemv(x, w, scale)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("m", [1, 3])
def test_int4_kernel_matches_dequantised_matmul(kernel_module, group: int, m: int) -> None:
    lin = Int4Linear.from_linear(nn.Linear(128, 11, bias=False), group)
    x = torch.randn(m, 128)
    ref = x.double() @ lin.dequantize().double().T
    out = kernel_module.int4_gemv(x, lin.qweight, lin.params, group)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt, tol", [("bfloat16", 0.05), ("int8", 0.03), ("int4", 0.35)])
@pytest.mark.parametrize("rows", [1, 2, 20])
@pytest.mark.parametrize("use_kernels", [True, False])
def test_module_close_to_float_linear(
    fmt: str, tol: float, rows: int, use_kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if use_kernels and BUILD_PROBLEM is not None:
        pytest.skip(f"C++ kernels cannot be built here: {BUILD_PROBLEM}")
    if not use_kernels:
        monkeypatch.setattr(formats, "get_kernels", lambda: None)
    lin = nn.Linear(64, 48, bias=True)
    module = convert_linear(lin, fmt)  # type: ignore[arg-type]
    assert module.in_features == 64 and module.out_features == 48
    x = torch.randn(1, rows, 64)
    with torch.no_grad():
        ref, out = lin(x), module(x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    rel = (out - ref).norm() / ref.norm()
    assert rel < tol, f"{fmt}: relative error {rel:.4f}"
    if fmt != "bfloat16":  # exact up to float rounding against its own dequantised weight
        deq = torch.nn.functional.linear(x, module.dequantize(), lin.bias)
        torch.testing.assert_close(out, deq, rtol=1e-5, atol=1e-5)


def test_bfloat16_input_dtype_is_preserved() -> None:
    module = convert_linear(nn.Linear(32, 8), "int8")
    assert module(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_float32_is_identity_and_unknown_format_rejected() -> None:
    lin = nn.Linear(8, 8)
    assert convert_linear(lin, "float32") is lin
    with pytest.raises(ValueError, match="unknown weight format"):
        convert_linear(lin, "fp8")  # type: ignore[arg-type]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(64, 64)
        self.down_proj = nn.Linear(96, 64, bias=False)  # 96 is not a multiple of the int4 group 64


class _TinyDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 64)
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.lm_head = nn.Linear(64, 50, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as in SmolLM2


def test_model_conversion_targets_layers_and_lm_head() -> None:
    model = _TinyDecoder()
    assert target_linear_names(model) == [
        "layers.0.q_proj", "layers.0.down_proj", "layers.1.q_proj", "layers.1.down_proj", "lm_head",
    ]
    embed_before = model.embed_tokens.weight.detach().clone()
    assert quantize_model_linears(model, "int4", int4_group=64) is model
    assert isinstance(model.layers[0].q_proj, Int4Linear)
    assert isinstance(model.layers[1].down_proj, Int8Linear)  # falls back: 96 % 64 != 0
    assert isinstance(model.lm_head, Int4Linear)
    assert torch.equal(model.embed_tokens.weight, embed_before)


def test_mapping_and_sequence_inputs() -> None:
    linears = {"qkv": nn.Linear(32, 96), "gate_up": nn.Linear(32, 128)}
    out = quantize_model_linears(linears, "int8")
    assert set(out) == {"qkv", "gate_up"} and all(isinstance(m, Int8Linear) for m in out.values())
    listed = quantize_model_linears(list(linears.values()), "bfloat16")
    assert [type(m) for m in listed] == [BFloat16Linear, BFloat16Linear]


@pytest.mark.parametrize("fmt", ["int8", "int4", "bfloat16"])
def test_safetensors_roundtrip(tmp_path: Path, fmt: str) -> None:
    model = quantize_model_linears(_TinyDecoder(), fmt, int4_group=32)  # type: ignore[arg-type]
    path = save_converted(model, tmp_path / "w.safetensors", {"weights_id": "abc"})
    loaded = load_converted(path)
    assert set(loaded) == set(target_linear_names(_TinyDecoder()))
    for name, module in loaded.items():
        original = model.get_submodule(name)
        assert type(module) is type(original)
        xin = torch.randn(3, original.in_features)
        torch.testing.assert_close(module(xin), original(xin))


def test_cached_conversion_reuses_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = quantize_model_linears_cached(_TinyDecoder(), "int8", "sha-1", cache_dir=tmp_path)
    files = list((tmp_path / "converted").iterdir())
    assert len(files) == 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("should have loaded from cache")

    monkeypatch.setattr("litestage_chain.quant.serialize.quantize_model_linears", fail)
    second = _TinyDecoder()
    quantize_model_linears_cached(second, "int8", "sha-1", cache_dir=tmp_path)
    assert torch.equal(second.lm_head.qweight, first.lm_head.qweight)


def test_pickle_free_cache_file(tmp_path: Path) -> None:
    path = save_converted(quantize_model_linears(_TinyDecoder(), "int8"), tmp_path / "w.safetensors")
    assert b"__reduce__" not in path.read_bytes() and path.read_bytes()[:8] != b"\x80\x04\x95"
