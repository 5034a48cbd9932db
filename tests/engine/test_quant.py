"""Low-bit Linear replacements agree with the float reference and round-trip through safetensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from litestage_chain.engine.quant import (
    BFloat16Linear,
    Int4Linear,
    Int8Linear,
    convert_linear,
    formats,
    kernels,
    load_converted,
    quantize_model_linears,
    quantize_model_linears_cached,
    save_converted,
    target_linear_names,
)
from litestage_chain.engine.quant.formats import (
    pack_int8_blocked,
    quantize_int4_groups,
    quantize_int8_groups,
    round_activations_like_kernel,
)

BUILD_PROBLEM = kernels.kernel_build_problem()
# Skipped only when a build tool is missing (or the kernels are switched off on purpose);
# a failing build with the tools present fails the tests instead.
needs_kernels = pytest.mark.skipif(BUILD_PROBLEM is not None, reason=f"C++ kernels cannot be built here: {BUILD_PROBLEM}")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=["avx512_vnni", "avx2", "neon", "portable"])
def kernel_module(request: pytest.FixtureRequest) -> Iterator[object]:
    """The compiled module with every call forced through one path (each path the CPU can run, in turn)."""
    module = kernels.get_kernels()
    if module is None:
        pytest.fail(f"kernels failed to build: {kernels.kernels_status()}")
    if request.param not in module.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} path (it runs {module.supported_isas()})")
    with formats.forced_path(request.param):
        assert module.kernel_isa() == request.param
        yield module


def test_int8_groups_roundtrip_error_is_half_a_step() -> None:
    w = torch.randn(10, 64)
    q, scale = quantize_int8_groups(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (10, 2)
    step = scale.float().repeat_interleave(32, dim=1)
    assert torch.all((q.float() * step - w).abs() <= step / 2 + 1e-3 * w.abs())


@pytest.mark.parametrize("n, k", [(16, 32), (21, 64), (5, 40)])
def test_int8_blocked_layout_dequantises_to_the_codes(n: int, k: int) -> None:
    k32 = (k + 31) // 32 * 32
    q, scale = quantize_int8_groups(torch.randn(n, k32))
    blocked = Int8Linear(*pack_int8_blocked(q, scale), k, n, None)
    expected = (q.float() * scale.float().repeat_interleave(32, dim=1))[:, :k]
    torch.testing.assert_close(blocked.dequantize(), expected)


@pytest.mark.parametrize("n, k", [(16, 32), (21, 64), (5, 40)])
def test_int4_blocked_dequantise_error_bound(n: int, k: int) -> None:
    w = torch.randn(n, k)
    lin = nn.Linear(k, n, bias=False)
    lin.weight.data.copy_(w)
    module = Int4Linear.from_linear(lin)
    deq = module.dequantize()
    assert deq.shape == (n, k)
    k32 = (k + 31) // 32 * 32
    padded = torch.nn.functional.pad(w, (0, k32 - k))
    codes, params = quantize_int4_groups(padded)
    assert int(codes.max()) <= 15 and params.shape == (n, k32 // 32, 2)
    step = params[..., 0].float().repeat_interleave(32, dim=1)[:, :k]
    assert torch.all((deq - w).abs() <= step * 0.5 + 2e-3)


@needs_kernels
@pytest.mark.parametrize("n, k", [(13, 32), (16, 64), (40, 96)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 21])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_kernel_equals_dequantised_weight_timesround_activations_like_kernel(kernel_module, fmt: str, n: int, k: int, m: int) -> None:
    module = convert_linear(nn.Linear(k, n, bias=False), fmt)  # type: ignore[arg-type]
    x = torch.randn(m, k)
    ref = round_activations_like_kernel(x).double() @ module.dequantize().double().T
    if fmt == "int8":
        out = kernel_module.int8_blocked_gemv(x, module.qweight, module.scales, n)
    else:
        out = kernel_module.int4_blocked_gemv(x, module.qweight, module.params, n)
    assert out.shape == (m, n)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_kernel_row_does_not_depend_on_the_rows_batched_with_it(kernel_module, fmt: str) -> None:
    """Batched decoding must give each prompt what it gets alone, whatever chunk of rows the kernel put it in."""
    module = convert_linear(nn.Linear(96, 40, bias=False), fmt)  # type: ignore[arg-type]

    def gemv(x: torch.Tensor) -> torch.Tensor:
        if fmt == "int8":
            return kernel_module.int8_blocked_gemv(x, module.qweight, module.scales, 40)
        return kernel_module.int4_blocked_gemv(x, module.qweight, module.params, 40)

    x = torch.randn(19, 96)
    alone = torch.cat([gemv(x[i : i + 1]) for i in range(19)])
    for m in range(1, 20):
        assert torch.equal(gemv(x[:m]), alone[:m]), f"{m} rows"


@pytest.mark.parametrize("fmt, tol", [("bfloat16", 0.05), ("int8", 0.03), ("int4", 0.35)])
@pytest.mark.parametrize("rows", [1, 2, 20])
@pytest.mark.parametrize("use_kernels", [True, False])
def test_module_close_to_float_linear(
    fmt: str, tol: float, rows: int, use_kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if use_kernels and BUILD_PROBLEM is not None:
        pytest.skip(f"C++ kernels cannot be built here: {BUILD_PROBLEM}")
    if not use_kernels:
        monkeypatch.setattr(formats, "_fast", [None, None])  # the route memo: no compiled kernels
    lin = nn.Linear(64, 48, bias=True)
    module = convert_linear(lin, fmt)  # type: ignore[arg-type]
    assert module.in_features == 64 and module.out_features == 48
    x = torch.randn(1, rows, 64)
    with torch.no_grad():
        ref, out = lin(x), module(x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    rel = (out - ref).norm() / ref.norm()
    assert rel < tol, f"{fmt}: relative error {rel:.4f}"
    if fmt != "bfloat16":  # the activation rounding is the only difference from its own weights
        # The int8 activation rounding happens only where a call runs on the compiled kernels; without them, or
        # above the portable path's row limit, the modules dequantise and multiply the float activations.
        rounded = use_kernels and formats.uses_kernel(rows)
        xr = round_activations_like_kernel(x.reshape(-1, 64)).reshape(x.shape) if rounded else x
        deq = torch.nn.functional.linear(xr, module.dequantize(), lin.bias)
        torch.testing.assert_close(out, deq, rtol=1e-4, atol=1e-4)


def test_kernel_path_names_what_computes_each_format(monkeypatch: pytest.MonkeyPatch) -> None:
    assert formats.kernel_path("float32") == formats.kernel_path("bfloat16") == "aten"
    module = formats._fast_kernels()
    assert formats.kernel_path("int4") == (module.kernel_isa() if module is not None else "float32 fallback")
    monkeypatch.setattr(formats, "_fast", [None, None])  # the route memo: no compiled kernels
    assert formats.kernel_path("int8") == "float32 fallback"


@pytest.fixture
def portable_route() -> Iterator[object]:
    """The compiled module forced onto the portable path, with the modules' route chosen afresh for it."""
    module = kernels.get_kernels()
    if module is None:
        pytest.fail(f"kernels failed to build: {kernels.kernels_status()}")
    with formats.forced_path("portable"):
        yield module


