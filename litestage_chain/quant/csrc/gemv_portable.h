// The portable path: plain C++ over the blocked layouts, written so the compiler can vectorise it for
// whatever baseline it targets (SSE2 on x86-64, NEON on aarch64, ...).
//
// Why not the element-by-element reference: that one recomputes the blocked index for every weight and
// reads 4 bytes 64 apart per row; it is several times slower than the float32 matmul it replaces. Here
// the 16 rows of a block are the inner (vectorisable) loop over one contiguous 64-byte chunk, each
// weight chunk is multiplied into up to M activation rows while it is in registers, and the codes are
// summed as integers and scaled once per group of 32, as the SIMD paths do.
#pragma once

#include "gemv_common.h"

namespace ls {

template <int B, int M>
inline void i8b_kernel_portable(const uint8_t* w, const uint16_t* sw, int64_t k, const int8_t* xq, const float* sx,
                                const int32_t* xqsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = kRows * k;
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    float facc[M][kRows] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot[M][kRows] = {};
      for (int t = 0; t < kXGroup / 4; ++t) {
        const uint8_t* c = wb + (g * (kXGroup / 4) + t) * 64;
        for (int i = 0; i < M; ++i) {
          const int8_t* xp = xq + i * k + g * kXGroup + t * 4;
          const int32_t x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
          for (int r = 0; r < kRows; ++r)
            dot[i][r] += c[r * 4] * x0 + c[r * 4 + 1] * x1 + c[r * 4 + 2] * x2 + c[r * 4 + 3] * x3;
        }
      }
      float s[kRows];
      for (int r = 0; r < kRows; ++r) s[r] = half_to_float(sw[((nb + b) * groups + g) * kRows + r]);
      for (int i = 0; i < M; ++i) {
        const int32_t corr = 128 * xqsum[i * groups + g];  // the codes are stored + 128
        const float sxg = sx[i * groups + g];
        for (int r = 0; r < kRows; ++r) facc[i][r] += static_cast<float>(dot[i][r] - corr) * (s[r] * sxg);
      }
    }
    for (int i = 0; i < M; ++i)
      for (int r = 0; r < kRows; ++r) y[i * n16 + (nb + b) * kRows + r] = facc[i][r];
  }
}

template <int B, int M>
inline void i4b_kernel_portable(const uint8_t* w, const uint16_t* params, int64_t k, const int8_t* xq, const float* sx,
                                const float* xsum, float* y, int64_t n16, int64_t nb) {
  const int64_t groups = k / kXGroup;
  const int64_t block_bytes = 8 * k;
  for (int b = 0; b < B; ++b) {
    const uint8_t* wb = w + (nb + b) * block_bytes;
    float facc[M][kRows] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t dot[M][kRows] = {};
      for (int t = 0; t < kXGroup / 8; ++t) {
        const uint8_t* c = wb + (g * (kXGroup / 8) + t) * 64;
        int32_t lo[kRows * 4], hi[kRows * 4];
        for (int j = 0; j < kRows * 4; ++j) {
          lo[j] = c[j] & 0xF;
          hi[j] = c[j] >> 4;
        }
        for (int i = 0; i < M; ++i) {
          const int8_t* xp = xq + i * k + g * kXGroup + t * 8;
          for (int r = 0; r < kRows; ++r)
            dot[i][r] += lo[r * 4] * xp[0] + lo[r * 4 + 1] * xp[1] + lo[r * 4 + 2] * xp[2] + lo[r * 4 + 3] * xp[3] +
                         hi[r * 4] * xp[4] + hi[r * 4 + 1] * xp[5] + hi[r * 4 + 2] * xp[6] + hi[r * 4 + 3] * xp[7];
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
        for (int r = 0; r < kRows; ++r)
          facc[i][r] += static_cast<float>(dot[i][r]) * (scale[r] * sxg) + minimum[r] * xs;
      }
    }
    for (int i = 0; i < M; ++i)
      for (int r = 0; r < kRows; ++r) y[i * n16 + (nb + b) * kRows + r] = facc[i][r];
  }
}

inline void i8b_blocks_portable(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                                int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i8b_kernel_portable<decltype(blocks)::value, decltype(rows)::value>(
        w, sw, k, q.xq + i * k, q.sx + i * groups, q.xqsum + i * groups, y + i * n16, n16, nb);
  });
}

inline void i4b_blocks_portable(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m,
                                float* y, int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  run_blocked<1>(m, nb_begin, nb_end, [&](auto blocks, auto rows, int64_t i, int64_t nb) {
    i4b_kernel_portable<decltype(blocks)::value, decltype(rows)::value>(
        w, params, k, q.xq + i * k, q.sx + i * groups, q.xsum + i * groups, y + i * n16, n16, nb);
  });
}

}  // namespace ls
