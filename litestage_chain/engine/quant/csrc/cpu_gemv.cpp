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
// horizontal reduction is needed.
//
// The file compiles with the compiler's default x86-64 target; the AVX-512 paths carry
// function-level target attributes and are chosen at run time with __builtin_cpu_supports,
// so the built extension never executes an instruction the CPU lacks (a -march=native build
// can, on hosts whose compiler and CPU disagree). Other CPUs take a plain C++ path.
//
// Layouts (N16 = N rounded up to 16 with zero rows; K a multiple of 32):
//   x8:  xq int8 [M, K], sx float [M, K/32] (x ~= sx * xq), xqsum int32 [M, K/32], xsum float [M, K/32]
//        xsum is sx * xqsum, the sum of the *quantised* x, so the int4 min term and the code term
//        see the same x and the result is exactly dequant(W) . dequant(x); mixing in the float
//        sum would leave the large mean part of the positive codes uncancelled.
//   i8b: w uint8 [N16/16, K/4, 16, 4] = int8 code + 128; scales half [N16/16, K/32, 16], one per
//        row and group of 32 (as GGUF Q8_0): w = scale * (code - 128)
//   i4b: w uint8 [N16/16, K/8, 16, 4], low nibbles inputs 0..3, high nibbles 4..7 of each 8;
//        params half [N16/16, K/32, 2, 16] (scale, min) per row and group of 32: w = scale*q + min
//        (the asymmetric form of GGUF Q4_K sub-blocks)

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LS_X86 1
#else
#define LS_X86 0
#endif

namespace {

#if LS_X86
bool g_force_portable = false;  // lets tests exercise the portable path on AVX-512 hosts

bool has_avx512() {
  if (g_force_portable) return false;
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}
#else
bool g_force_portable = false;
bool has_avx512() { return false; }
#endif


constexpr int64_t kXGroup = 32;

void quantize_x_rows_ref(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum, float* xsum) {
  const int64_t groups = k / kXGroup;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + i * k + g * kXGroup;
      float amax = 0.f;
      for (int64_t j = 0; j < kXGroup; ++j) {
        amax = std::max(amax, std::abs(xg[j]));
      }
      const float scale = amax / 127.f;
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t qsum = 0;
      int8_t* qg = xq + i * k + g * kXGroup;
      for (int64_t j = 0; j < kXGroup; ++j) {
        const int32_t q = static_cast<int32_t>(std::nearbyint(xg[j] * inv));
        qg[j] = static_cast<int8_t>(std::max(-127, std::min(127, q)));
        qsum += qg[j];
      }
      sx[i * groups + g] = scale;
      xqsum[i * groups + g] = qsum;
      xsum[i * groups + g] = scale * static_cast<float>(qsum);  // sum of the quantised x: see above
    }
  }
}

#if LS_X86
// Same rounding as the reference (amax/127 scale, round-half-even under the default MXCSR),
// vectorised because a scalar loop costs tens of microseconds per call on K = 8960.
__attribute__((target("avx512f,avx512bw,avx512vl")))
void quantize_x_rows_avx512(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum,
                            float* xsum) {
  const int64_t groups = k / kXGroup;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + i * k + g * kXGroup;
      const __m512 a = _mm512_loadu_ps(xg);
      const __m512 b = _mm512_loadu_ps(xg + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const float scale = amax / 127.f;
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));
      const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
      int8_t* qg = xq + i * k + g * kXGroup;
      _mm_storeu_si128((__m128i*)qg, _mm512_cvtsepi32_epi8(qa));
      _mm_storeu_si128((__m128i*)(qg + 16), _mm512_cvtsepi32_epi8(qb));
      const int32_t qsum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
      sx[i * groups + g] = scale;
      xqsum[i * groups + g] = qsum;
      xsum[i * groups + g] = scale * static_cast<float>(qsum);
    }
  }
}
#endif

void quantize_x_rows(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum, float* xsum) {
#if LS_X86
  if (has_avx512()) return quantize_x_rows_avx512(x, m, k, xq, sx, xqsum, xsum);
#endif
  quantize_x_rows_ref(x, m, k, xq, sx, xqsum, xsum);
}

// Views of the calling thread's scratch buffers: the quantised row is made once per call and
// read by every worker while the caller waits in parallel_for, so no per-call tensor allocations.
struct XQuant {
  const int8_t* xq;
  const float* sx;
  const int32_t* xqsum;
  const float* xsum;
};

