// The portable path: plain C++ over the blocked layouts, written so the compiler can vectorise it for
// whatever baseline it targets (SSE2 on x86-64, NEON on aarch64, ...).
//
// Why not the element-by-element reference: that one recomputes the blocked index for every weight and
// reads 4 bytes 64 apart per row; it is several times slower than the float32 matmul it replaces. Here
// the 16 rows of a block are the inner (vectorisable) loop over one contiguous 64-byte chunk, each
// weight chunk is multiplied into up to M activation rows while it is in registers, and the codes are
// summed as integers and scaled once per group of 32, as the SIMD paths do.
//
// On x86-64 the baseline ISA includes SSE2, and compilers do not turn the lane sums above into pmaddwd (they widen
// every product to 32 bits instead): there the path runs the SSE2 kernels below, with the same arithmetic (integer
// sums are exact in any order; the float steps are the same operations in the same order, and SSE2 has no fused
// multiply-add), so both give the same bits. The plain C++ kernels run everywhere else (and in the standalone harness).
#pragma once

#include "gemv_common.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ls {

// The products of one 64-byte chunk go lane by lane into 64 int32 sums (lane j: row j / 4, input j % 4), a
// contiguous elementwise loop any vectoriser handles; the 4 lanes of a row are added once per group.
template <int B, int M>
inline void i8b_kernel_portable(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
                                const int32_t* xqsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = kRows * k;
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    float facc[M][kRows] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t lanes[M][64] = {};
      for (int t = 0; t < kXGroup / 4; ++t) {
        const uint8_t* c = wb + (g * (kXGroup / 4) + t) * 64;
        for (int i = 0; i < M; ++i) {
          int16_t xs[8];  // the 4 inputs twice: one 16-byte vector the loop keeps in a register
          const int8_t* xp = xq + i * k + g * kXGroup + t * 4;
          for (int j = 0; j < 8; ++j) xs[j] = xp[j & 3];
          for (int jj = 0; jj < 64; jj += 8)
            for (int j = 0; j < 8; ++j) lanes[i][jj + j] += static_cast<int16_t>(c[jj + j]) * xs[j];
        }
      }
      float s[kRows];
      for (int r = 0; r < kRows; ++r) s[r] = half_to_float(sw[((nb + b) * groups + g) * kRows + r]);
      for (int i = 0; i < M; ++i) {
        const int32_t corr = 128 * xqsum[i * groups + g];  // the codes are stored + 128
        const float sxg = sx[i * groups + g];
        for (int r = 0; r < kRows; ++r) {
          const int32_t dot = lanes[i][4 * r] + lanes[i][4 * r + 1] + lanes[i][4 * r + 2] + lanes[i][4 * r + 3];
          facc[i][r] += static_cast<float>(dot - corr) * (s[r] * sxg);
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int r = 0; r < kRows; ++r) y[i * n16 + (nb + b) * kRows + r] = facc[i][r];
  }
}

// As the int8 kernel; a byte holds inputs j % 4 (low nibble) and 4 + j % 4 (high nibble) of its row.
template <int B, int M>
inline void i4b_kernel_portable(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq, const float* sx,
                                const float* xsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 8 * k;
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    float facc[M][kRows] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t lanes[M][64] = {};
      for (int t = 0; t < kXGroup / 8; ++t) {
        const uint8_t* c = wb + (g * (kXGroup / 8) + t) * 64;
        for (int i = 0; i < M; ++i) {
          int16_t xlo[8], xhi[8];
          const int8_t* xp = xq + i * k + g * kXGroup + t * 8;
          for (int j = 0; j < 8; ++j) {
            xlo[j] = xp[j & 3];
            xhi[j] = xp[4 + (j & 3)];
          }
          for (int jj = 0; jj < 64; jj += 8)
            for (int j = 0; j < 8; ++j)
              lanes[i][jj + j] += static_cast<int16_t>(static_cast<int16_t>(c[jj + j] & 0xF) * xlo[j] +
                                                       static_cast<int16_t>(c[jj + j] >> 4) * xhi[j]);
        }
      }
      const uint16_t* pg = params + ((nb + b) * groups + g) * 32;
      float scale[kRows], minimum[kRows];
      for (int r = 0; r < kRows; ++r) {
        scale[r] = half_to_float(pg[r]);
        minimum[r] = half_to_float(pg[kRows + r]);
      }
      for (int i = 0; i < M; ++i) {
        const float sxg = sx[i * groups + g], xs = xsum[i * groups + g];
        for (int r = 0; r < kRows; ++r) {
          const int32_t dot = lanes[i][4 * r] + lanes[i][4 * r + 1] + lanes[i][4 * r + 2] + lanes[i][4 * r + 3];
          facc[i][r] += static_cast<float>(dot) * (scale[r] * sxg) + minimum[r] * xs;
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int r = 0; r < kRows; ++r) y[i * n16 + (nb + b) * kRows + r] = facc[i][r];
  }
}

