// AVX2 (+FMA, F16C) path for CPUs without AVX-512 VNNI (AMD Zen 1-3, most Intel client CPUs).
//
// Same layouts and the same int8 activation rounding as the VNNI path, so it gives the same results
// (tested bit-for-bit against each other where both run). A 32-byte load holds 8 rows x 4 inputs:
// lanes are still output rows. AVX2 has no vpdpbusd; as llama.cpp's AVX2 Q8_0/Q4_1 dot products do,
// _mm256_maddubs_epi16 (unsigned x signed bytes -> int16 pair sums) then _mm256_madd_epi16 with ones
// (-> int32 sums of 4) take its place. maddubs saturates its int16 pair sums, which decides how each
// format feeds it:
//   int8: the stored code + 128 (up to 255) times x (up to 127) would overflow, so the weight is made
//         signed (xor 0x80), moved to the signed operand with x's sign (_mm256_sign_epi8) and multiplied
//         by |x|: |pair sum| <= 2 * 127 * 127 = 32258. Needs codes != -128 (the converter clamps to 127).
//   int4: codes 0..15 are the unsigned operand as they are; a pair sums to at most 2 * 15 * 127 = 3810,
//         so the int16 sums of a whole group of 32 inputs (8 pairs, 30480) fit and madd runs once per group.
#pragma once

#include "gemv_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace ls {

#define LS_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

LS_AVX2_TARGET inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

LS_AVX2_TARGET inline int32_t hsum8_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// The reference rounding with 8-wide vectors: cvtps_epi32 rounds half to even under the default MXCSR,
// as nearbyint does, and |x * 127/amax| never exceeds 127.5, so the saturating packs equal the clamp.
LS_AVX2_TARGET inline void quantize_x_rows_avx2(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx,
                                                int32_t* xqsum, float* xsum) {
  const int64_t groups = k / kXGroup;
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + i * k + g * kXGroup;
      __m256 v[4];
      for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(xg + 8 * j);
      const __m256 m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
      const __m256 m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
      const float amax = hmax8(_mm256_max_ps(m01, m23));
      const float scale = amax / 127.f;
      const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      __m256i q[4];
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
      // packs work within 128-bit lanes: its 4-byte groups hold x[0..3], x[8..11], x[16..19], x[24..27], x[4..7], ...
      const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
      const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
      const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), order);
      _mm256_storeu_si256((__m256i*)(xq + i * k + g * kXGroup), p8);
      const int32_t qsum = hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
      sx[i * groups + g] = scale;
      xqsum[i * groups + g] = qsum;
      xsum[i * groups + g] = scale * static_cast<float>(qsum);
    }
  }
}

// B row blocks against M x rows; each 64-byte chunk of a block is two 8-row halves (h).
template <int B, int M>
LS_AVX2_TARGET void i8b_kernel_avx2(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
                                    float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 16 * k;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 facc[B][M][2];
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) facc[b][i][0] = facc[b][i][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i ia[B][M][2];
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < M; ++i) ia[b][i][0] = ia[b][i][1] = _mm256_setzero_si256();
    for (int t = 0; t < kXGroup / 4; ++t) {
      __m256i xv[M], ax[M];
      for (int i = 0; i < M; ++i) {
        xv[i] = _mm256_set1_epi32(load_i32(xq + i * k + g * kXGroup + t * 4));
        ax[i] = _mm256_abs_epi8(xv[i]);
      }
      for (int b = 0; b < B; ++b) {
        const uint8_t* wp = w + (nb + b) * block_bytes + (g * (kXGroup / 4) + t) * 64;
        for (int h = 0; h < 2; ++h) {
          const __m256i ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wp + 32 * h)), flip);
          for (int i = 0; i < M; ++i) {
            const __m256i pairs = _mm256_maddubs_epi16(ax[i], _mm256_sign_epi8(ws, xv[i]));
            ia[b][i][h] = _mm256_add_epi32(ia[b][i][h], _mm256_madd_epi16(pairs, ones));
          }
        }
      }
    }
    for (int b = 0; b < B; ++b) {
      const uint16_t* sg = sw + ((nb + b) * groups + g) * 16;
      for (int h = 0; h < 2; ++h) {
        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sg + 8 * h)));
        for (int i = 0; i < M; ++i) {
          const __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(sx[i * groups + g]));
          facc[b][i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[b][i][h]), s, facc[b][i][h]);
        }
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + i * n16 + (nb + b) * 16 + 8 * h, facc[b][i][h]);
}

template <int B, int M>
LS_AVX2_TARGET void i4b_kernel_avx2(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq,
                                    const float* sx, const float* xsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 8 * k;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 facc[B][M][2];
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i) facc[b][i][0] = facc[b][i][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc16[B][M][2];  // int16 pair sums of the whole group: at most 8 * 3810, see the header
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < M; ++i) acc16[b][i][0] = acc16[b][i][1] = _mm256_setzero_si256();
    for (int t = 0; t < kXGroup / 8; ++t) {
      __m256i xlo[M], xhi[M];
      for (int i = 0; i < M; ++i) {
        const int8_t* xp = xq + i * k + g * kXGroup + t * 8;
        xlo[i] = _mm256_set1_epi32(load_i32(xp));
        xhi[i] = _mm256_set1_epi32(load_i32(xp + 4));
      }
      for (int b = 0; b < B; ++b) {
        const uint8_t* wp = w + (nb + b) * block_bytes + (g * (kXGroup / 8) + t) * 64;
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(wp + 32 * h));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          for (int i = 0; i < M; ++i) {
            const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo[i]), _mm256_maddubs_epi16(hi, xhi[i]));
            acc16[b][i][h] = _mm256_add_epi16(acc16[b][i][h], s);
          }
        }
      }
    }
    for (int b = 0; b < B; ++b) {
      const uint16_t* pg = params + ((nb + b) * groups + g) * 32;
      for (int h = 0; h < 2; ++h) {
        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(pg + 8 * h)));
        const __m256 minimum = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(pg + 16 + 8 * h)));
        for (int i = 0; i < M; ++i) {
          const __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(sx[i * groups + g]));
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc16[b][i][h], ones));
          facc[b][i][h] = _mm256_fmadd_ps(dot, s, facc[b][i][h]);
          facc[b][i][h] = _mm256_fmadd_ps(minimum, _mm256_set1_ps(xsum[i * groups + g]), facc[b][i][h]);
        }
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < M; ++i)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + i * n16 + (nb + b) * 16 + 8 * h, facc[b][i][h]);
}

// 16 ymm registers: a single row takes at most 2 blocks at a time (8 int + 4 float accumulators per pair).
inline void i8b_blocks_avx2(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                            int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<2>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i8b_kernel_avx2<decltype(blocks)::value, decltype(rows)::value>(w, sw, k, q.xq + i * k, q.sx + i * groups,
                                                                      y + i * n16, n16, nb);
  });
}

inline void i4b_blocks_avx2(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m, float* y,
                            int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<2>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i4b_kernel_avx2<decltype(blocks)::value, decltype(rows)::value>(
        w, params, k, q.xq + i * k, q.sx + i * groups, q.xsum + i * groups, y + i * n16, n16, nb);
  });
}

}  // namespace ls

#endif