XQuant quantize_x(const torch::Tensor& x) {
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> sx, xsum;
  thread_local std::vector<int32_t> xqsum;
  const int64_t m = x.size(0), k = x.size(1), groups = m * (k / kXGroup);
  xq.resize(static_cast<size_t>(m * k));
  sx.resize(static_cast<size_t>(groups));
  xsum.resize(static_cast<size_t>(groups));
  xqsum.resize(static_cast<size_t>(groups));
  quantize_x_rows(x.data_ptr<float>(), m, k, xq.data(), sx.data(), xqsum.data(), xsum.data());
  return XQuant{xq.data(), sx.data(), xqsum.data(), xsum.data()};
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Portable references for the blocked layouts (also the path on CPUs without AVX-512 VNNI).
void i8b_blocks_ref(const uint8_t* w, const at::Half* sw, int64_t k, const XQuant& q, int64_t m, float* y, int64_t n16,
                    int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  const int8_t* xq = q.xq;
  const float* sx = q.sx;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = w + nb * 16 * k;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < 16; ++r) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          int32_t dot = 0;
          for (int64_t j = g * kXGroup; j < (g + 1) * kXGroup; ++j)
            dot += (static_cast<int32_t>(wb[(j / 4) * 64 + r * 4 + (j % 4)]) - 128) * xq[i * k + j];
          acc += static_cast<float>(dot) * sx[i * groups + g] * static_cast<float>(sw[(nb * groups + g) * 16 + r]);
        }
        y[i * n16 + nb * 16 + r] = acc;
      }
    }
  }
}

void i4b_blocks_ref(const uint8_t* w, const at::Half* params, int64_t k, const XQuant& q, int64_t m, float* y,
                    int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  const int8_t* xq = q.xq;
  const float* sx = q.sx;
  const float* xs = q.xsum;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = w + nb * 8 * k;  // 16 rows * k / 2 bytes
    const at::Half* pb = params + nb * groups * 32;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < 16; ++r) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          int32_t dot = 0;
          for (int64_t j = g * kXGroup; j < (g + 1) * kXGroup; ++j) {
            const uint8_t byte = wb[(j / 8) * 64 + r * 4 + (j % 4)];
            const int32_t code = (j % 8) < 4 ? (byte & 0xF) : (byte >> 4);
            dot += code * xq[i * k + j];
          }
          const float scale = static_cast<float>(pb[g * 32 + r]);
          const float minimum = static_cast<float>(pb[g * 32 + 16 + r]);
          acc += scale * sx[i * groups + g] * static_cast<float>(dot) + minimum * xs[i * groups + g];
        }
        y[i * n16 + nb * 16 + r] = acc;
      }
    }
  }
}

#if LS_X86
#define LS_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))

// B row blocks (16 rows each) against M x rows; B*M independent accumulator chains hide the
// vpdpbusd latency, and each weight load is reused for all M rows.
template <int B, int M>
LS_VNNI_TARGET void i8b_kernel(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
                               const int32_t* xqsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 16 * k;
  __m512 facc[B][M];
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) facc[b][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i ia[B][M];
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < M; ++i) ia[b][i] = _mm512_setzero_si512();
    for (int t = 0; t < kXGroup / 4; ++t) {
      __m512i xv[M];
      for (int i = 0; i < M; ++i) xv[i] = _mm512_set1_epi32(load_i32(xq + i * k + g * kXGroup + t * 4));
      for (int b = 0; b < B; ++b) {
        const __m512i wv = _mm512_loadu_si512(w + (nb + b) * block_bytes + (g * (kXGroup / 4) + t) * 64);
        for (int i = 0; i < M; ++i) ia[b][i] = _mm512_dpbusd_epi32(ia[b][i], wv, xv[i]);
      }
    }
    for (int b = 0; b < B; ++b) {
      const __m512 ws = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sw + ((nb + b) * groups + g) * 16)));
      for (int i = 0; i < M; ++i) {
        const __m512i corr = _mm512_set1_epi32(128 * xqsum[i * groups + g]);
        const __m512 s = _mm512_mul_ps(ws, _mm512_set1_ps(sx[i * groups + g]));
        facc[b][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ia[b][i], corr)), s, facc[b][i]);
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) _mm512_storeu_ps(y + i * n16 + (nb + b) * 16, facc[b][i]);
}

template <int B, int M>
LS_VNNI_TARGET void i4b_kernel(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq, const float* sx,
                               const float* xsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 8 * k;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 facc[B][M];
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) facc[b][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i ia[B][M];
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < M; ++i) ia[b][i] = _mm512_setzero_si512();
    for (int t = 0; t < kXGroup / 8; ++t) {
      __m512i xlo[M], xhi[M];
      for (int i = 0; i < M; ++i) {
        const int8_t* xp = xq + i * k + g * kXGroup + t * 8;
        xlo[i] = _mm512_set1_epi32(load_i32(xp));
        xhi[i] = _mm512_set1_epi32(load_i32(xp + 4));
      }
      for (int b = 0; b < B; ++b) {
        const __m512i v = _mm512_loadu_si512(w + (nb + b) * block_bytes + (g * (kXGroup / 8) + t) * 64);
        const __m512i lo = _mm512_and_si512(v, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        for (int i = 0; i < M; ++i) {
          ia[b][i] = _mm512_dpbusd_epi32(ia[b][i], lo, xlo[i]);
          ia[b][i] = _mm512_dpbusd_epi32(ia[b][i], hi, xhi[i]);
        }
      }
    }
    for (int b = 0; b < B; ++b) {
      const uint16_t* pg = params + ((nb + b) * groups + g) * 32;
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)pg));
      const __m512 minimum = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(pg + 16)));
      for (int i = 0; i < M; ++i) {
        const __m512 s = _mm512_mul_ps(scale, _mm512_set1_ps(sx[i * groups + g]));
        facc[b][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[b][i]), s, facc[b][i]);
        facc[b][i] = _mm512_fmadd_ps(minimum, _mm512_set1_ps(xsum[i * groups + g]), facc[b][i]);
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) _mm512_storeu_ps(y + i * n16 + (nb + b) * 16, facc[b][i]);
}

