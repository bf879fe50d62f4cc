#pragma once
// The per-step product shared by every scan kernel. A block of kThreads threads computes a BM-row x (G x NJ)-
// column tile of A (rows x K) times B (K x columns) in the accumulation type. Its threads form KS k-splits; in
// each split a thread owns 4 rows x G columns (one per group) of one column slot j, so one 4-wide shared load
// of A and one G-wide load of B feed 4G FMAs. Each 64-deep chunk of A and B is loaded into registers in full
// (every global load in flight at once, the next chunk's during this chunk's math) before it is stored to
// shared memory. The KS partial sums are added in the epilogue (tile_sum): the backward's 4H-long sum is split
// 8 ways.
#include <cstdint>
#include <type_traits>

#include "cell_math.cuh"
#include "check.h"
#include "scan.h"

namespace maskrnn {

constexpr int kThreads = 256;  // threads per block, every kernel
constexpr int BKC = 64;        // k per shared-memory chunk

// G column groups of NJ columns, BM rows. Forward: groups are gates (column g*H + unit), NJ units per block.
// Backward (kTrans): groups are blocks of NJ consecutive units, NJ*G units per block.
template <int G_, int BM_, int NJ_>
struct Tile {
  static constexpr int G = G_, BM = BM_, NJ = NJ_;
  static constexpr int kSplit = BM / 4 * NJ;   // threads of one k-split
  static constexpr int KS = kThreads / kSplit;  // k-splits
  static constexpr int BKS = BKC / KS;          // k per split per chunk
  static constexpr int SA = BM + 4;  // A row stride: 16-byte aligned rows, conflict-free stores (see fill)
  static constexpr int GP = G == 3 ? 4 : G;  // B's groups side by side, padded for one vector load
  static constexpr int NA = BKC * BM / kThreads, NB = GP * BKC * NJ / kThreads;  // loads per thread per chunk
  static_assert(KS * kSplit == kThreads && BKS * KS == BKC && BKS >= 1, "tile shape");
  static_assert(kThreads % (8 * BM) == 0 && kThreads % (8 * GP * NJ) == 0, "a thread's chunk elements share a "
                "row of A and a column of B");
};
template <int G> using FwdTile = Tile<G, 32, 8>;  // 32 rows x 8 units x G gates, 4 k-splits
using BwdTile = Tile<2, 16, 8>;                  // 16 rows x 16 units, 8 k-splits
// The kernels' epilogues give each thread one (row, unit) of the block.
static_assert(FwdTile<1>::BM * FwdTile<1>::NJ == kThreads && BwdTile::BM * BwdTile::G * BwdTile::NJ == kThreads);

template <typename Acc, class S>
union TileSmem {
  struct {
    alignas(16) Acc a[BKC][S::SA];  // A chunk, transposed: a[k][row]
    alignas(16) Acc b[BKC][S::NJ][S::GP];  // B chunk: b[k][j][g]
  } t;
  Acc red[S::KS][S::G][S::BM][S::NJ];  // partial sums per k-split
};

// N consecutive shared values (16-byte aligned when N > 1) in vector loads.
template <int N>
__device__ inline void loadv(const float* p, float (&v)[N]) {
  if constexpr (N == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else if constexpr (N == 2) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x, v[1] = q.y;
  } else {
    v[0] = p[0];
  }
}
template <int N>
__device__ inline void loadv(const double* p, double (&v)[N]) {
  if constexpr (N == 1) {
    v[0] = p[0];
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const double2 q = reinterpret_cast<const double2*>(p)[i / 2];
      v[i] = q.x, v[i + 1] = q.y;
    }
  }
}

