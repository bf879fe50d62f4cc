// Small kernels that exercise each part of the emulation (test_emulation.py runs them): launch checks, blocks
// running concurrently with their own shared memory, grid and cluster barriers, distributed shared memory,
// warp shuffles and votes, atomics, CUDA graph capture, WMMA (mma.h). Compiled by build.py like csrc's sources
// (launches and __shared__ rewritten) into the _emu_selftest module; int64 arguments are host pointers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cooperative_groups.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include "check.h"

namespace cg = cooperative_groups;
namespace py = pybind11;
using uptr = std::uintptr_t;

template <class T> T* ptr(uptr p) { return reinterpret_cast<T*>(p); }

// Each entry point starts and ends with no last error: a failed runtime call leaves it set (on a GPU as here),
// and the next cudaGetLastError anywhere in the process's thread (the scan kernels' launch checks too) would
// report it again.
struct Clean {
  Clean() { cudaGetLastError(); }
  ~Clean() { cudaGetLastError(); }
};

__global__ void noop() {}

// out[block]: 1 when every thread saw its own block's values in static and dynamic shared memory, and the
// static memory read as 0xFF bytes before it was written.
__global__ void own_shared(int* out) {
  __shared__ int mine[64];
  extern __shared__ int dyn[];
  const unsigned b = blockIdx.x + gridDim.x * blockIdx.y, t = threadIdx.x;
  const bool fresh = mine[t] == -1;
  __syncthreads();
  mine[t] = b;
  dyn[t] = 1000 + b;
  __syncthreads();
  const bool ok = fresh && mine[(t + 1) % blockDim.x] == int(b) && dyn[(t + 7) % blockDim.x] == int(1000 + b);
  atomicAnd(out + b, int(ok));
}

// Block 0 waits for the last block's flag: it finishes only when blocks run concurrently.
__global__ void waits_for_last(int* flag) {
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) atomicExch(flag, 1);
  if (blockIdx.x == 0)
    while (atomicAdd(flag, 0) == 0) std::this_thread::yield();
}

// out[b] = sum over blocks of their ids, read after a grid-wide barrier.
__global__ void grid_sum(int* slots, int* out) {
  cg::grid_group grid = cg::this_grid();
  if (threadIdx.x == 0) slots[blockIdx.x] = blockIdx.x + 1;
  grid.sync();
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned i = 0; i < gridDim.x; ++i) s += slots[i];
    out[blockIdx.x] = s;
  }
}

// out[b] = the value block (rank + 1) % cluster size of b's cluster put in its shared memory.
__global__ void cluster_ring(int* out) {
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ int value;
  if (threadIdx.x == 0) value = 100 * blockIdx.x + 7;
  cluster.sync();
  const int* peer = cluster.map_shared_rank(&value, (cluster.block_rank() + 1) % cluster.num_blocks());
  if (threadIdx.x == 0) out[blockIdx.x] = *peer;
  cluster.sync();  // keep our shared memory alive until the peers have read it
}

// Per warp: sum by __shfl_down_sync, a ballot of odd lanes, a 4-thread tile reduce, __shfl_xor_sync.
__global__ void warp_ops(int* out) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int v = threadIdx.x;
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  const unsigned odd = __ballot_sync(0xffffffffu, lane & 1);
  auto tile = cg::tiled_partition<4>(cg::this_thread_block());
  const int quad = cg::reduce(tile, int(threadIdx.x), cg::plus<int>());
  const int swapped = __shfl_xor_sync(0xffffffffu, int(lane), 1);
  if (lane == 0) out[4 * warp] = v, out[4 * warp + 1] = int(odd);
  if (lane == 5) out[4 * warp + 2] = quad, out[4 * warp + 3] = swapped;
}

// Lanes 16-31 exit while lanes 0-15 shuffle with the full mask: an error on a GPU.
__global__ void shuffle_with_exited_lanes(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
}

// Thread 0 waits for a flag that thread 1 sets only after a barrier thread 0 never reaches: a deadlock.
__global__ void deadlock(int* flag) {
  if (threadIdx.x == 0) {
    while (atomicAdd(flag, 0) == 0) std::this_thread::yield();
    return;
  }
  __syncthreads();
  atomicExch(flag, 1);
}

__global__ void increment(int* x) { atomicAdd(x, 1); }

// cp.async: the shared copy still holds garbage before the wait, the value after it. in_out[t]: t + 10 in,
// 1 out when both held.
__global__ void async_copy(int* in_out) {
  __shared__ int buf[32];
  const unsigned t = threadIdx.x;
  __pipeline_memcpy_async(&buf[t], &in_out[t], sizeof(int));
  __pipeline_commit();
  const bool early = buf[t] == -1;
  __pipeline_wait_prior(0);
  in_out[t] = early && buf[t] == int(t) + 10;
}