template <int N>
using Const = std::integral_constant<int, N>;

// Runs blocks [nb_begin, nb_end) for all m rows. Reading and unpacking a weight block costs more than multiplying
// it into one more x row, so every block is read once per chunk of up to 8 rows: m = 8 costs about one pass over the
// weights, not two (chunks of 4) or three (m = 7 as 4 + 2 + 1). A single row takes 4/2/1 blocks at a time instead,
// to keep enough independent accumulators. `launch(B, M, i, nb)` runs kernel<B, M> on rows i.. and blocks nb...
// Every row's sums are accumulated in the same order whatever the chunking, so a row's result does not depend on
// the rows batched with it.
template <typename Launch>
void run_blocked(int64_t m, int64_t nb_begin, int64_t nb_end, Launch launch) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    for (int64_t nb = nb_begin; nb < nb_end; ++nb) launch(Const<1>{}, Const<8>{}, i, nb);
  auto chunk = [&](auto rows) {
    for (int64_t nb = nb_begin; nb < nb_end; ++nb) launch(Const<1>{}, rows, i, nb);
  };
  switch (m - i) {
    case 0:
      break;
    case 1: {
      int64_t nb = nb_begin;
      for (; nb + 4 <= nb_end; nb += 4) launch(Const<4>{}, Const<1>{}, i, nb);
      for (; nb + 2 <= nb_end; nb += 2) launch(Const<2>{}, Const<1>{}, i, nb);
      for (; nb < nb_end; ++nb) launch(Const<1>{}, Const<1>{}, i, nb);
      break;
    }
    case 2: {
      int64_t nb = nb_begin;
      for (; nb + 2 <= nb_end; nb += 2) launch(Const<2>{}, Const<2>{}, i, nb);
      for (; nb < nb_end; ++nb) launch(Const<1>{}, Const<2>{}, i, nb);
      break;
    }
    case 3: chunk(Const<3>{}); break;
    case 4: chunk(Const<4>{}); break;
    case 5: chunk(Const<5>{}); break;
    case 6: chunk(Const<6>{}); break;
    default: chunk(Const<7>{}); break;
  }
}

bool has_vnni() {
  if (g_force_portable) return false;
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512vnni");
  return ok;
}
#else
bool has_vnni() { return false; }
#endif

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
  const XQuant q = quantize_x(x);
  auto y = torch::empty({m, n16}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::Half* sp = sw.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  const bool fast = has_vnni();
  at::parallel_for(0, nblocks, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, k / 16)), [&](int64_t b0, int64_t b1) {
#if LS_X86
    if (fast) {
      const int8_t* xq = q.xq;
      const float* sx = q.sx;
      const int32_t* xs = q.xqsum;
      const int64_t groups = k / kXGroup;
      run_blocked(m, b0, b1, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
        i8b_kernel<decltype(blocks)::value, decltype(rows)::value>(
            wp, reinterpret_cast<const uint16_t*>(sp), k, xq + i * k, sx + i * groups, xs + i * groups,
            yp + i * n16, n16, nb);
      });
      return;
    }
#endif
    i8b_blocks_ref(wp, sp, k, q, m, yp, n16, b0, b1);
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
  const XQuant q = quantize_x(x);
  auto y = torch::empty({m, n16}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::Half* pp = params.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  const bool fast = has_vnni();
  at::parallel_for(0, nblocks, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, k / 16)), [&](int64_t b0, int64_t b1) {
#if LS_X86
    if (fast) {
      const int8_t* xq = q.xq;
      const float* sx = q.sx;
      const float* xs = q.xsum;
      const uint16_t* pr = reinterpret_cast<const uint16_t*>(pp);
      const int64_t groups = k / kXGroup;
      run_blocked(m, b0, b1, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
        i4b_kernel<decltype(blocks)::value, decltype(rows)::value>(
            wp, pr, k, xq + i * k, sx + i * groups, xs + i * groups, yp + i * n16, n16, nb);
      });
      return;
    }
#endif
    i4b_blocks_ref(wp, pp, k, q, m, yp, n16, b0, b1);
  });
  return n == n16 ? y : y.narrow(1, 0, n);
}

std::string kernel_isa() { return has_vnni() ? "avx512_vnni" : "portable"; }

void force_portable(bool on) { g_force_portable = on; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_blocked_gemv", &int8_blocked_gemv, "int8 weights x int8-rounded activations on the VNNI-blocked layout; returns [M, n]");
  m.def("int4_blocked_gemv", &int4_blocked_gemv, "int4 weights x int8-rounded activations on the VNNI-blocked layout; returns [M, n]");
  m.def("kernel_isa", &kernel_isa, "instruction set the kernels dispatch to on this CPU");
  m.def("force_portable", &force_portable, "route every call through the portable C++ path (testing)");
}