// Programmatic dependent launch (sm_90): a step kernel may start while the previous step still runs; it waits
// here before touching anything that step writes, and lets the next step start at once (which then waits too).
__device__ inline void wait_prior_step() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void allow_next_step() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// sm.red <- partial sums over k < K of A[row0 + r, k] * B(k; g, j), for r < BM, g < G, j < NJ, where
// B(k; g, j) = Bm[k * ld + g * H + col0 + j] (U: unit col0 + j) or, kTrans, Bm[(col0 + g * NJ + j) * ld + k]
// (U transposed: unit col0 + g * NJ + j). Rows >= nrows and units >= H count as 0. Every thread of the block
// must call it (barriers); read the result with tile_sum. It waits for the previous step (wait_prior_step) after
// issuing the loads of B's first chunk and before reading A.
template <bool kTrans, class S, typename TA, typename TB, typename Acc>
__device__ void tile_dot(TileSmem<Acc, S>& sm, const TA* A, int64_t lda, int nrows, int row0, const TB* Bm,
                         int64_t ld, int H, int col0, int K) {
  constexpr int G = S::G, BM = S::BM, NJ = S::NJ;
  const unsigned tid = threadIdx.x;
  TA ra[S::NA];
  TB rb[S::NB];
  // A thread loads one row of A and one (unit, group) column of B: k = kA + i * dA and k = kB + i * dB in each
  // chunk, so its addresses are computed once. Eight consecutive k per row of A and per column of transposed B,
  // NJ consecutive units per gate of U: 32-byte segments in global memory. In shared memory the element
  // (tid + i * kThreads) of B's chunk lands at that flat index of b[k][j][g], and A's lanes hit distinct banks
  // (transposed B's: 4-way conflicts on its 4 stores per chunk).
  constexpr int dA = kThreads / BM, dB = kThreads / (S::GP * NJ);
  const int rA = int(tid / 8 % BM), kA = int(tid % 8 + tid / (8 * BM) * 8);
  const bool okA = row0 + rA < nrows;
  const TA* pA = A + (okA ? (row0 + rA) * lda + kA : 0);
  int kB, gB, jB;
  if constexpr (kTrans) {
    kB = int(tid % 8 + tid / (8 * NJ * S::GP) * 8), jB = int(tid / 8 % NJ), gB = int(tid / (8 * NJ) % S::GP);
  } else {
    kB = int(tid / (S::GP * NJ)), jB = int(tid / S::GP % NJ), gB = int(tid % S::GP);
  }
  const int unit = kTrans ? col0 + gB * NJ + jB : col0 + jB;
  const bool okB = gB < G && unit < H;
  const TB* pB = Bm + (!okB ? 0 : kTrans ? unit * ld + kB : kB * ld + int64_t(gB) * H + unit);
  const int64_t sB = kTrans ? dB : dB * ld;  // pB step from element i to i + 1
  auto fill_a = [&](int k0) {
#pragma unroll
    for (int i = 0; i < S::NA; ++i) ra[i] = (okA && k0 + kA + i * dA < K) ? pA[k0 + i * dA] : TA(0.0f);
  };
  auto fill_b = [&](int k0) {
    const TB* p = pB + (kTrans ? int64_t(k0) : k0 * ld);
#pragma unroll
    for (int i = 0; i < S::NB; ++i) rb[i] = (okB && k0 + kB + i * dB < K) ? p[i * sB] : TB(0.0f);
  };
  auto store_regs = [&] {
#pragma unroll
    for (int i = 0; i < S::NA; ++i) sm.t.a[kA + i * dA][rA] = to_acc(ra[i]);
#pragma unroll
    for (int i = 0; i < S::NB; ++i) sm.t.b[kB + i * dB][jB][gB] = to_acc(rb[i]);
  };
  const unsigned split = tid / S::kSplit, w = tid % S::kSplit, j = w % NJ, rg = w / NJ;
  Acc acc[4][G] = {};
  fill_b(0);  // U does not depend on the previous step: its first chunk loads while that step finishes
  wait_prior_step();
  fill_a(0);
  for (int k0 = 0; k0 < K; k0 += BKC) {
    store_regs();
    __syncthreads();
    fill_b(k0 + BKC);  // past K it loads nothing; a branch here would let the compiler sink the loads
    fill_a(k0 + BKC);
    const int kb = int(split) * S::BKS;
#pragma unroll
    for (int kk = kb; kk < kb + S::BKS; ++kk) {
      Acc a[4], b[S::GP];
      loadv<4>(&sm.t.a[kk][rg * 4], a);
      loadv<S::GP>(&sm.t.b[kk][j][0], b);
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r][g] += a[r] * b[g];
    }
    __syncthreads();
  }
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int r = 0; r < 4; ++r) sm.red[split][g][rg * 4 + r][j] = acc[r][g];
  __syncthreads();
}

template <typename Acc, class S>
__device__ inline Acc tile_sum(const TileSmem<Acc, S>& sm, int r, int g, int j) {
  Acc s = 0;
#pragma unroll
  for (int k = 0; k < S::KS; ++k) s += sm.red[k][g][r][j];
  return s;
}