// A launch with the given configuration (errors raise through csrc/check.h, as in the scan kernels).
void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, unsigned bz, size_t smem, size_t optin) {
  Clean clean;
  MASKRNN_CHECK(cudaFuncSetAttribute(noop, cudaFuncAttributeMaxDynamicSharedMemorySize, int(optin ? optin : 49152)));
  noop<<<dim3(gx, gy), dim3(bx, by, bz), smem>>>();
  MASKRNN_LAUNCH_CHECK();
}

// The launch checks alone, for configurations too large to run here: the error's name.
std::string check(unsigned gx, unsigned gy, unsigned bx, unsigned by, unsigned bz, size_t smem) {
  Clean clean;
  const auto kernel = reinterpret_cast<const void*>(noop);
  return cudaGetErrorName(emu::check(emu::config(dim3(gx, gy), dim3(bx, by, bz), smem), kernel));
}

void launch_ex(unsigned grid, unsigned block, unsigned cluster, bool cooperative, bool non_portable, uptr slots,
               uptr out) {
  Clean clean;
  MASKRNN_CHECK(cudaFuncSetAttribute(cluster_ring, cudaFuncAttributeNonPortableClusterSizeAllowed, non_portable));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cudaLaunchAttribute attr[1];
  if (cooperative) {
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
  } else {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cooperative)
    MASKRNN_CHECK(cudaLaunchKernelEx(&cfg, grid_sum, ptr<int>(slots), ptr<int>(out)));
  else
    MASKRNN_CHECK(cudaLaunchKernelEx(&cfg, cluster_ring, ptr<int>(out)));
}

