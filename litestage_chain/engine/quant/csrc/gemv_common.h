// Torch-free parts of the low-bit GEMV kernels: layouts, the int8 activation rounding, the scalar
// reference kernels and the row/block chunking every SIMD path shares.
//
// Why a separate header: the same code is compiled into the torch extension (cpu_gemv.cpp) and
// into a standalone harness (harness/gemv_harness.cpp) that checks the SIMD paths of another
// architecture (ARM NEON) under a cross compiler and user-mode emulation, where torch is absent.
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
// Codes of the int8 layout are clamped to [-127, 127] by the converter (formats.py), so a code
// never has the value -128: the AVX2 and NEON paths rely on that (their sign/abs tricks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ls {

constexpr int64_t kXGroup = 32;  // inputs per activation (and weight) scale group
constexpr int64_t kRows = 16;    // output rows per weight block

// IEEE half -> float, exact for every half (normals, subnormals, inf, nan); used where no F16C/NEON
// conversion instruction is at hand, once per group, so its cost does not matter.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The quantised activation rows every kernel reads (views of caller-owned buffers).
struct XQuant {
  const int8_t* xq;
  const float* sx;
  const int32_t* xqsum;
  const float* xsum;
};

// The reference rounding: scale amax/127, q = round-half-even(x * 127/amax), clamped to +-127.
// Every SIMD version must give exactly these bytes (formats.round_activations_like_kernel mirrors it).
inline void quantize_x_rows_ref(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum,
                                float* xsum) {
  const int64_t groups = k / kXGroup;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + i * k + g * kXGroup;
      float amax = 0.f;
      for (int64_t j = 0; j < kXGroup; ++j) amax = std::max(amax, std::abs(xg[j]));
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

// Element-by-element references for the blocked layouts: the definition the fast paths are tested against
// (the standalone harness); not used for speed.
inline void i8b_blocks_ref(const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                           int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = w + nb * kRows * k;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < kRows; ++r) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          int32_t dot = 0;
          for (int64_t j = g * kXGroup; j < (g + 1) * kXGroup; ++j)
            dot += (static_cast<int32_t>(wb[(j / 4) * 64 + r * 4 + (j % 4)]) - 128) * q.xq[i * k + j];
          acc += static_cast<float>(dot) * q.sx[i * groups + g] * half_to_float(sw[(nb * groups + g) * kRows + r]);
        }
        y[i * n16 + nb * kRows + r] = acc;
      }
    }
  }
}

inline void i4b_blocks_ref(const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m, float* y,
                           int64_t n16, int64_t nb_begin, int64_t nb_end) {
  const int64_t groups = k / kXGroup;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = w + nb * 8 * k;  // 16 rows * k / 2 bytes
    const uint16_t* pb = params + nb * groups * 32;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < kRows; ++r) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          int32_t dot = 0;
          for (int64_t j = g * kXGroup; j < (g + 1) * kXGroup; ++j) {
            const uint8_t byte = wb[(j / 8) * 64 + r * 4 + (j % 4)];
            const int32_t code = (j % 8) < 4 ? (byte & 0xF) : (byte >> 4);
            dot += code * q.xq[i * k + j];
          }
          const float scale = half_to_float(pb[g * 32 + r]);
          const float minimum = half_to_float(pb[g * 32 + 16 + r]);
          acc += scale * q.sx[i * groups + g] * static_cast<float>(dot) + minimum * q.xsum[i * groups + g];
        }
        y[i * n16 + nb * kRows + r] = acc;
      }
    }
  }
}

template <int N>
using Const = std::integral_constant<int, N>;

// Runs blocks [nb_begin, nb_end) for all m rows. Reading and unpacking a weight block costs more than multiplying
// it into one more x row, so every block is read once per chunk of up to 8 rows: m = 8 costs about one pass over the
// weights, not two (chunks of 4) or three (m = 7 as 4 + 2 + 1). A single row takes up to MaxB (4) blocks at a time
// instead, to keep enough independent accumulators (paths with fewer vector registers ask for fewer).
// `launch(B, M, i, nb)` runs kernel<B, M> on rows i.. and blocks nb... Every row's sums are accumulated in the same
// order whatever the chunking, so a row's result does not depend on the rows batched with it.
template <int MaxB = 4, typename Launch>
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
      if (MaxB >= 4)
        for (; nb + 4 <= nb_end; nb += 4) launch(Const<(MaxB >= 4 ? 4 : 1)>{}, Const<1>{}, i, nb);
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

}  // namespace ls
