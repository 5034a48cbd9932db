// Low-bit weight GEMV kernels for batch-1 (and small-batch) CPU decoding.
//
// Why: at decode time every Linear is a matrix-vector product, so its cost is reading the
// weights. int8 (per group of 32 scale) or int4 (per group of 32 scale and min) read ~3.8x or ~6.4x
// fewer bytes than float32, but only if the arithmetic keeps up with memory: the ATen paths
// (_weight_int8pack_mm, dequantise-then-matmul) and even a float-activation AVX-512 kernel
// (~3 vector ops per 16 weights to widen int8 to float) end up compute-bound at half the
// bandwidth. Quantising the activation row to int8 once per call (groups of 32, one float
// scale each, as GGUF Q8_0 does) lets AVX-512 VNNI multiply 64 weight bytes by x with one
// vpdpbusd. The weights are repacked so one 64-byte load holds 4 consecutive inputs of 16
// consecutive output rows: vector lanes are output rows, x is a 32-bit broadcast, and no
// horizontal reduction is needed. AVX2 (maddubs + madd) and NEON (sdot) paths do the same on
// CPUs without VNNI (gemv_avx2.h, gemv_neon.h).
//
// The torch binding lives here; the kernels are torch-free headers (gemv_*.h) so that a standalone
// harness (harness/) can test the paths of other architectures. Every path compiles with the
// compiler's default target; SIMD code carries function-level target attributes and is chosen at
// run time (gemv_dispatch.h), so the built extension never executes an instruction the CPU lacks
// (a -march=native build can, on hosts whose compiler and CPU disagree). Layouts: gemv_common.h.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <string>
#include <vector>

#include "decode_step.h"
#include "gemv_dequant.h"
#include "gemv_dispatch.h"

namespace {

using ls::kXGroup;

// Views of the calling thread's scratch buffers: the quantised row is made once per call and
// read by every worker while the caller waits in parallel_for, so no per-call tensor allocations.
ls::XQuant quantize_x(ls::Isa isa, const torch::Tensor& x) {
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> sx, xsum;
  thread_local std::vector<int32_t> xqsum;
  const int64_t m = x.size(0), k = x.size(1), groups = m * (k / kXGroup);
  xq.resize(static_cast<size_t>(m * k));
  sx.resize(static_cast<size_t>(groups));
  xsum.resize(static_cast<size_t>(groups));
  xqsum.resize(static_cast<size_t>(groups));
  ls::quantize_x_rows(isa, x.data_ptr<float>(), m, k, xq.data(), sx.data(), xqsum.data(), xsum.data());
  return ls::XQuant{xq.data(), sx.data(), xqsum.data(), xsum.data()};
}

const uint16_t* half_bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>()); }

}  // namespace


torch::Tensor int8_blocked_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor sw, int64_t n) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous float32 CPU [M, K] tensor");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 4 && w.size(2) == 16 && w.size(3) == 4 && w.is_contiguous(),
              "w must be uint8 [N/16, K/4, 16, 4]");
  const int64_t m = x.size(0), k = x.size(1), nblocks = w.size(0), n16 = nblocks * 16;
  TORCH_CHECK(k % kXGroup == 0 && w.size(1) * 4 == k, "K must be a multiple of 32 and match w");
  TORCH_CHECK(sw.scalar_type() == torch::kFloat16 && sw.dim() == 3 && sw.size(0) == nblocks &&
                  sw.size(1) == k / kXGroup && sw.size(2) == 16 && sw.is_contiguous(),
              "scales must be float16 [N/16, K/32, 16]");
  TORCH_CHECK(n <= n16 && n > n16 - 16, "n does not match the padded row count");
  const ls::Isa isa = ls::active_isa();
  const ls::XQuant q = quantize_x(isa, x);
  auto y = torch::empty({m, n16}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* sp = half_bits(sw);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, nblocks, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, k / 16)), [&](int64_t b0, int64_t b1) {
    ls::i8b_blocks(isa, wp, sp, k, q, m, yp, n16, b0, b1);
  });
  return n == n16 ? y : y.narrow(1, 0, n);
}

torch::Tensor int4_blocked_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor params, int64_t n) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous float32 CPU [M, K] tensor");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 4 && w.size(2) == 16 && w.size(3) == 4 && w.is_contiguous(),
              "w must be uint8 [N/16, K/8, 16, 4]");
  const int64_t m = x.size(0), k = x.size(1), nblocks = w.size(0), n16 = nblocks * 16;
  TORCH_CHECK(k % kXGroup == 0 && w.size(1) * 8 == k, "K must be a multiple of 32 and match w");
  TORCH_CHECK(params.scalar_type() == torch::kFloat16 && params.dim() == 4 && params.size(0) == nblocks &&
                  params.size(1) == k / kXGroup && params.size(2) == 2 && params.size(3) == 16 && params.is_contiguous(),
              "params must be float16 [N/16, K/32, 2, 16]");
  TORCH_CHECK(n <= n16 && n > n16 - 16, "n does not match the padded row count");
  const ls::Isa isa = ls::active_isa();
  const ls::XQuant q = quantize_x(isa, x);
  auto y = torch::empty({m, n16}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* pp = half_bits(params);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, nblocks, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, k / 16)), [&](int64_t b0, int64_t b1) {
    ls::i4b_blocks(isa, wp, pp, k, q, m, yp, n16, b0, b1);
  });
  return n == n16 ? y : y.narrow(1, 0, n);
}

