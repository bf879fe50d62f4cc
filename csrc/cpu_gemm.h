#pragma once
// The CPU engine's per-step product (maskrnn/_cpu/gemm.py calls it from inside the Numba kernels through the
// addresses below): C (m x n, row stride ldc) = A (m x k, row stride lda) @ B, with B packed once per kernel call
// into panels of W columns, P[n_panels][k][W] (W = 128 bytes of scalars: 32 float, 16 double), the last panel
// zero-padded. gemm_tn: the backward's weight gradients, C (m x n) = sum over rows of A^T D, rows of A and D read
// in place (cpu_gemm_kernel.h). One thread; the caller splits the work.
#include <cstdint>
#include <string>

namespace maskrnn {

struct CpuGemm {
  std::string level;  // "avx512", "avx2" or "portable"
  std::uintptr_t gemm_f32, gemm_f64, pack_f32, pack_f64, gemm_tn_f32, gemm_tn_f64;
};

// level "auto": the best this CPU runs; else that level, or level "" when this build or CPU cannot run it.
CpuGemm cpu_gemm(const std::string& level);

}  // namespace maskrnn
