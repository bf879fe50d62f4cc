// The CPU engine's per-step product (cpu_gemm.h): cpu_gemm_kernel.h compiled once per instruction set, chosen
// at run time. Numba calls it from the scan kernels: OpenBLAS repacked the recurrent weights on every step's
// call and ran the skinny per-step shapes at about half this machine's peak.
#include "cpu_gemm.h"

#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MASKRNN_X86 1
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MASKRNN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define MASKRNN_PREFETCH(p) ((void)(p))
#endif

namespace maskrnn {
namespace {

template <class S>
constexpr int kPanel = 128 / sizeof(S);  // columns per panel: 2 AVX-512 or 4 AVX2 registers

// Packs B (k x n, element (i, j) at B[i * rs + j * cs]: U or, without a copy, its transpose) into panels.
template <class S>
void pack(std::int64_t k, std::int64_t n, const S* B, std::int64_t rs, std::int64_t cs, S* P) {
  constexpr int W = kPanel<S>;
  for (std::int64_t p = 0; p * W < n; ++p) {
    const std::int64_t w = n - p * W < W ? n - p * W : W;
    for (std::int64_t i = 0; i < k; ++i) {
      S* dst = P + (p * k + i) * W;
      const S* src = B + i * rs + p * W * cs;
      if (cs == 1) {
        for (std::int64_t j = 0; j < w; ++j) dst[j] = src[j];
      } else {
        for (std::int64_t j = 0; j < w; ++j) dst[j] = src[j * cs];
      }
      for (std::int64_t j = w; j < W; ++j) dst[j] = S(0);
    }
  }
}

void pack_f32(std::int64_t k, std::int64_t n, const float* B, std::int64_t rs, std::int64_t cs, float* P) {
  pack<float>(k, n, B, rs, cs, P);
}

void pack_f64(std::int64_t k, std::int64_t n, const double* B, std::int64_t rs, std::int64_t cs, double* P) {
  pack<double>(k, n, B, rs, cs, P);
}

namespace portable {
template <class S>
struct Ops {
  using V = S;
  static constexpr int L = 1;
  static V load(const S* p) { return *p; }
  static void store(S* p, V v) { *p = v; }
  static V set1(S a) { return a; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V zero() { return S(0); }
};
template <class S>
constexpr int MR = 1;
#include "cpu_gemm_kernel.h"
}  // namespace portable

#ifdef MASKRNN_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
template <class S>
struct Ops;
template <>
struct Ops<float> {
  using V = __m256;
  static constexpr int L = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V zero() { return _mm256_setzero_ps(); }
};
template <>
struct Ops<double> {
  using V = __m256d;
  static constexpr int L = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double a) { return _mm256_set1_pd(a); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V zero() { return _mm256_setzero_pd(); }
};
template <class S>
constexpr int MR = 3;  // 3 x 4 accumulators + 4 panel registers of the 16
#include "cpu_gemm_kernel.h"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
namespace avx512 {
template <class S>
struct Ops;
template <>
struct Ops<float> {
  using V = __m512;
  static constexpr int L = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V zero() { return _mm512_setzero_ps(); }
};
template <>
struct Ops<double> {
  using V = __m512d;
  static constexpr int L = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double a) { return _mm512_set1_pd(a); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V zero() { return _mm512_setzero_pd(); }
};
template <class S>
constexpr int MR = 8;  // 8 x 2 accumulators of the 32 registers
#include "cpu_gemm_kernel.h"
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // MASKRNN_X86

template <class F>
std::uintptr_t address(F* f) {
  return reinterpret_cast<std::uintptr_t>(f);
}

CpuGemm level_of(const char* name, decltype(&portable::gemm_f32) f32, decltype(&portable::gemm_f64) f64,
                 decltype(&portable::gemm_tn_f32) tn32, decltype(&portable::gemm_tn_f64) tn64) {
  return {name, address(f32), address(f64), address(&pack_f32), address(&pack_f64), address(tn32), address(tn64)};
}

}  // namespace

CpuGemm cpu_gemm(const std::string& level) {
#ifdef MASKRNN_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") &&
                                                                __builtin_cpu_supports("fma");
  if ((level == "auto" || level == "avx512") && avx512) {
    return level_of("avx512", avx512::gemm_f32, avx512::gemm_f64, avx512::gemm_tn_f32, avx512::gemm_tn_f64);
  }
  if ((level == "auto" || level == "avx2") && avx2) {
    return level_of("avx2", avx2::gemm_f32, avx2::gemm_f64, avx2::gemm_tn_f32, avx2::gemm_tn_f64);
  }
#endif
  if (level == "auto" || level == "portable") {
    return level_of("portable", portable::gemm_f32, portable::gemm_f64, portable::gemm_tn_f32, portable::gemm_tn_f64);
  }
  return {"", 0, 0, 0, 0, 0, 0};
}

}  // namespace maskrnn