// The block's tile: row blocks and column blocks share gridDim.x (2^31 - 1 blocks; gridDim.y stops at 65,535).
template <int kUnits>
inline dim3 step_grid(int B, int H, int rows) {
  return dim3(unsigned((H + kUnits - 1) / kUnits) * unsigned((B + rows - 1) / rows));
}
template <int kUnits>
__device__ inline void block_origin(int H, int rows, int& row0, int& col0) {
  const unsigned ncol = (H + kUnits - 1) / kUnits;
  row0 = int(blockIdx.x / ncol) * rows;
  col0 = int(blockIdx.x % ncol) * kUnits;
}

// An attribute of the current device.
inline int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  MASKRNN_CHECK(cudaGetDevice(&dev));
  MASKRNN_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}

// Whether step kernels may overlap their predecessor (programmatic dependent launch: sm_90 and up).
inline bool pdl_supported() {
#ifdef __CUDACC__
  return device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9;
#else
  return false;
#endif
}

// One step kernel on p.stream, kThreads threads per block. overlap: the stream's previous kernel is this scan's
// previous step and PDL is supported, so the launch may overlap it (the kernel waits in tile_dot or
// wait_prior_step). The first step never overlaps: what ran before it (the input GEMM, a weight update) may let
// its dependents start early and still be writing gx or U.
template <typename... P, typename... A>
void launch(const ScanParams& p, bool overlap, dim3 grid, void (*kernel)(P...), A... args) {
#ifdef __CUDACC__
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.stream = p.stream;
  cfg.attrs = attr;
  cfg.numAttrs = overlap ? 1 : 0;
  MASKRNN_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
#else
  (void)overlap;
  kernel<<<grid, dim3(kThreads), 0, p.stream>>>(args...);
#endif
  MASKRNN_LAUNCH_CHECK();
}

// Half-precision scans run their states h, c in float between steps (scratch) and write the storage-type copy
// only to the tape; float and double scans run them in the tape itself.
template <typename T> constexpr bool kSeparateState = !std::is_same_v<T, acc_t<T>>;

// Nothing to compute (an empty grid is a launch error).
inline bool empty(const ScanParams& p) { return p.B == 0 || p.H == 0; }

// Rows computed at step t: a prefix of the (sorted) batch. n_rows is on the device, written before the scan and
// only read during it, so a step kernel may read it before waiting for the previous step. Clamped to [0, B]: a bad
// count cannot make a kernel index past the batch.
__device__ inline int rows_at(const int32_t* n_rows, int t, int B) {
  if (n_rows == nullptr) return B;
  const int n = n_rows[t];
  return n < 0 ? 0 : n > B ? B : n;
}

// Whether the block's rows are all finished at this step (row0 >= n: n_rows is non-increasing, so none of them is
// computed again): the block then returns at once, doing no work; finished_rows.cuh writes, once per call, what
// those steps would have written. Block-uniform. Safe under programmatic dependent launch because the block
// touches no memory, and because block 0 still waits for the previous step before it returns: a step grid then
// cannot end before its predecessor even when all its blocks exit, so each grid's wait (and every launch after
// the loop, which waits for the last grid to end) still covers all earlier steps.
__device__ inline bool finished_block(int row0, int n) {
  if (row0 < n) return false;
  if (blockIdx.x == 0) wait_prior_step();
  return true;
}

__device__ inline bool is_real(const uint8_t* mask, int t, int B, int b, int n) {
  return b < n && (mask == nullptr || mask[int64_t(t) * B + b]);
}

// Output at a padded step: 0, or the previous step's output.
template <typename T>
__device__ inline T carried_output(const T* out, int64_t o, int t, int64_t BH, bool zero_output) {
  return (zero_output || t == 0) ? from_acc<T>(acc_t<T>(0)) : out[o - BH];
}

template <typename T, typename U>
__global__ void convert_kernel(int64_t n, const T* src, U* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src ? convert<U>(src[i]) : convert<U>(acc_t<U>(0));
}

// dst[i] = src[i] (0 when src is null) for the B*H values of a state, converted.
template <typename T, typename U>
void convert_state(const ScanParams& p, const T* src, U* dst) {
  const int64_t n = int64_t(p.B) * p.H;
  convert_kernel<T, U><<<(n + 255) / 256, 256, 0, p.stream>>>(n, src, dst);
  MASKRNN_LAUNCH_CHECK();
}

}  // namespace maskrnn
