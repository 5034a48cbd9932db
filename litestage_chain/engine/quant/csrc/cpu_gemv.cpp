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
  m.def("kernel_isa", &kernel_isa, "the kernel path calls take: avx512_vnni, avx2, neon or portable");
  m.def("supported_isas", &supported_isas, "kernel paths this CPU can run, fastest first");
  m.def("force_isa", &force_isa, "route every call through one path ('' = the fastest; testing and benchmarks)");
  m.def("force_portable", &force_portable, "route every call through the portable C++ path (testing)");
}
