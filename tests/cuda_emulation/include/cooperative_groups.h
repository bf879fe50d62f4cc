#pragma once
// cooperative_groups for the host emulation (found before the CUDA toolkit's header, which needs nvcc): the
// block, the grid (sync needs a cooperative launch), the cluster (sync, split arrive/wait, distributed shared
// memory through map_shared_rank) and warp tiles of 1-32 threads.
#include "emu_device.h"

namespace cooperative_groups {

struct thread_block {
  void sync() const { __syncthreads(); }
  unsigned thread_rank() const { return emu::self.rank; }
  unsigned size() const { return emu::count(blockDim); }
  unsigned num_threads() const { return size(); }
  dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
  dim3 group_dim() const { return blockDim; }
  dim3 dim_threads() const { return blockDim; }
};
inline thread_block this_thread_block() { return {}; }
inline void sync(const thread_block& g) { g.sync(); }

struct grid_group {
  bool is_valid() const { return emu::self.launch->cfg.cooperative; }
  void sync() const {
    if (!is_valid()) emu::device_error("grid.sync() outside a cooperative launch");
    emu::self.launch->grid.sync();
  }
  unsigned long long thread_rank() const {
    return static_cast<unsigned long long>(block_rank()) * emu::count(blockDim) + emu::self.rank;
  }
  unsigned long long size() const { return static_cast<unsigned long long>(num_blocks()) * emu::count(blockDim); }
  unsigned long long num_threads() const { return size(); }
  unsigned long long block_rank() const { return emu::self.block_rank; }
  unsigned long long num_blocks() const { return emu::count(gridDim); }
  dim3 group_dim() const { return gridDim; }
  dim3 dim_blocks() const { return gridDim; }
};
inline grid_group this_grid() { return {}; }

struct cluster_group {
  void sync() const { barrier().sync(); }
  unsigned long barrier_arrive() const { return barrier().arrive(); }
  void barrier_wait(unsigned long token) const { barrier().wait(token); }
  dim3 dim_blocks() const { return emu::self.launch->cfg.cluster; }
  dim3 block_index() const {
    const dim3 c = dim_blocks();
    return dim3(blockIdx.x % c.x, blockIdx.y % c.y, blockIdx.z % c.z);
  }
  unsigned block_rank() const {
    const dim3 c = dim_blocks(), i = block_index();
    return i.x + c.x * (i.y + c.y * i.z);
  }
  unsigned num_blocks() const { return emu::self.launch->cluster_size; }
  unsigned thread_rank() const { return block_rank() * emu::count(blockDim) + emu::self.rank; }
  unsigned num_threads() const { return num_blocks() * emu::count(blockDim); }
  unsigned query_shared_rank(const void*) const { return block_rank(); }
  // The same shared-memory address in block `rank` of this cluster.
  template <class T>
  T* map_shared_rank(T* addr, unsigned rank) const {
    emu::Launch& L = *emu::self.launch;
    const char* mine = emu::self.block->smem;
    const auto offset = reinterpret_cast<const char*>(addr) - mine;
    if (offset < 0 || size_t(offset) >= L.region) emu::device_error("map_shared_rank of a non-shared address");
    if (rank >= num_blocks()) emu::device_error("map_shared_rank: rank beyond the cluster");
    const dim3 c = dim_blocks(), g = gridDim;
    const unsigned x = blockIdx.x - blockIdx.x % c.x + rank % c.x, y = blockIdx.y - blockIdx.y % c.y + rank / c.x % c.y,
                   z = blockIdx.z - blockIdx.z % c.z + rank / (c.x * c.y);
    return reinterpret_cast<T*>(L.blocks[x + g.x * (y + g.y * z)].smem + offset);
  }

 private:
  emu::Barrier& barrier() const { return emu::self.launch->clusters[emu::cluster_id(*emu::self.launch, blockIdx)]; }
};
inline cluster_group this_cluster() { return {}; }

// A tile of N threads of one warp (N a power of two, at most 32).
template <unsigned N>
struct thread_block_tile {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "tiles of 1, 2, 4, 8, 16 or 32 threads");
  unsigned mask() const {
    const unsigned first = emu::lane_id() / N * N;
    return (N == 32 ? 0xffffffffu : (1u << N) - 1) << first;
  }
  void sync() const { __syncwarp(mask()); }
  unsigned thread_rank() const { return emu::lane_id() % N; }
  unsigned meta_group_rank() const { return emu::self.rank / N; }
  unsigned meta_group_size() const { return (emu::count(blockDim) + N - 1) / N; }
  static constexpr unsigned size() { return N; }
  static constexpr unsigned num_threads() { return N; }
  template <class T> T shfl(T v, int src) const { return __shfl_sync(mask(), v, src, N); }
  template <class T> T shfl_up(T v, unsigned d) const { return __shfl_up_sync(mask(), v, d, N); }
  template <class T> T shfl_down(T v, unsigned d) const { return __shfl_down_sync(mask(), v, d, N); }
  template <class T> T shfl_xor(T v, int m) const { return __shfl_xor_sync(mask(), v, m, N); }
  int any(int p) const { return __any_sync(mask(), p); }
  int all(int p) const { return __all_sync(mask(), p); }
  unsigned ballot(int p) const { return __ballot_sync(mask(), p) >> (emu::lane_id() / N * N); }
};
template <unsigned N, class Parent>
thread_block_tile<N> tiled_partition(const Parent&) {
  return {};
}

template <class T> struct plus { T operator()(T a, T b) const { return a + b; } };
template <class T> struct less { T operator()(T a, T b) const { return a < b ? a : b; } };
template <class T> struct greater { T operator()(T a, T b) const { return a < b ? b : a; } };

// cg::reduce over a tile: every thread gets op folded over the tile's values, in lane order.
template <unsigned N, class T, class Op>
T reduce(const thread_block_tile<N>& tile, T v, Op op) {
  const auto all = emu::exchange(tile.mask(), emu::bits(v), "cooperative_groups::reduce");
  const unsigned first = emu::lane_id() / N * N;
  T r = emu::unbits<T>(all[first]);
  for (unsigned l = first + 1; l < first + N; ++l) r = op(r, emu::unbits<T>(all[l]));
  return r;
}

}  // namespace cooperative_groups