namespace {

void check_int8_layout(const torch::Tensor& w, const torch::Tensor& sw, int64_t n, int64_t k_in) {
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 4 && w.size(2) == 16 && w.size(3) == 4 && w.is_contiguous(),
              "w must be uint8 [N/16, K/4, 16, 4]");
  const int64_t nblocks = w.size(0), k = w.size(1) * 4;
  TORCH_CHECK(sw.scalar_type() == torch::kFloat16 && sw.dim() == 3 && sw.size(0) == nblocks &&
                  sw.size(1) == k / kXGroup && sw.size(2) == 16 && sw.is_contiguous(),
              "scales must be float16 [N/16, K/32, 16]");
  TORCH_CHECK(n <= nblocks * 16 && n > nblocks * 16 - 16 && k_in <= k && k_in > k - kXGroup,
              "n and k_in do not match the padded shape");
}

void check_int4_layout(const torch::Tensor& w, const torch::Tensor& params, int64_t n, int64_t k_in) {
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 4 && w.size(2) == 16 && w.size(3) == 4 && w.is_contiguous(),
              "w must be uint8 [N/16, K/8, 16, 4]");
  const int64_t nblocks = w.size(0), k = w.size(1) * 8;
  TORCH_CHECK(params.scalar_type() == torch::kFloat16 && params.dim() == 4 && params.size(0) == nblocks &&
                  params.size(1) == k / kXGroup && params.size(2) == 2 && params.size(3) == 16 && params.is_contiguous(),
              "params must be float16 [N/16, K/32, 2, 16]");
  TORCH_CHECK(n <= nblocks * 16 && n > nblocks * 16 - 16 && k_in <= k && k_in > k - kXGroup,
              "n and k_in do not match the padded shape");
}

// Bytes of float32 weight rows dequantised at a time by the tiled product: a tile stays in cache (L2 or L3) while the
// GEMM reads it, and the buffer is reused, so no weight-sized memory is written, faulted in or kept. Tiles of 256 KiB
// and 1 MiB timed alike up to 256 rows; at 512 rows 1 MiB was closer to one GEMM over the whole weight (0.96x float32
// vs 0.90x, benchmarks/portable_rows.py, SmolLM2 shapes): fewer tiles re-read the activations fewer times.
constexpr int64_t kTileBytes = 1024 * 1024;

// y = x W^T [M, n] for float32 x [M, k_in], with W dequantised tile by tile (dequant(out, row0, nb0, nb1) writes the
// rows of blocks [nb0, nb1)) and each tile multiplied by ATen's GEMM: prefill on CPUs without a SIMD kernel.
template <typename Dequant>
torch::Tensor tiled_linear(const torch::Tensor& x, int64_t n, int64_t k_in, int64_t nblocks, Dequant dequant) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.size(1) == k_in,
              "x must be a float32 CPU [M, in_features] tensor");
  const int64_t tile_blocks = std::max<int64_t>(1, kTileBytes / (16 * k_in * static_cast<int64_t>(sizeof(float))));
  thread_local std::vector<float> buffer;
  buffer.resize(static_cast<size_t>(std::min(n, tile_blocks * 16) * k_in));
  // The pointer, not the name: inside the lambda `buffer` would be each OpenMP thread's own (empty) thread_local.
  float* const tile_data = buffer.data();
  auto y = torch::empty({x.size(0), n}, x.options());
  for (int64_t b0 = 0; b0 < nblocks; b0 += tile_blocks) {
    const int64_t b1 = std::min(nblocks, b0 + tile_blocks), r0 = b0 * 16, rows = std::min(n, b1 * 16) - r0;
    at::parallel_for(b0, b1, 1, [&](int64_t s, int64_t e) { dequant(tile_data, r0, s, e); });
    const auto tile = torch::from_blob(tile_data, {rows, k_in}, x.options());
    auto out = y.narrow(1, r0, rows);  // columns of y: a strided matrix BLAS writes in place
    at::mm_out(out, x, tile.t());
  }
  return y;
}

}  // namespace

// The blocked weights as a float32 [n, k_in] matrix (see gemv_dequant.h): dequantize() in one compiled pass.
torch::Tensor int8_blocked_dequantize(torch::Tensor w, torch::Tensor sw, int64_t n, int64_t k_in) {
  check_int8_layout(w, sw, n, k_in);
  auto out = torch::empty({n, k_in}, torch::dtype(torch::kFloat32));
  ls::i8b_dequantize_blocks(w.data_ptr<uint8_t>(), half_bits(sw), w.size(1) * 4, n, k_in, out.data_ptr<float>(), 0, 0,
                            w.size(0));
  return out;
}

