// Which kernel path runs on this CPU, chosen once at run time, and a way to force any path the CPU can run
// (tests compare every path against the reference on one machine: AVX2 also runs on AVX-512 hosts).
#pragma once

#include <string>
#include <vector>

#include "gemv_avx2.h"
#include "gemv_avx512.h"
#include "gemv_common.h"
#include "gemv_neon.h"
#include "gemv_portable.h"

namespace ls {

enum class Isa { Portable, Avx2, Avx512Vnni, Neon };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx2: return "avx2";
    case Isa::Neon: return "neon";
    default: return "portable";
  }
}

// Fastest first.
inline const std::vector<Isa>& supported_isas() {
  static const std::vector<Isa> isas = [] {
    std::vector<Isa> out;
#if defined(__x86_64__) || defined(_M_X64)
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
      out.push_back(Isa::Avx512Vnni);
    if (avx2) out.push_back(Isa::Avx2);
#elif defined(__aarch64__)
    out.push_back(Isa::Neon);  // NEON is part of the aarch64 baseline; sdot is checked per call site
#endif
    out.push_back(Isa::Portable);
    return out;
  }();
  return isas;
}

inline Isa& forced_isa_slot() {
  static Isa forced = supported_isas().front();
  return forced;
}

// The path every call takes (the fastest supported one unless a test forced another).
inline Isa active_isa() { return forced_isa_slot(); }

// Routes every later call through `name` ("" = the fastest); false if the name is unknown or the CPU cannot run it.
inline bool force_isa(const std::string& name) {
  for (Isa isa : supported_isas()) {
    if (name.empty() ? isa == supported_isas().front() : name == isa_name(isa)) {
      forced_isa_slot() = isa;
      return true;
    }
  }
  return false;
}

#if defined(__aarch64__)
inline bool neon_dot_available() {
  static const bool ok = neon_has_dotprod();
  return ok;
}
#endif

inline void quantize_x_rows(Isa isa, const float* x, int64_t m, int64_t k, int8_t* xq, float* sx, int32_t* xqsum,
                            float* xsum) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512Vnni) return quantize_x_rows_avx512(x, m, k, xq, sx, xqsum, xsum);
  if (isa == Isa::Avx2) return quantize_x_rows_avx2(x, m, k, xq, sx, xqsum, xsum);
#elif defined(__aarch64__)
  if (isa == Isa::Neon) return quantize_x_rows_neon(x, m, k, xq, sx, xqsum, xsum);
#endif
  quantize_x_rows_ref(x, m, k, xq, sx, xqsum, xsum);
}

inline void i8b_blocks(Isa isa, const uint8_t* w, const uint16_t* sw, int64_t k, const XQuant& q, int64_t m, float* y,
                       int64_t n16, int64_t nb_begin, int64_t nb_end) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512Vnni) return i8b_blocks_vnni(w, sw, k, q, m, y, n16, nb_begin, nb_end);
  if (isa == Isa::Avx2) return i8b_blocks_avx2(w, sw, k, q, m, y, n16, nb_begin, nb_end);
#elif defined(__aarch64__)
  if (isa == Isa::Neon) {
    if (neon_dot_available()) return i8b_blocks_sdot(w, sw, k, q, m, y, n16, nb_begin, nb_end);
    return i8b_blocks_neon(w, sw, k, q, m, y, n16, nb_begin, nb_end);
  }
#endif
  i8b_blocks_portable(w, sw, k, q, m, y, n16, nb_begin, nb_end);
}

inline void i4b_blocks(Isa isa, const uint8_t* w, const uint16_t* params, int64_t k, const XQuant& q, int64_t m,
                       float* y, int64_t n16, int64_t nb_begin, int64_t nb_end) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512Vnni) return i4b_blocks_vnni(w, params, k, q, m, y, n16, nb_begin, nb_end);
  if (isa == Isa::Avx2) return i4b_blocks_avx2(w, params, k, q, m, y, n16, nb_begin, nb_end);
#elif defined(__aarch64__)
  if (isa == Isa::Neon) {
    if (neon_dot_available()) return i4b_blocks_sdot(w, params, k, q, m, y, n16, nb_begin, nb_end);
    return i4b_blocks_neon(w, params, k, q, m, y, n16, nb_begin, nb_end);
  }
#endif
  i4b_blocks_portable(w, params, k, q, m, y, n16, nb_begin, nb_end);
}

}  // namespace ls
