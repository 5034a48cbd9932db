// Standalone (torch-free) check of every kernel path this CPU can run against the element-by-element reference.
//
// Why: the NEON path cannot run on the x86 machines the tests usually run on; this program builds with any
// C++17 compiler, so it is cross-compiled for aarch64 and run under qemu-user (run_neon_harness.sh), and on
// x86 it checks the same paths the torch tests check. Exit status 0 = all paths agree.
//
//   g++ -std=c++17 -O2 -I.. gemv_harness.cpp -o harness && ./harness
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../gemv_dispatch.h"

namespace {

using namespace ls;

uint16_t float_to_half_bits(float f) {  // round-to-nearest for normal-range values, enough for test scales
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t e = static_cast<int32_t>((b >> 23) & 0xFF) - 127 + 15;
  if (e <= 0) return static_cast<uint16_t>(sign);
  uint32_t mant = (b >> 13) & 0x3FFu;
  if (b & 0x1000u) ++mant;  // round half up is fine here
  uint32_t h = (static_cast<uint32_t>(e) << 10) + mant;
  return static_cast<uint16_t>(sign | h);
}

struct Case {
  int64_t m, n16, k;
};

using Blocks = void (*)(const uint8_t*, const uint16_t*, int64_t, const XQuant&, int64_t, float*, int64_t, int64_t,
                        int64_t);
using Quantize = void (*)(const float*, int64_t, int64_t, int8_t*, float*, int32_t*, float*);

struct Path {
  std::string name;
  Quantize quantize;
  Blocks i8b, i4b;
};

std::vector<Path> paths() {
  std::vector<Path> out;
  out.push_back({"portable", quantize_x_rows_ref, i8b_blocks_portable, i4b_blocks_portable});
#if defined(__SSE2__)
  // on x86-64 "portable" runs the SSE2 kernels: check the plain C++ ones (what other CPUs run) as well
  out.push_back({"portable_generic", quantize_x_rows_ref, i8b_blocks_generic, i4b_blocks_generic});
#endif
#if defined(__x86_64__) || defined(_M_X64)
  for (Isa isa : supported_isas()) {
    if (isa == Isa::Avx2) out.push_back({"avx2", quantize_x_rows_avx2, i8b_blocks_avx2, i4b_blocks_avx2});
    if (isa == Isa::Avx512Vnni)
      out.push_back({"avx512_vnni", quantize_x_rows_avx512, i8b_blocks_vnni, i4b_blocks_vnni});
  }
#elif defined(__aarch64__)
  out.push_back({"neon", quantize_x_rows_neon, i8b_blocks_neon, i4b_blocks_neon});
  if (neon_has_dotprod()) out.push_back({"neon_dotprod", quantize_x_rows_neon, i8b_blocks_sdot, i4b_blocks_sdot});
  else std::printf("note: this CPU has no FEAT_DotProd; the sdot variant is not run\n");
#endif
  return out;
}

struct Quantised {
  std::vector<int8_t> xq;
  std::vector<float> sx, xsum;
  std::vector<int32_t> xqsum;
  XQuant view() const { return {xq.data(), sx.data(), xqsum.data(), xsum.data()}; }
};

Quantised quantise(Quantize f, const std::vector<float>& x, int64_t m, int64_t k) {
  Quantised q;
  const int64_t groups = m * k / kXGroup;
  q.xq.resize(m * k);
  q.sx.resize(groups);
  q.xsum.resize(groups);
  q.xqsum.resize(groups);
  f(x.data(), m, k, q.xq.data(), q.sx.data(), q.xqsum.data(), q.xsum.data());
  return q;
}

bool close(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  double worst = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  if (worst > 1e-5 * scale) {
    std::printf("  FAIL %s: max abs diff %.3g (max |ref| %.3g)\n", what, worst, scale);
    return false;
  }
  return true;
}

}  // namespace

// CPU time of this thread: on a shared machine wall time mostly measures the other processes.
double cpu_us() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