inline void i8b_blocks_generic(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                                int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i8b_kernel_portable<decltype(blocks)::value, decltype(rows)::value>(
        w, sw, k, q.xq + i * k, q.sx + i * groups, q.xqsum + i * groups, y + i * n16, n16, nb);
  });
}

inline void i4b_blocks_generic(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m,
                                float* y, int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i4b_kernel_portable<decltype(blocks)::value, decltype(rows)::value>(
        w, params, k, q.xq + i * k, q.sx + i * groups, q.xsum + i * groups, y + i * n16, n16, nb);
  });
}

#if defined(__SSE2__)
// Four int32 vectors of lane-pair sums (vector q: rows 2q and 2q+1, two pair sums each) -> one int32 sum per row.
inline __m128i row_sums_sse2(__m128i a, __m128i b) {
  const __m128 fa = _mm_castsi128_ps(a), fb = _mm_castsi128_ps(b);
  return _mm_add_epi32(_mm_castps_si128(_mm_shuffle_ps(fa, fb, _MM_SHUFFLE(2, 0, 2, 0))),
                       _mm_castps_si128(_mm_shuffle_ps(fa, fb, _MM_SHUFFLE(3, 1, 3, 1))));
}

// One group's 32 activation codes as four vectors of 8 int16 (sign-extended).
inline void widen_x_sse2(const int8_t* xp, __m128i x16[4]) {
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xp));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xp + 16));
  x16[0] = _mm_srai_epi16(_mm_unpacklo_epi8(lo, lo), 8);
  x16[1] = _mm_srai_epi16(_mm_unpackhi_epi8(lo, lo), 8);
  x16[2] = _mm_srai_epi16(_mm_unpacklo_epi8(hi, hi), 8);
  x16[3] = _mm_srai_epi16(_mm_unpackhi_epi8(hi, hi), 8);
}

// Inputs 4j..4j+3 of a group, twice (the 8 int16 lanes of one 16-byte weight load hold two rows x those 4 inputs).
inline __m128i x4_twice_sse2(const __m128i x16[4], int j) {
  return (j & 1) ? _mm_unpackhi_epi64(x16[j / 2], x16[j / 2]) : _mm_unpacklo_epi64(x16[j / 2], x16[j / 2]);
}

// B blocks x M rows. Rows are taken one at a time per group, so the group's 512 weight bytes are read from memory
// once and from L1 for the other rows, and the accumulators fit the 16 registers whatever M is.
template <int B, int M>
inline void i8b_kernel_sse2(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
                            const int32_t* xqsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = kRows * k;
  const __m128i zero = _mm_setzero_si128();
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    __m128 facc[M][4];
    for (int i = 0; i < M; ++i)
      for (int q = 0; q < 4; ++q) facc[i][q] = _mm_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      float s[kRows];
      for (int r = 0; r < kRows; ++r) s[r] = half_to_float(sw[((nb + b) * groups + g) * kRows + r]);
      const uint8_t* c = wb + g * (kXGroup / 4) * 64;
      for (int i = 0; i < M; ++i) {
        __m128i x16[4];
        widen_x_sse2(xq + i * k + g * kXGroup, x16);
        __m128i acc[8];
        for (int q = 0; q < 8; ++q) acc[q] = zero;
        for (int t = 0; t < kXGroup / 4; ++t) {
          const __m128i xs = x4_twice_sse2(x16, t);
          for (int h = 0; h < 4; ++h) {  // rows 4h..4h+3
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + t * 64 + 16 * h));
            acc[2 * h] = _mm_add_epi32(acc[2 * h], _mm_madd_epi16(_mm_unpacklo_epi8(v, zero), xs));
            acc[2 * h + 1] = _mm_add_epi32(acc[2 * h + 1], _mm_madd_epi16(_mm_unpackhi_epi8(v, zero), xs));
          }
        }
        const __m128i corr = _mm_set1_epi32(128 * xqsum[i * groups + g]);  // the codes are stored + 128
        const __m128 sxg = _mm_set1_ps(sx[i * groups + g]);
        for (int q = 0; q < 4; ++q) {
          const __m128i dot = _mm_sub_epi32(row_sums_sse2(acc[2 * q], acc[2 * q + 1]), corr);
          const __m128 scale = _mm_mul_ps(_mm_loadu_ps(s + 4 * q), sxg);
          facc[i][q] = _mm_add_ps(facc[i][q], _mm_mul_ps(_mm_cvtepi32_ps(dot), scale));
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int q = 0; q < 4; ++q) _mm_storeu_ps(y + i * n16 + (nb + b) * kRows + 4 * q, facc[i][q]);
  }
}

