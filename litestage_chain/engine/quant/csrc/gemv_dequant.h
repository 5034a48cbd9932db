// Blocked low-bit weights back to a plain float32 [n, k_in] matrix, for ATen's GEMM.
//
// Why: on the portable path (no SIMD kernel) a call with many rows (prefill) is faster as
// dequantise-then-float32-GEMM than through the kernel, which is compute-bound and pays per row.
// Dequantising with torch ops takes several passes over float32-sized temporaries (about ten times
// this loop's time), which would eat most of the gain. The values are exactly those of
// formats.py's dequantize(): int8 scale * (code - 128), int4 (scale * code) + min, each product and
// sum rounded to float32 on its own (no fused multiply-add, which would round once).
#pragma once

#include "gemv_common.h"

namespace ls {

// Rows [nb_begin * 16, nb_end * 16) of the matrix (those < n), inputs < k_in, into out: row-major, k_in floats a row,
// its first row being row `row0` of the matrix (so a caller can fill a tile of rows or the whole matrix). Per group
// of 32 inputs the block's codes are converted in their stored order (64 contiguous lanes per chunk: a loop any
// vectoriser handles, with a per-lane scale), then each row's 32 values are copied out in 4- (int8) or 8-input runs.
inline void i8b_dequantize_blocks(const uint8_t* w, const uint16_t* sw, int64_t k, int64_t n, int64_t k_in,
                                  float* out, int64_t row0, int64_t nb_begin, int64_t nb_end) {
  constexpr int kChunks = kXGroup / 4;  // 64-byte chunks per group: 16 rows x 4 inputs each
  const int64_t groups = k / kXGroup;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const int64_t rows = std::min<int64_t>(kRows, n - nb * kRows);
    for (int64_t g = 0; g < groups && g * kXGroup < k_in; ++g) {
      float s[kRows], lane_scale[64];
      for (int r = 0; r < kRows; ++r) s[r] = half_to_float(sw[(nb * groups + g) * kRows + r]);
      for (int j = 0; j < 64; ++j) lane_scale[j] = s[j / 4];
      float v[kChunks][64];
      const uint8_t* c = w + (nb * (k / 4) + g * kChunks) * 64;
      for (int t = 0; t < kChunks; ++t)
        for (int j = 0; j < 64; ++j) v[t][j] = static_cast<float>(static_cast<int32_t>(c[t * 64 + j]) - 128) * lane_scale[j];
      const int64_t inputs = std::min<int64_t>(kXGroup, k_in - g * kXGroup);
      for (int64_t r = 0; r < rows; ++r) {
        float row[kXGroup];
        for (int t = 0; t < kChunks; ++t) std::memcpy(row + t * 4, &v[t][r * 4], 4 * sizeof(float));
        std::memcpy(out + (nb * kRows + r - row0) * k_in + g * kXGroup, row, static_cast<size_t>(inputs) * sizeof(float));
      }
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#define LS_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define LS_NO_FP_CONTRACT  // clang contracts only within one expression: the product and the sum stay apart
#endif

LS_NO_FP_CONTRACT inline void i4b_dequantize_blocks(const uint8_t* w, const uint16_t* params, int64_t k, int64_t n,
                                                    int64_t k_in, float* out, int64_t row0, int64_t nb_begin,
                                                    int64_t nb_end) {
  constexpr int kChunks = kXGroup / 8;  // 64-byte chunks per group: 16 rows x 8 inputs (two nibbles a byte)
  const int64_t groups = k / kXGroup;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const int64_t rows = std::min<int64_t>(kRows, n - nb * kRows);
    for (int64_t g = 0; g < groups && g * kXGroup < k_in; ++g) {
      const uint16_t* pg = params + (nb * groups + g) * 2 * kRows;
      float scale[kRows], minimum[kRows], lane_scale[64], lane_min[64];
      for (int r = 0; r < kRows; ++r) {
        scale[r] = half_to_float(pg[r]);
        minimum[r] = half_to_float(pg[kRows + r]);
      }
      for (int j = 0; j < 64; ++j) {
        lane_scale[j] = scale[j / 4];
        lane_min[j] = minimum[j / 4];
      }
      float lo[kChunks][64], hi[kChunks][64];
      const uint8_t* c = w + (nb * (k / 8) + g * kChunks) * 64;
      for (int t = 0; t < kChunks; ++t) {
        for (int j = 0; j < 64; ++j) {
          lo[t][j] = static_cast<float>(c[t * 64 + j] & 0xF) * lane_scale[j];
          hi[t][j] = static_cast<float>(c[t * 64 + j] >> 4) * lane_scale[j];
        }
        for (int j = 0; j < 64; ++j) {
          lo[t][j] = lo[t][j] + lane_min[j];
          hi[t][j] = hi[t][j] + lane_min[j];
        }
      }
      const int64_t inputs = std::min<int64_t>(kXGroup, k_in - g * kXGroup);
      for (int64_t r = 0; r < rows; ++r) {
        float row[kXGroup];
        for (int t = 0; t < kChunks; ++t) {
          std::memcpy(row + t * 8, &lo[t][r * 4], 4 * sizeof(float));
          std::memcpy(row + t * 8 + 4, &hi[t][r * 4], 4 * sizeof(float));
        }
        std::memcpy(out + (nb * kRows + r - row0) * k_in + g * kXGroup, row, static_cast<size_t>(inputs) * sizeof(float));
      }
    }
  }
}

#undef LS_NO_FP_CONTRACT

}  // namespace ls