def _kernel_call(kernel_module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The module's own kernel called directly on `x` (in_features a multiple of 32: no padding)."""
    if isinstance(module, Int8Linear):
        return kernel_module.int8_blocked_gemv(x, module.qweight, module.scales, module.out_features)
    return kernel_module.int4_blocked_gemv(x, module.qweight, module.params, module.out_features)


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_portable_path_runs_the_kernel_for_few_rows_and_aten_above(portable_route, fmt: str) -> None:
    """Up to PORTABLE_MAX_ROWS rows: the kernel; above: ATen's GEMM on the rows rounded as the kernel rounds them, so
    both compute one function up to summation order (a prompt's entries do not depend on how it was split)."""
    module = convert_linear(nn.Linear(96, 300, bias=False), fmt)  # type: ignore[arg-type]
    limit = formats.PORTABLE_MAX_ROWS
    assert formats._kernel_max_rows() == limit and formats.kernel_path(fmt) == "portable"
    assert formats.compiled_kernels_available()
    with torch.no_grad():
        for rows in sorted({1, 2, limit, limit + 1, 40}):
            x = torch.randn(rows, 96)
            out, plain = module(x), torch.nn.functional.linear(x, module.dequantize())
            if rows <= limit:
                assert formats.uses_kernel(rows)
                assert torch.equal(out, _kernel_call(portable_route, module, x)), f"{rows} rows"
                ref = round_activations_like_kernel(x).double() @ module.dequantize().double().T
                torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
                assert not torch.equal(out, plain)  # the rounding shows: this was not the float path
            else:  # the same float32 weight, multiplied a tile of rows at a time: equal up to summation order
                assert not formats.uses_kernel(rows)
                rounded = torch.nn.functional.linear(round_activations_like_kernel(x), module.dequantize())
                torch.testing.assert_close(out, rounded, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out, _kernel_call(portable_route, module, x), rtol=1e-5, atol=1e-4)
                assert not torch.allclose(out, plain, rtol=1e-5, atol=1e-5)  # the rounding shows here too


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_portable_rows_do_not_depend_on_how_a_prompt_is_split(portable_route, fmt: str) -> None:
    """A prompt prefilled in one call (GEMM path) or token by token (kernel path) gets the same projections up to
    summation order, odd widths included: what lets the context cache reuse entries on a CPU without SIMD."""
    module = convert_linear(nn.Linear(70, 40, bias=True), fmt)  # type: ignore[arg-type]  # 70: padded to 96
    x = torch.randn(formats.PORTABLE_MAX_ROWS + 3, 70)
    with torch.no_grad():
        whole = module(x)
        split = torch.cat([module(x[:3]), *(module(x[i : i + 1]) for i in range(3, len(x)))])
    assert not formats.uses_kernel(len(x)) and formats.uses_kernel(3)
    torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_portable_tiled_product_with_several_threads(portable_route, fmt: str) -> None:
    """The tiled product dequantises a tile's blocks on every torch thread into one shared buffer: with two threads
    (one thread hides a buffer that is per thread), the result still equals F.linear on the dequantised weight."""
    module = convert_linear(nn.Linear(1536, 600, bias=False), fmt)  # type: ignore[arg-type]  # several tiles
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            x = torch.randn(formats.PORTABLE_MAX_ROWS + 20, 1536)
            rounded = round_activations_like_kernel(x)
            torch.testing.assert_close(module(x), torch.nn.functional.linear(rounded, module.dequantize()),
                                       rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("n, k", [(13, 32), (16, 64), (40, 96), (21, 40), (5, 70), (300, 1536)])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_compiled_dequantise_equals_dequantize(fmt: str, n: int, k: int) -> None:
    """The loop the tiled product dequantises with gives dequantize()'s float32 values exactly (odd shapes padded)."""
    module = convert_linear(nn.Linear(k, n, bias=False), fmt)  # type: ignore[arg-type]
    compiled = module._dequantize_compiled(kernels.get_kernels())
    assert compiled.shape == (n, k) and torch.equal(compiled, module.dequantize())
    x = torch.randn(37, k)
    torch.testing.assert_close(module._tiled_linear(kernels.get_kernels(), x),
                               torch.nn.functional.linear(x, module.dequantize()), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_portable_path_keeps_no_float32_copy(portable_route, fmt: str) -> None:
    """The small format is also about memory: prefill-sized calls make the float32 weight per call, not once."""
    module = convert_linear(nn.Linear(64, 48, bias=True), fmt)  # type: ignore[arg-type]
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    with torch.no_grad():
        module(torch.randn(3, formats.PORTABLE_MAX_ROWS + 5, 64))
        module(torch.randn(1, 64))
    assert module._dense is None
    assert {name: b for name, b in module.named_buffers()}.keys() == buffers.keys()
    assert all(torch.equal(b, buffers[name]) for name, b in module.named_buffers())
    assert not any(t.dtype == torch.float32 and t.numel() >= 48 * 64 for t in vars(module).values()
                   if isinstance(t, torch.Tensor))


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_simd_path_runs_the_kernel_at_every_row_count(kernel_module, fmt: str) -> None:
    """AVX-512 VNNI, AVX2 and NEON have no row limit: prefill stays on the kernel."""
    if kernel_module.kernel_isa() not in formats.FAST_ISAS:
        pytest.skip("the portable path has its own test")
    module = convert_linear(nn.Linear(96, 40, bias=False), fmt)  # type: ignore[arg-type]
    assert formats._kernel_max_rows() is None and formats.kernel_path(fmt) == kernel_module.kernel_isa()
    with torch.no_grad():
        for rows in (1, 2, 40, 300):
            x = torch.randn(rows, 96)
            assert formats.uses_kernel(rows)
            assert torch.equal(module(x), _kernel_call(kernel_module, module, x)), f"{rows} rows"


@needs_kernels
def test_forced_path_nests_and_restores_the_route() -> None:
    module = kernels.get_kernels()
    best = module.supported_isas()[0]
    assert formats.kernel_path("int8") == best
    with formats.forced_path("portable"):
        assert module.kernel_isa() == "portable" and formats.kernel_path("int8") == "portable"
        assert not formats.uses_kernel(64), "the memoised route was chosen afresh for the portable path"
        with formats.forced_path(""):
            assert formats.kernel_path("int8") == best and formats.uses_kernel(64)
        assert formats.kernel_path("int8") == "portable", "leaving the inner block restores the outer one's path"
        with pytest.raises(ValueError, match="not supported by this CPU"):
            with formats.forced_path("sse9"):
                pass
        assert formats.kernel_path("int4") == "portable", "a rejected path leaves the route as it was"
    assert module.kernel_isa() == best and formats.kernel_path("int8") == best and formats.uses_kernel(64)


@needs_kernels
def test_force_isa_rejects_a_path_this_cpu_cannot_run() -> None:
    module = kernels.get_kernels()
    assert module.kernel_isa() == module.supported_isas()[0] and "portable" in module.supported_isas()
    with pytest.raises(ValueError, match="not supported by this CPU"):
        module.force_isa("sse9")
    assert module.kernel_isa() == module.supported_isas()[0]


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
        self.down_proj = nn.Linear(80, 64, bias=False)  # 80 is not a multiple of the group of 32


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
    assert quantize_model_linears(model, "int4") is model
    assert isinstance(model.layers[0].q_proj, Int4Linear)
    assert isinstance(model.layers[1].down_proj, Int4Linear)  # padded to 96 inputs inside
    assert model.layers[1].down_proj(torch.randn(2, 80)).shape == (2, 64)
    assert isinstance(model.lm_head, Int8Linear)  # int4 layers keep an int8 head by default
    assert torch.equal(model.embed_tokens.weight, embed_before)


def test_mapping_and_sequence_inputs() -> None:
    linears = {"qkv": nn.Linear(32, 96), "gate_up": nn.Linear(32, 128)}
    out = quantize_model_linears(linears, "int8")
    assert set(out) == {"qkv", "gate_up"} and all(isinstance(m, Int8Linear) for m in out.values())
    listed = quantize_model_linears(list(linears.values()), "bfloat16")
    assert [type(m) for m in listed] == [BFloat16Linear, BFloat16Linear]


@pytest.mark.parametrize("fmt", ["int8", "int4", "bfloat16"])
def test_safetensors_roundtrip(tmp_path: Path, fmt: str) -> None:
    model = quantize_model_linears(_TinyDecoder(), fmt)  # type: ignore[arg-type]
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
    files = list((tmp_path / "converted").glob("*.safetensors"))
    assert len(files) == 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("should have loaded from cache")

    monkeypatch.setattr("litestage_chain.engine.quant.serialize.quantize_model_linears", fail)
    second = _TinyDecoder()
    quantize_model_linears_cached(second, "int8", "sha-1", cache_dir=tmp_path)
    assert torch.equal(second.lm_head.qweight, first.lm_head.qweight)


def test_pickle_free_cache_file(tmp_path: Path) -> None:
    path = save_converted(quantize_model_linears(_TinyDecoder(), "int8"), tmp_path / "w.safetensors")
    assert b"__reduce__" not in path.read_bytes() and path.read_bytes()[:8] != b"\x80\x04\x95"