// Median CPU microseconds per call of each path on one [n16 x k] GEMV with one activation row (decode), one thread.
int bench(int64_t n16, int64_t k, int reps) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  const int64_t nblocks = n16 / kRows, groups = k / kXGroup;
  std::vector<float> x(k);
  for (float& v : x) v = static_cast<float>(byte(rng) - 128) / 64.f;
  std::vector<uint8_t> w8(n16 * k), w4(n16 * k / 2);
  for (uint8_t& v : w8) v = static_cast<uint8_t>(std::max(1, byte(rng)));
  for (uint8_t& v : w4) v = static_cast<uint8_t>(byte(rng));
  std::vector<uint16_t> s8(nblocks * groups * kRows, 0x2000), p4(nblocks * groups * 2 * kRows, 0x2000);
  std::vector<float> y(n16);
  for (const Path& p : paths()) {
    const Quantised q = quantise(p.quantize, x, 1, k);
    for (int fmt = 0; fmt < 2; ++fmt) {
      std::vector<double> times;
      for (int r = 0; r < reps; ++r) {
        const double start = cpu_us();
        if (fmt == 0) p.i8b(w8.data(), s8.data(), k, q.view(), 1, y.data(), n16, 0, nblocks);
        else p.i4b(w4.data(), p4.data(), k, q.view(), 1, y.data(), n16, 0, nblocks);
        times.push_back(cpu_us() - start);
      }
      std::sort(times.begin(), times.end());
      std::printf("%-14s %s %lldx%lld: %9.1f us (median of %d)\n", p.name.c_str(), fmt == 0 ? "int8" : "int4",
                  (long long)n16, (long long)k, times[times.size() / 2], reps);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--bench") {
    const int64_t n16 = argc > 2 ? std::atoll(argv[2]) : 8960, k = argc > 3 ? std::atoll(argv[3]) : 1536;
    return bench(n16, k, argc > 4 ? std::atoi(argv[4]) : 21);
  }
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> code8(-127, 127), code4(0, 15), byte(0, 255);
  const std::vector<Case> cases = {{1, 16, 32}, {1, 48, 64}, {1, 128, 256}, {2, 32, 96}, {3, 16, 64}, {5, 64, 128},
                                   {7, 32, 32}, {8, 48, 96}, {9, 32, 64}, {16, 16, 128}, {21, 80, 160}};
  const std::vector<Path> all = paths();
  int failures = 0;
  for (const Case& c : cases) {
    const int64_t nblocks = c.n16 / kRows, groups = c.k / kXGroup;
    std::vector<float> x(c.m * c.k);
    for (float& v : x) v = normal(rng);
    // amax 127 makes the step 1: an exact zero and two half-way values check round-half-to-even
    x[0] = 127.f;
    x[1] = 2.5f;
    x[2] = -3.5f;
    x[3] = 0.f;
    std::vector<uint8_t> w8(nblocks * c.k * kRows), w4(nblocks * c.k * kRows / 2);
    for (uint8_t& v : w8) v = static_cast<uint8_t>(code8(rng) + 128);
    for (uint8_t& v : w4) v = static_cast<uint8_t>(byte(rng));
    std::vector<uint16_t> s8(nblocks * groups * kRows), p4(nblocks * groups * 2 * kRows);
    for (uint16_t& v : s8) v = float_to_half_bits(0.01f + 0.02f * std::abs(normal(rng)));
    for (size_t i = 0; i < p4.size(); ++i)
      p4[i] = float_to_half_bits((i / kRows) % 2 == 0 ? 0.01f + 0.02f * std::abs(normal(rng)) : -0.1f * std::abs(normal(rng)));
    const Quantised ref_q = quantise(quantize_x_rows_ref, x, c.m, c.k);
    std::vector<float> ref8(c.m * c.n16), ref4(c.m * c.n16);
    i8b_blocks_ref(w8.data(), s8.data(), c.k, ref_q.view(), c.m, ref8.data(), c.n16, 0, nblocks);
    i4b_blocks_ref(w4.data(), p4.data(), c.k, ref_q.view(), c.m, ref4.data(), c.n16, 0, nblocks);
    std::vector<std::vector<float>> outputs;  // per path: int8 then int4 results
    for (const Path& p : all) {
      char what[160];
      const Quantised q = quantise(p.quantize, x, c.m, c.k);
      if (q.xq != ref_q.xq || q.xqsum != ref_q.xqsum || q.sx != ref_q.sx) {
        std::printf("  FAIL %s m=%lld k=%lld: activation rounding differs from the reference\n", p.name.c_str(),
                    (long long)c.m, (long long)c.k);
        ++failures;
      }
      std::vector<float> y8(c.m * c.n16), y4(c.m * c.n16);
      p.i8b(w8.data(), s8.data(), c.k, ref_q.view(), c.m, y8.data(), c.n16, 0, nblocks);
      p.i4b(w4.data(), p4.data(), c.k, ref_q.view(), c.m, y4.data(), c.n16, 0, nblocks);
      std::snprintf(what, sizeof what, "%s int8 m=%lld n16=%lld k=%lld", p.name.c_str(), (long long)c.m,
                    (long long)c.n16, (long long)c.k);
      failures += !close(y8, ref8, what);
      std::snprintf(what, sizeof what, "%s int4 m=%lld n16=%lld k=%lld", p.name.c_str(), (long long)c.m,
                    (long long)c.n16, (long long)c.k);
      failures += !close(y4, ref4, what);
      y8.insert(y8.end(), y4.begin(), y4.end());
      outputs.push_back(std::move(y8));
    }
    // The portable path's SIMD kernels promise the plain C++ kernels' bits, not only closeness to the reference.
    for (size_t a = 0; a < all.size(); ++a)
      for (size_t b = 0; b < all.size(); ++b)
        if (all[a].name == "portable" && all[b].name == "portable_generic" &&
            std::memcmp(outputs[a].data(), outputs[b].data(), outputs[a].size() * sizeof(float)) != 0) {
          std::printf("  FAIL portable vs portable_generic m=%lld k=%lld: not the same bits\n", (long long)c.m,
                      (long long)c.k);
          ++failures;
        }
  }
  std::printf("paths checked:");
  for (const Path& p : all) std::printf(" %s", p.name.c_str());
  std::printf("\n%s: %d failure(s) over %zu cases\n", failures ? "FAILED" : "OK", failures, cases.size());
  return failures ? 1 : 0;
}
