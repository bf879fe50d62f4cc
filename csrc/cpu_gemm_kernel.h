// No include guard: included once per instruction set.
// The packed product of cpu_gemm.h, written once and included by cpu_gemm.cpp inside one namespace per
// instruction set, after that namespace's Ops<S> (vector type V of L lanes: load, store, set1, fma, zero) and
// MR<S> (rows per register tile). A register tile holds MR rows x one panel (W columns) of C: every element of
// the panel loaded from P feeds MR fused multiply-adds.

// How far ahead of the panel row being read its later rows are prefetched (a plain load stream from L2 or L3 ran
// 1.1-1.35x slower at 2-20 rows, whose few multiply-adds per element leave the hardware prefetcher behind). Past a
// panel's end it runs into the next panel, which comes next (and past the last one, prefetches cannot fault).
constexpr int kPrefetchBytes = 4096;

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
    for (int line = 0; line < W * static_cast<int>(sizeof(S)); line += 64)
      MASKRNN_PREFETCH(reinterpret_cast<const char*>(P + kk * W) + kPrefetchBytes + line);
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

// The weight gradients' product (cpu_gemm.h, gemm_tn): a register tile of R rows x one panel of C summed over
// a block of rows, both operands packed contiguous: a (rows x R, the tile's columns of A) and d (rows x W).
template <class S, int R>
inline void tile_tn(std::int64_t rows, const S* a, const S* d, S* C, std::int64_t ldc) {
  using O = Ops<S>;
  using V = typename O::V;
  constexpr int NV = kPanel<S> / O::L;
  V c[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = O::load(C + i * ldc + v * O::L);
  for (std::int64_t r = 0; r < rows; ++r, a += R, d += kPanel<S>) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = O::load(d + v * O::L);
    for (int i = 0; i < R; ++i) {
      const V s = O::set1(a[i]);
      for (int v = 0; v < NV; ++v) c[i][v] = O::fma(s, b[v], c[i][v]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) O::store(C + i * ldc + v * O::L, c[i][v]);
}

template <class S, int R>
inline void rest_tn(int r, std::int64_t rows, const S* a, const S* d, S* C, std::int64_t ldc) {
  if (r == R) return tile_tn<S, R>(rows, a, d, C, ldc);
  if constexpr (R > 1) rest_tn<S, R - 1>(r, rows, a, d, C, ldc);
}

// C (m x n, row stride ldc) = sum over the rows of A^T D: A = [A1 | A2] (rows x (m1 + m2), the LSTM's x and
// h_{t-1} side by side without a copy), D (rows x n), each with unit column stride; row r of each at idx[r]
// (all rows in order when idx is null). Blocks of KC rows: the block's A is packed once, tile by tile (a
// tile's R columns of a row adjacent; 390 KiB at m = 385: stays in L2 across the panels), and each panel's W
// columns of D (32 KiB: stays in L1 across the tiles) before its tiles run. Read in place, the rows of D (often
// 4 KiB apart) fell into the same few L1 sets and were fetched again every tile. C is summed in place (1.5 MiB
// at 385 x 1024, in L2).
template <class S>
void gemm_tn(std::int64_t rows, std::int64_t m1, std::int64_t m2, std::int64_t n, const std::int64_t* idx,
             const S* A1, std::int64_t lda1, const S* A2, std::int64_t lda2, const S* D, std::int64_t ldd, S* C,
             std::int64_t ldc) {
  constexpr int W = kPanel<S>, R = MR<S>;
  constexpr std::int64_t KC = 256;
  const std::int64_t m = m1 + m2, full = n / W, cols = n - full * W;  // whole panels; the last one's columns
  std::vector<S> a(static_cast<std::size_t>(KC * m)), d(static_cast<std::size_t>(KC * W)), row(m);
  std::vector<S> tail(static_cast<std::size_t>(cols ? m * W : 0));  // the last panel's sums (would pass C's rows)
  std::vector<std::int64_t> at(KC);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) C[i * ldc + j] = S(0);
  for (std::int64_t r0 = 0; r0 < rows; r0 += KC) {
    const std::int64_t kc = rows - r0 < KC ? rows - r0 : KC;
    for (std::int64_t r = 0; r < kc; ++r) {
      at[r] = idx ? idx[r0 + r] : r0 + r;
      const S* a1 = A1 + at[r] * lda1;
      const S* a2 = A2 + at[r] * lda2;
      for (std::int64_t i = 0; i < m1; ++i) row[i] = a1[i];
      for (std::int64_t i = 0; i < m2; ++i) row[m1 + i] = a2[i];
      std::int64_t i0 = 0;  // tile i0's columns at a[i0 * kc + r * w + i]
      for (; i0 + R <= m; i0 += R)
        for (int i = 0; i < R; ++i) a[i0 * kc + r * R + i] = row[i0 + i];
      for (std::int64_t i = i0; i < m; ++i) a[i0 * kc + r * (m - i0) + i - i0] = row[i];
    }
    for (std::int64_t p = 0; p * W < n; ++p) {
      const std::int64_t w = p < full ? W : cols;
      for (std::int64_t r = 0; r < kc; ++r) {
        const S* src = D + at[r] * ldd + p * W;
        S* dst = d.data() + r * W;
        for (std::int64_t j = 0; j < w; ++j) dst[j] = src[j];
        for (std::int64_t j = w; j < W; ++j) dst[j] = S(0);
      }
      S* c = p < full ? C + p * W : tail.data();
      const std::int64_t ld = p < full ? ldc : W;
      std::int64_t i0 = 0;
      for (; i0 + R <= m; i0 += R) tile_tn<S, R>(kc, a.data() + i0 * kc, d.data(), c + i0 * ld, ld);
      if constexpr (R > 1) {
        if (i0 < m) rest_tn<S, R - 1>(static_cast<int>(m - i0), kc, a.data() + i0 * kc, d.data(), c + i0 * ld, ld);
      }
    }
  }
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < cols; ++j) C[i * ldc + full * W + j] = tail[i * W + j];
}

void gemm_tn_f32(std::int64_t rows, std::int64_t m1, std::int64_t m2, std::int64_t n, const std::int64_t* idx,
                 const float* A1, std::int64_t lda1, const float* A2, std::int64_t lda2, const float* D,
                 std::int64_t ldd, float* C, std::int64_t ldc) {
  gemm_tn<float>(rows, m1, m2, n, idx, A1, lda1, A2, lda2, D, ldd, C, ldc);
}

void gemm_tn_f64(std::int64_t rows, std::int64_t m1, std::int64_t m2, std::int64_t n, const std::int64_t* idx,
                 const double* A1, std::int64_t lda1, const double* A2, std::int64_t lda2, const double* D,
                 std::int64_t ldd, double* C, std::int64_t ldc) {
  gemm_tn<double>(rows, m1, m2, n, idx, A1, lda1, A2, lda2, D, ldd, C, ldc);
}