torch::Tensor int4_blocked_dequantize(torch::Tensor w, torch::Tensor params, int64_t n, int64_t k_in) {
  check_int4_layout(w, params, n, k_in);
  auto out = torch::empty({n, k_in}, torch::dtype(torch::kFloat32));
  ls::i4b_dequantize_blocks(w.data_ptr<uint8_t>(), half_bits(params), w.size(1) * 8, n, k_in, out.data_ptr<float>(),
                            0, 0, w.size(0));
  return out;
}

// x [M, k_in] times the dequantised weights, tile by tile (no float32 copy of the weights is made whole or kept).
torch::Tensor int8_blocked_linear(torch::Tensor x, torch::Tensor w, torch::Tensor sw, int64_t n) {
  const int64_t k_in = x.size(1);
  check_int8_layout(w, sw, n, k_in);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* sp = half_bits(sw);
  const int64_t k = w.size(1) * 4;
  return tiled_linear(x, n, k_in, w.size(0), [&](float* out, int64_t row0, int64_t nb0, int64_t nb1) {
    ls::i8b_dequantize_blocks(wp, sp, k, n, k_in, out, row0, nb0, nb1);
  });
}

torch::Tensor int4_blocked_linear(torch::Tensor x, torch::Tensor w, torch::Tensor params, int64_t n) {
  const int64_t k_in = x.size(1);
  check_int4_layout(w, params, n, k_in);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* pp = half_bits(params);
  const int64_t k = w.size(1) * 8;
  return tiled_linear(x, n, k_in, w.size(0), [&](float* out, int64_t row0, int64_t nb0, int64_t nb1) {
    ls::i4b_dequantize_blocks(wp, pp, k, n, k_in, out, row0, nb0, nb1);
  });
}

std::string kernel_isa() { return ls::isa_name(ls::active_isa()); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (ls::Isa isa : ls::supported_isas()) names.push_back(ls::isa_name(isa));
  return names;
}

void force_isa(const std::string& name) {
  TORCH_CHECK_VALUE(ls::force_isa(name), "kernel path '", name, "' is unknown or not supported by this CPU; supported: ",
                    c10::Join(", ", supported_isas()));
}

void force_portable(bool on) { force_isa(on ? "portable" : ""); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_blocked_gemv", &int8_blocked_gemv, "int8 weights x int8-rounded activations on the blocked layout; returns [M, n]");
  m.def("int4_blocked_gemv", &int4_blocked_gemv, "int4 weights x int8-rounded activations on the blocked layout; returns [M, n]");
  m.def("int8_blocked_dequantize", &int8_blocked_dequantize, "the int8 blocked weights as float32 [n, k_in]");
  m.def("int4_blocked_dequantize", &int4_blocked_dequantize, "the int4 blocked weights as float32 [n, k_in]");
  m.def("int8_blocked_linear", &int8_blocked_linear, "x [M, K] times the int8 weights dequantised tile by tile (ATen GEMM)");
  m.def("int4_blocked_linear", &int4_blocked_linear, "x [M, K] times the int4 weights dequantised tile by tile (ATen GEMM)");
  m.def("kernel_isa", &kernel_isa, "the kernel path calls take: avx512_vnni, avx2, neon or portable");
  m.def("supported_isas", &supported_isas, "kernel paths this CPU can run, fastest first");
  m.def("force_isa", &force_isa, "route every call through one path ('' = the fastest; testing and benchmarks)");
  m.def("force_portable", &force_portable, "route every call through the portable C++ path (testing)");
  py::class_<ls_decode::Program, std::shared_ptr<ls_decode::Program>>(m, "DecodeProgram",
                                                                       "a model's layers for the compiled decode step")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double>(), py::arg("hidden"), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"), py::arg("intermediate"), py::arg("scaling"))
      .def("add_layer", &ls_decode::Program::add_layer)
      .def_property_readonly("num_layers", &ls_decode::Program::num_layers);
  py::class_<ls_decode::Session>(m, "DecodeSession", "one call's plan and KV cache bound to a DecodeProgram")
      .def(py::init<std::shared_ptr<ls_decode::Program>, std::vector<c10::optional<torch::Tensor>>,
                    std::vector<c10::optional<torch::Tensor>>, std::vector<bool>, std::vector<bool>,
                    std::vector<double>, std::vector<double>>())
      .def("step", &ls_decode::Session::step, "one token through every layer: hidden is updated in place",
           py::arg("hidden"), py::arg("cos"), py::arg("sin"), py::arg("column"),
           py::call_guard<py::gil_scoped_release>());  // as torch's own ops: other Python threads run meanwhile
}