// cudaOccupancyMaxActiveClusters for cluster_ring with `smem` bytes of dynamic shared memory per block.
int max_active_clusters(unsigned cluster, bool non_portable, size_t smem) {
  Clean clean;
  MASKRNN_CHECK(cudaFuncSetAttribute(cluster_ring, cudaFuncAttributeNonPortableClusterSizeAllowed, non_portable));
  MASKRNN_CHECK(cudaFuncSetAttribute(cluster_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = cluster;
  cfg.blockDim = 128;
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = -1;
  MASKRNN_CHECK(cudaOccupancyMaxActiveClusters(&n, cluster_ring, &cfg));
  return n;
}

void grid_sum_plain(unsigned grid, uptr slots, uptr out) {
  Clean clean;
  grid_sum<<<grid, 32>>>(ptr<int>(slots), ptr<int>(out));
  MASKRNN_LAUNCH_CHECK();
}

void grid_sum_cooperative(unsigned grid, uptr slots, uptr out) {
  Clean clean;
  int* s = ptr<int>(slots);
  int* o = ptr<int>(out);
  void* args[] = {&s, &o};
  MASKRNN_CHECK(cudaLaunchCooperativeKernel(grid_sum, dim3(grid), dim3(32), args, 0, nullptr));
}

// Captures `times` launches of increment on a stream, then replays the graph `replays` times.
void graph(uptr x, int times, int replays, uptr stream) {
  Clean clean;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  cudaGraph_t g;
  cudaGraphExec_t exec;
  MASKRNN_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < times; ++i) increment<<<1, 1, 0, s>>>(ptr<int>(x));
  MASKRNN_CHECK(cudaStreamEndCapture(s, &g));
  MASKRNN_CHECK(cudaGraphInstantiate(&exec, g, 0));
  for (int i = 0; i < replays; ++i) MASKRNN_CHECK(cudaGraphLaunch(exec, s));
  MASKRNN_CHECK(cudaGraphExecDestroy(exec));
  MASKRNN_CHECK(cudaGraphDestroy(g));
}

// D = scale (A B + C) by WMMA, one warp per M x N tile of D: A (m x k) and B (k x n) row- or column-major as
// LA and LB say, C row-major, D column-major (ldm m); m, n, k multiples of the tile. Lanes 16-31 read A `skew`
// elements further on (0: every lane passes the same pointer, as it must).
template <class T, int M, int N, int K, class LA, class LB>
__global__ void wmma_gemm(const T* A, const T* B, const float* C, float* D, int m, int n, int k, float scale,
                          int skew) {
  namespace wmma = nvcuda::wmma;
  constexpr bool a_row = std::is_same_v<LA, wmma::row_major>, b_row = std::is_same_v<LB, wmma::row_major>;
  const int tile = int(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32), i0 = tile / (n / N) * M,
            j0 = tile % (n / N) * N;
  if (i0 >= m) return;
  wmma::fragment<wmma::matrix_a, M, N, K, T, LA> a;
  wmma::fragment<wmma::matrix_b, M, N, K, T, LB> b;
  wmma::fragment<wmma::accumulator, M, N, K, float> d;
  wmma::load_matrix_sync(d, C + i0 * n + j0, n, wmma::mem_row_major);
  for (int kk = 0; kk < k; kk += K) {
    const T* pa = (a_row ? A + i0 * k + kk : A + kk * m + i0) + (threadIdx.x % 32 >= 16 ? skew : 0);
    wmma::load_matrix_sync(a, pa, a_row ? k : m);
    wmma::load_matrix_sync(b, b_row ? B + kk * n + j0 : B + j0 * k + kk, b_row ? n : k);
    wmma::mma_sync(d, a, b, d);
  }
  for (int e = 0; e < d.num_elements; ++e) d.x[e] *= scale;  // element-wise: the mapping does not matter
  wmma::store_matrix_sync(D + j0 * m + i0, d, m, wmma::mem_col_major);
}

template <class T, int M, class LA, class LB>
void run_wmma(unsigned threads, uptr a, uptr b, uptr c, uptr d, int m, int n, int k, float scale, int skew) {
  Clean clean;
  constexpr int N = 256 / M;
  const unsigned tiles = unsigned(m / M * (n / N)), warps = (threads + 31) / 32;
  wmma_gemm<T, M, N, 16, LA, LB><<<(tiles + warps - 1) / warps, threads>>>(
      ptr<const T>(a), ptr<const T>(b), ptr<const float>(c), ptr<float>(d), m, n, k, scale, skew);
  MASKRNN_LAUNCH_CHECK();
}

template <class T, int M>
void wmma_layouts(bool a_row, bool b_row, unsigned threads, uptr a, uptr b, uptr c, uptr d, int m, int n, int k,
                  float scale, int skew) {
  using nvcuda::wmma::col_major, nvcuda::wmma::row_major;
  auto go = [&](auto run) { run(threads, a, b, c, d, m, n, k, scale, skew); };
  if (a_row && b_row) go(run_wmma<T, M, row_major, row_major>);
  if (a_row && !b_row) go(run_wmma<T, M, row_major, col_major>);
  if (!a_row && b_row) go(run_wmma<T, M, col_major, row_major>);
  if (!a_row && !b_row) go(run_wmma<T, M, col_major, col_major>);
}

template <class T>
void wmma_shapes(int M, bool a_row, bool b_row, unsigned threads, uptr a, uptr b, uptr c, uptr d, int m, int n,
                 int k, float scale, int skew) {
  if (M == 8) wmma_layouts<T, 8>(a_row, b_row, threads, a, b, c, d, m, n, k, scale, skew);
  if (M == 16) wmma_layouts<T, 16>(a_row, b_row, threads, a, b, c, d, m, n, k, scale, skew);
  if (M == 32) wmma_layouts<T, 32>(a_row, b_row, threads, a, b, c, d, m, n, k, scale, skew);
}

void wmma(bool bf16, int M, bool a_row, bool b_row, unsigned threads, uptr a, uptr b, uptr c, uptr d, int m, int n,
          int k, float scale, int skew) {
  if (bf16)
    wmma_shapes<__nv_bfloat16>(M, a_row, b_row, threads, a, b, c, d, m, n, k, scale, skew);
  else
    wmma_shapes<__half>(M, a_row, b_row, threads, a, b, c, d, m, n, k, scale, skew);
}

template <class... P>
void run(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, uptr arg) {
  Clean clean;
  kernel<<<grid, block, smem>>>(ptr<int>(arg));
  MASKRNN_LAUNCH_CHECK();
}

PYBIND11_MODULE(_emu_selftest, m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("launch", &launch, nogil);
  m.def("launch_ex", &launch_ex, nogil);
  m.def("check", &check);
  m.def("max_active_clusters", &max_active_clusters);
  m.def("grid_sum_plain", &grid_sum_plain, nogil);
  m.def("grid_sum_cooperative", &grid_sum_cooperative, nogil);
  m.def("graph", &graph, nogil);
  m.def("wmma", &wmma, nogil);
  using Kernel = void (*)(int*);
  const std::pair<const char*, Kernel> kernels[] = {
      {"own_shared", own_shared}, {"waits_for_last", waits_for_last}, {"warp_ops", warp_ops}, {"deadlock", deadlock},
      {"async_copy", async_copy}, {"shuffle_with_exited_lanes", shuffle_with_exited_lanes}};
  for (auto [name, kernel] : kernels)
    m.def(name, [kernel](unsigned grid, unsigned block, size_t smem, uptr arg) { run(kernel, grid, block, smem, arg); },
          nogil);
}
