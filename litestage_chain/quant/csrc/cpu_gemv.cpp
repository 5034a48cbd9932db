// Low-bit weight GEMV kernels for batch-1 (and small-batch) CPU decoding.
//
// Why: at decode time every Linear is a matrix-vector product, so its cost is reading the
// weights. Storing them as int8 (per output row scale) or int4 (per group scale and min) reads 4x or
// 8x fewer bytes than float32, but only if the dequantisation happens in registers; the ATen
// paths (_weight_int8pack_mm, dequantise-then-matmul) are slower than the float GEMV.
//
// The file compiles with the compiler's default x86-64 target; the AVX-512 paths carry
// function-level target attributes and are chosen at run time with __builtin_cpu_supports,
// so the built extension never executes an instruction the CPU lacks (a -march=native build
// can, on hosts whose compiler and CPU disagree). Other CPUs take a plain C++ path.
//
// Layouts (row-major, one row per output feature):
//   int8:  w  int8  [N, K],   scale float [N]              y = scale[n] * sum_k w[n,k] x[k]
//   int4:  w  uint8 [N, K/2], params half [N, K/G, 2]      two 4-bit codes q in [0, 15] per
//          byte; params hold (scale, min) per group of G, value = scale * q + min (the same
//          asymmetric form as GGUF Q4_K blocks). Within each group, byte j holds element j (low
//          nibble) and element j + G/2 (high nibble), so one 16-byte load feeds two 16-lane
//          halves.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LS_X86 1
#else
#define LS_X86 0
#endif

namespace {

constexpr int64_t kMaxRowsX = 4;  // x rows handled per pass over the weights

// ---------------------------------------------------------------- portable paths

void int8_rows_ref(const float* x, int64_t m, int64_t k, const int8_t* w, const float* scale,
                   float* y, int64_t n, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int8_t* wr = w + r * k;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      float acc = 0.f;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<float>(wr[c]) * xi[c];
      y[i * n + r] = acc * scale[r];
    }
  }
}

void int4_rows_ref(const float* x, int64_t m, int64_t k, const uint8_t* w, const at::Half* params,
                   int64_t group, float* y, int64_t n, int64_t row_begin, int64_t row_end) {
  const int64_t groups = k / group;
  const int64_t half = group / 2;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* wr = w + r * (k / 2);
    const at::Half* pr = params + r * groups * 2;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      float acc = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* wg = wr + g * half;
        const float* xg = xi + g * group;
        float dot = 0.f, sum = 0.f;
        for (int64_t j = 0; j < half; ++j) {
          dot += static_cast<float>(wg[j] & 0xF) * xg[j] + static_cast<float>(wg[j] >> 4) * xg[j + half];
          sum += xg[j] + xg[j + half];
        }
        acc += static_cast<float>(pr[2 * g]) * dot + static_cast<float>(pr[2 * g + 1]) * sum;
      }
      y[i * n + r] = acc;
    }
  }
}

#if LS_X86
// ---------------------------------------------------------------- AVX-512 int8

// One weight row against M (<= 4) x rows. The weights are widened once per 16 lanes and
// reused for every x row, so a small batch costs one pass over the weights.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl,fma")))
inline void int8_row_avx512(const float* x, int64_t k, const int8_t* wr, float s, float* out,
                            int64_t out_stride) {
  __m512 acc0[M], acc1[M];
  for (int i = 0; i < M; ++i) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); }
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wr + c))));
    __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wr + c + 16))));
    for (int i = 0; i < M; ++i) {
      acc0[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i * k + c), acc0[i]);
      acc1[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i * k + c + 16), acc1[i]);
    }
  }
  for (; c < k; c += 16) {
    const int64_t left = k - c;
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, wr + c)));
    for (int i = 0; i < M; ++i)
      acc0[i] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, x + i * k + c), acc0[i]);
  }
  for (int i = 0; i < M; ++i)
    out[i * out_stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])) * s;
}

// Two weight rows at once against one x row: two independent load streams keep more
// memory requests in flight, which is what batch-1 decode is bound by.
__attribute__((target("avx512f,avx512bw,avx512vl,fma")))
inline void int8_row2_avx512(const float* x, int64_t k, const int8_t* wa, const int8_t* wb,
                             float sa, float sb, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + c);
    const __m512 x1 = _mm512_loadu_ps(x + c + 16);
    a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wa + c)))), x0, a0);
    a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wa + c + 16)))), x1, a1);
    b0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wb + c)))), x0, b0);
    b1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wb + c + 16)))), x1, b1);
  }
  for (; c < k; c += 16) {
    const int64_t left = k - c;
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    const __m512 x0 = _mm512_maskz_loadu_ps(mask, x + c);
    a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, wa + c))), x0, a0);
    b0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, wb + c))), x0, b0);
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * sa;
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1)) * sb;
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma")))
void int8_rows_avx512(const float* x, int64_t m, int64_t k, const int8_t* w, const float* scale,
                      float* y, int64_t n, int64_t row_begin, int64_t row_end) {
  if (m == 1) {
    int64_t r = row_begin;
    for (; r + 2 <= row_end; r += 2) {
      float pair[2];
      int8_row2_avx512(x, k, w + r * k, w + (r + 1) * k, scale[r], scale[r + 1], pair);
      y[r] = pair[0];
      y[r + 1] = pair[1];
    }
    for (; r < row_end; ++r) int8_row_avx512<1>(x, k, w + r * k, scale[r], y + r, n);
    return;
  }
  for (int64_t i0 = 0; i0 < m; i0 += kMaxRowsX) {
    const int64_t mb = std::min<int64_t>(kMaxRowsX, m - i0);
    const float* xb = x + i0 * k;
    float* yb = y + i0 * n;
    for (int64_t r = row_begin; r < row_end; ++r) {
      switch (mb) {
        case 4: int8_row_avx512<4>(xb, k, w + r * k, scale[r], yb + r, n); break;
        case 3: int8_row_avx512<3>(xb, k, w + r * k, scale[r], yb + r, n); break;
        case 2: int8_row_avx512<2>(xb, k, w + r * k, scale[r], yb + r, n); break;
        default: int8_row_avx512<1>(xb, k, w + r * k, scale[r], yb + r, n); break;
      }
    }
  }
}

