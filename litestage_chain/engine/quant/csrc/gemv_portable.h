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
