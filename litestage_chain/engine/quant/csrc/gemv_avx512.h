// AVX-512 VNNI path: one vpdpbusd multiplies 64 weight bytes (16 rows x 4 inputs) by a 32-bit
// broadcast of 4 int8 activations; vector lanes are output rows, so no horizontal sums are needed.
//
// Functions carry target attributes and are only called after a run-time CPU check, so the file
// compiles with the default x86-64 target and never executes an instruction the CPU lacks.
#pragma once

#include "gemv_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace ls {

// Same rounding as the reference (amax/127 scale, round-half-even under the default MXCSR),
// vectorised because a scalar loop costs tens of microseconds per call on K = 8960.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void quantize_x_rows_avx512(
    const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum, float* xsum) {
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

#define LS_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))

// B row blocks (16 rows each) against M x rows; B*M independent accumulator chains hide the
// vpdpbusd latency, and each weight load is reused for all M rows.
template <int B, int M>
LS_VNNI_TARGET void i8b_kernel_vnni(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
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
LS_VNNI_TARGET void i4b_kernel_vnni(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq,
                                    const float* sx, const float* xsum, float* y, int64_t n16, int64_t nb) {
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

inline void i8b_blocks_vnni(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                            int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i8b_kernel_vnni<decltype(blocks)::value, decltype(rows)::value>(
        w, sw, k, q.xq + i * k, q.sx + i * groups, q.xqsum + i * groups, y + i * n16, n16, nb);
  });
}

inline void i4b_blocks_vnni(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m, float* y,
                            int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i4b_kernel_vnni<decltype(blocks)::value, decltype(rows)::value>(
        w, params, k, q.xq + i * k, q.sx + i * groups, q.xsum + i * groups, y + i * n16, n16, nb);
  });
}

}  // namespace ls

#endif
