// No include guard: included once per instruction set.
// The packed product of cpu_gemm.h, written once and included by cpu_gemm.cpp inside one namespace per
// instruction set, after that namespace's Ops<S> (vector type V of L lanes: load, store, set1, fma, zero) and
// MR<S> (rows per register tile). A register tile holds MR rows x one panel (W columns) of C: every element of
// the panel loaded from P feeds MR fused multiply-adds.

template <class S, int R>
inline void tile(std::int64_t k, const S* A, std::int64_t lda, const S* P, S* C, std::int64_t ldc, std::int64_t cols) {
  using O = Ops<S>;
  using V = typename O::V;
  constexpr int W = kPanel<S>, NV = W / O::L;
  V c[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = O::zero();
  for (std::int64_t kk = 0; kk < k; ++kk) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = O::load(P + kk * W + v * O::L);
    for (int i = 0; i < R; ++i) {
      const V a = O::set1(A[i * lda + kk]);
      for (int v = 0; v < NV; ++v) c[i][v] = O::fma(a, b[v], c[i][v]);
    }
  }
  if (cols == W) {
    for (int i = 0; i < R; ++i)
      for (int v = 0; v < NV; ++v) O::store(C + i * ldc + v * O::L, c[i][v]);
    return;
  }
  // The last panel, zero-padded past column n: only its real columns are written.
  alignas(64) S row[W];
  for (int i = 0; i < R; ++i) {
    for (int v = 0; v < NV; ++v) O::store(row + v * O::L, c[i][v]);
    for (std::int64_t j = 0; j < cols; ++j) C[i * ldc + j] = row[j];
  }
}

// The last m % MR rows: one tile of exactly that many.
template <class S, int R>
inline void rest(int r, std::int64_t k, const S* A, std::int64_t lda, const S* P, S* C, std::int64_t ldc,
                 std::int64_t cols) {
  if (r == R) return tile<S, R>(k, A, lda, P, C, ldc, cols);
  if constexpr (R > 1) rest<S, R - 1>(r, k, A, lda, P, C, ldc, cols);
}

template <class S>
void gemm(std::int64_t m, std::int64_t k, std::int64_t n, const S* A, std::int64_t lda, const S* P, S* C,
          std::int64_t ldc) {
  constexpr int W = kPanel<S>, R = MR<S>;
  // Panel by panel: one panel of P (k x W, 32 KiB at k = 256) stays in L1 while every row block passes over it.
  for (std::int64_t p = 0; p * W < n; ++p) {
    const S* Pp = P + p * k * W;
    const std::int64_t cols = n - p * W < W ? n - p * W : W;
    std::int64_t r = 0;
    for (; r + R <= m; r += R) tile<S, R>(k, A + r * lda, lda, Pp, C + r * ldc + p * W, ldc, cols);
    if constexpr (R > 1) {
      if (r < m) rest<S, R - 1>(static_cast<int>(m - r), k, A + r * lda, lda, Pp, C + r * ldc + p * W, ldc, cols);
    }
  }
}

// Plain functions with C-compatible arguments: Numba calls them through their addresses (cpu_gemm.h).
void gemm_f32(std::int64_t m, std::int64_t k, std::int64_t n, const float* A, std::int64_t lda, const float* P,
              float* C, std::int64_t ldc) {
  gemm<float>(m, k, n, A, lda, P, C, ldc);
}

void gemm_f64(std::int64_t m, std::int64_t k, std::int64_t n, const double* A, std::int64_t lda, const double* P,
              double* C, std::int64_t ldc) {
  gemm<double>(m, k, n, A, lda, P, C, ldc);
}
