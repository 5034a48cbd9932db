// ARM NEON path (aarch64: Apple silicon, Graviton, Ampere): same layouts and activation rounding.
//
// A 16-byte register holds 4 rows x 4 inputs of a 64-byte chunk, so lanes are output rows as on x86.
// With the dot-product extension (ARMv8.2 FEAT_DotProd, chosen at run time) one sdot adds the 4
// products of each row; without it vmull_s8 + vpaddq_s16 + vpadalq_s16 do the same: each product is at
// most 127 * 127, so a pair (32258) still fits int16. int8 codes are stored + 128 and made signed with
// an xor; int4 nibbles (0..15) are already valid signed bytes.
//
// Compiled only on aarch64; tested there natively and, from x86, with a cross compiler and qemu-user
// (harness/run_neon_harness.sh), since no ARM machine is at hand.
#pragma once

#include "gemv_common.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace ls {

inline bool neon_has_dotprod() {
#if defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value != 0;
#else
  return false;
#endif
}

// vcvtnq rounds half to even, as nearbyint does; |x * 127/amax| <= 127.5, so the saturating narrows equal the clamp.
inline void quantize_x_rows_neon(const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum,
                                 float* xsum) {
  const int64_t groups = k / kXGroup;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + i * k + g * kXGroup;
      float32x4_t v[8];
      float32x4_t amaxv = vdupq_n_f32(0.f);
      for (int j = 0; j < 8; ++j) {
        v[j] = vld1q_f32(xg + 4 * j);
        amaxv = vmaxq_f32(amaxv, vabsq_f32(v[j]));
      }
      const float amax = vmaxvq_f32(amaxv);
      const float scale = amax / 127.f;
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int32x4_t q[8];
      int32x4_t qs = vdupq_n_s32(0);
      for (int j = 0; j < 8; ++j) {
        q[j] = vcvtnq_s32_f32(vmulq_n_f32(v[j], inv));
        qs = vaddq_s32(qs, q[j]);
      }
      int8_t* qg = xq + i * k + g * kXGroup;
      for (int j = 0; j < 8; j += 4) {
        const int16x8_t a = vcombine_s16(vqmovn_s32(q[j]), vqmovn_s32(q[j + 1]));
        const int16x8_t b = vcombine_s16(vqmovn_s32(q[j + 2]), vqmovn_s32(q[j + 3]));
        vst1q_s8(qg + 4 * j, vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)));
      }
      const int32_t qsum = vaddvq_s32(qs);
      sx[i * groups + g] = scale;
      xqsum[i * groups + g] = qsum;
      xsum[i * groups + g] = scale * static_cast<float>(qsum);
    }
  }
}

inline float32x4_t load_half4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

// Sum of 4 products per row (lanes = 4 rows) without the dot-product instruction.
inline int32x4_t dot4_neon(int32x4_t acc, int8x16_t w, int8x16_t x) {
  const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
  const int16x8_t hi = vmull_high_s8(w, x);
  return vpadalq_s16(acc, vpaddq_s16(lo, hi));
}

}  // namespace ls

// The kernels, twice: with the plain-NEON dot and, as functions compiled for FEAT_DotProd, with sdot
// (a target attribute, not a #pragma region: GCC does not apply the pragma to template instantiations).
#define LS_NEON_NAME(name) name##_neon
#define LS_NEON_DOT(acc, w, x) dot4_neon(acc, w, x)
#define LS_NEON_ATTR
#include "gemv_neon_kernels.inc"
#undef LS_NEON_NAME
#undef LS_NEON_DOT
#undef LS_NEON_ATTR

#define LS_NEON_NAME(name) name##_sdot
#define LS_NEON_DOT(acc, w, x) vdotq_s32(acc, w, x)
#if defined(__clang__)
#define LS_NEON_ATTR __attribute__((target("dotprod")))
#else
#define LS_NEON_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))  // what arm_neon.h asks of sdot callers
#endif
#include "gemv_neon_kernels.inc"
#undef LS_NEON_NAME
#undef LS_NEON_DOT
#undef LS_NEON_ATTR

#endif