// ---------------------------------------------------------------- AVX-512 int4

// Per group: scale * sum(q x) + min * sum(x). sum(x) per group (gsum) is computed once per
// call because x is shared by every row; sum(q x) stays in vector registers and is scaled
// with one FMA per group.
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
void int4_rows_avx512(const float* x, int64_t m, int64_t k, const uint8_t* w, const uint16_t* params,
                      int64_t group, const float* gsum, float* y, int64_t n, int64_t row_begin,
                      int64_t row_end) {
  const int64_t groups = k / group;
  const int64_t half = group / 2;
  const __m512i low4 = _mm512_set1_epi32(0xF);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    const float* gs = gsum + i * groups;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const uint8_t* wr = w + r * (k / 2);
      const uint16_t* pr = params + r * groups * 2;
      __m512 acc = _mm512_setzero_ps();
      float offset = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* wg = wr + g * half;
        const float* xg = xi + g * group;
        __m512 part0 = _mm512_setzero_ps(), part1 = _mm512_setzero_ps();
        for (int64_t j = 0; j < half; j += 16) {
          const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(wg + j)));
          const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, low4));
          const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
          part0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xg + j), part0);
          part1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + half + j), part1);
        }
        acc = _mm512_fmadd_ps(_mm512_add_ps(part0, part1), _mm512_set1_ps(_cvtsh_ss(pr[2 * g])), acc);
        offset += _cvtsh_ss(pr[2 * g + 1]) * gs[g];
      }
      y[i * n + r] = _mm512_reduce_add_ps(acc) + offset;
    }
  }
}

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

void check_common(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scale) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && scale.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32, "scale must be float32");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "x must be [M, K] and w 2-D");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && scale.is_contiguous(), "contiguous inputs only");
}

// Rows per parallel task: big enough that thread hand-off is noise next to the work.
int64_t grain_rows(int64_t k_bytes) { return std::max<int64_t>(16, (256 * 1024) / std::max<int64_t>(1, k_bytes)); }

}  // namespace

torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor scale) {
  check_common(x, w, scale);
  TORCH_CHECK(w.scalar_type() == torch::kInt8, "w must be int8");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  TORCH_CHECK(w.size(1) == k && scale.numel() == n, "shape mismatch");
  auto y = torch::empty({m, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  at::parallel_for(0, n, grain_rows(k), [&](int64_t begin, int64_t end) {
#if LS_X86
    if (fast) { int8_rows_avx512(xp, m, k, wp, sp, yp, n, begin, end); return; }
#endif
    int8_rows_ref(xp, m, k, wp, sp, yp, n, begin, end);
  });
  return y;
}

torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor params, int64_t group) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && params.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8, "w must be uint8 (packed int4)");
  TORCH_CHECK(params.scalar_type() == torch::kFloat16, "params must be float16 (scale, min) pairs");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "x must be [M, K] and w [N, K/2]");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && params.is_contiguous(), "contiguous inputs only");
  TORCH_CHECK(group >= 32 && group % 32 == 0, "group must be a multiple of 32");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  TORCH_CHECK(k % group == 0 && w.size(1) * 2 == k, "K must be a multiple of group and w [N, K/2]");
  TORCH_CHECK(params.dim() == 3 && params.size(0) == n && params.size(1) == k / group && params.size(2) == 2,
              "params must be [N, K/group, 2]");
  auto y = torch::empty({m, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::Half* pp = params.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  torch::Tensor gsum;
  if (fast) gsum = x.view({m, k / group, group}).sum(-1).contiguous();
  at::parallel_for(0, n, grain_rows(k / 2), [&](int64_t begin, int64_t end) {
#if LS_X86
    if (fast) {
      int4_rows_avx512(xp, m, k, wp, reinterpret_cast<const uint16_t*>(pp), group, gsum.data_ptr<float>(), yp, n,
                       begin, end);
      return;
    }
#endif
    int4_rows_ref(xp, m, k, wp, pp, group, yp, n, begin, end);
  });
  return y;
}

std::string kernel_isa() { return has_avx512() ? "avx512" : "portable"; }

void force_portable(bool on) { g_force_portable = on; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "y[M,N] = (x[M,K] @ w_int8[N,K]^T) * scale[N]");
  m.def("int4_gemv", &int4_gemv, "y[M,N] = x[M,K] @ dequant(w_int4[N,K/2], params[N,K/G,2])^T");
  m.def("kernel_isa", &kernel_isa, "instruction set the kernels dispatch to on this CPU");
  m.def("force_portable", &force_portable, "route every call through the portable C++ path (testing)");
}