// As the int8 kernel; per 16-byte load, the low nibbles meet inputs 8t..8t+3 and the high nibbles 8t+4..8t+7.
template <int B, int M>
inline void i4b_kernel_sse2(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq, const float* sx,
                            const float* xsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 8 * k;
  const __m128i zero = _mm_setzero_si128();
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    __m128 facc[M][4];
    for (int i = 0; i < M; ++i)
      for (int q = 0; q < 4; ++q) facc[i][q] = _mm_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const uint16_t* pg = params + ((nb + b) * groups + g) * 32;
      float scale[kRows], minimum[kRows];
      for (int r = 0; r < kRows; ++r) {
        scale[r] = half_to_float(pg[r]);
        minimum[r] = half_to_float(pg[kRows + r]);
      }
      const uint8_t* c = wb + g * (kXGroup / 8) * 64;
      for (int i = 0; i < M; ++i) {
        __m128i x16[4];
        widen_x_sse2(xq + i * k + g * kXGroup, x16);
        __m128i acc[8];
        for (int q = 0; q < 8; ++q) acc[q] = zero;
        for (int t = 0; t < kXGroup / 8; ++t) {
          const __m128i xlo = x4_twice_sse2(x16, 2 * t), xhi = x4_twice_sse2(x16, 2 * t + 1);
          for (int h = 0; h < 4; ++h) {
            const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + t * 64 + 16 * h));
            const __m128i lo = _mm_and_si128(v, low4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
            const __m128i a = _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi8(lo, zero), xlo),
                                            _mm_madd_epi16(_mm_unpacklo_epi8(hi, zero), xhi));
            const __m128i d = _mm_add_epi32(_mm_madd_epi16(_mm_unpackhi_epi8(lo, zero), xlo),
                                            _mm_madd_epi16(_mm_unpackhi_epi8(hi, zero), xhi));
            acc[2 * h] = _mm_add_epi32(acc[2 * h], a);
            acc[2 * h + 1] = _mm_add_epi32(acc[2 * h + 1], d);
          }
        }
        const __m128 sxg = _mm_set1_ps(sx[i * groups + g]), xs = _mm_set1_ps(xsum[i * groups + g]);
        for (int q = 0; q < 4; ++q) {
          const __m128 dot = _mm_cvtepi32_ps(row_sums_sse2(acc[2 * q], acc[2 * q + 1]));
          const __m128 term = _mm_add_ps(_mm_mul_ps(dot, _mm_mul_ps(_mm_loadu_ps(scale + 4 * q), sxg)),
                                         _mm_mul_ps(_mm_loadu_ps(minimum + 4 * q), xs));
          facc[i][q] = _mm_add_ps(facc[i][q], term);
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int q = 0; q < 4; ++q) _mm_storeu_ps(y + i * n16 + (nb + b) * kRows + 4 * q, facc[i][q]);
  }
}
#endif

inline void i8b_blocks_portable(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                                int64_t n16, int64_t nb_begin, int64_t nb_end) {
#if defined(__SSE2__)
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i8b_kernel_sse2<decltype(blocks)::value, decltype(rows)::value>(
        w, sw, k, q.xq + i * k, q.sx + i * groups, q.xqsum + i * groups, y + i * n16, n16, nb);
  });
#else
  i8b_blocks_generic(w, sw, k, q, m, y, n16, nb_begin, nb_end);
#endif
}

inline void i4b_blocks_portable(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m,
                                float* y, int64_t n16, int64_t nb_begin, int64_t nb_end) {
#if defined(__SSE2__)
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i4b_kernel_sse2<decltype(blocks)::value, decltype(rows)::value>(
        w, params, k, q.xq + i * k, q.sx + i * groups, q.xsum + i * groups, y + i * n16, n16, nb);
  });
#else
  i4b_blocks_generic(w, params, k, q, m, y, n16, nb_begin, nb_end);
#endif
}

}  // namespace ls
