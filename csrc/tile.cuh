#pragma once
// The per-step product shared by every scan kernel: a block of BM rows x BN units accumulates, for each of G
// column groups, sum_k A[row, k] * B(k, g*H + unit) through shared-memory tiles, in the accumulation type.
#include <cstdint>

#include "cell_math.cuh"
#include "check.h"
#include "scan.h"

namespace maskrnn {

constexpr int BM = 8;   // rows per block (threadIdx.y)
constexpr int BN = 32;  // units per block (threadIdx.x)
constexpr int BK = 32;  // reduction tile

// B(k, c) = Bm[k * bk + c * bc]: (bk, bc) = (ld, 1) for U itself, (1, ld) for U transposed.
template <typename T, int G>
__device__ inline void tile_dot(const T* A, int64_t lda, int nrows, const T* Bm, int64_t bk, int64_t bc, int H,
                                int K, int row0, int col0, acc_t<T> (&acc)[G]) {
  using Acc = acc_t<T>;
  __shared__ Acc sA[BM][BK + 1];
  __shared__ Acc sB[G][BK][BN + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * BN + tx;
  for (int k0 = 0; k0 < K; k0 += BK) {
    const int r = row0 + ty, ka = k0 + tx;
    sA[ty][tx] = (r < nrows && ka < K) ? to_acc(A[r * lda + ka]) : Acc(0);
    for (int idx = tid; idx < G * BK * BN; idx += BM * BN) {
      const int g = idx / (BK * BN), rem = idx % (BK * BN);
      // Consecutive threads read consecutive addresses of B in either orientation.
      const int kk = bk == 1 ? rem % BK : rem / BN;
      const int jj = bk == 1 ? rem / BK : rem % BN;
      const int k = k0 + kk, c = col0 + jj;
      sB[g][kk][jj] = (k < K && c < H) ? to_acc(Bm[k * bk + int64_t(g * H + c) * bc]) : Acc(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      const Acc a = sA[ty][kk];
#pragma unroll
      for (int g = 0; g < G; ++g) acc[g] += a * sB[g][kk][tx];
    }
    __syncthreads();
  }
}

// Nothing to compute (an empty grid is a launch error).
inline bool empty(const ScanParams& p) { return p.B == 0 || p.H == 0; }

// Rows computed at step t: a prefix of the (sorted) batch.
inline int active_rows(const ScanParams& p, int t) { return p.batch_sizes ? p.batch_sizes[t] : p.B; }

__device__ inline bool is_real(const uint8_t* mask, int t, int B, int b, int n) {
  return b < n && (mask == nullptr || mask[int64_t(t) * B + b]);
}

inline dim3 step_grid(const ScanParams& p) { return dim3((p.H + BN - 1) / BN, (p.B + BM - 1) / BM); }

// Output at a padded step: 0, or the previous step's output.
template <typename T>
__device__ inline T carried_output(const T* out, int64_t o, int t, int64_t BH, bool zero_output) {
  return (zero_output || t == 0) ? from_acc<T>(acc_t<T>(0)) : out[o - BH];
}

template <typename T>
__global__ void to_acc_kernel(int64_t n, const T* src, acc_t<T>* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src ? to_acc(src[i]) : acc_t<T>(0);
}

template <typename T>
__global__ void from_acc_kernel(int64_t n, const acc_t<T>* src, T* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = from_acc<T>(src[i]);
}

template <typename T>
void copy_to_acc(const ScanParams& p, const T* src, acc_t<T>* dst) {
  const int64_t n = int64_t(p.B) * p.H;
  to_acc_kernel<T><<<(n + 255) / 256, 256, 0, p.stream>>>(n, src, dst);
  MASKRNN_LAUNCH_CHECK();
}

template <typename T>
void copy_from_acc(const ScanParams& p, const acc_t<T>* src, T* dst) {
  const int64_t n = int64_t(p.B) * p.H;
  from_acc_kernel<T><<<(n + 255) / 256, 256, 0, p.stream>>>(n, src, dst);
  MASKRNN_LAUNCH_CHECK();
}

}  // namespace maskrnn
