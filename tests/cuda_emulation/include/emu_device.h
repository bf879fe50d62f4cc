#pragma once
// Device-side CUDA for the host emulation: block barriers and votes, warp shuffles and votes (a rendezvous of
// the lanes named in the mask), atomics and fences (std::atomic_ref, so ThreadSanitizer sees their order),
// cp.async-style deferred copies, programmatic-dependent-launch calls, and the launch entry points that
// build.py substitutes for <<<...>>>, cudaLaunchKernelEx and cudaLaunchCooperativeKernel.
#include <array>
#include <bit>
#include <cstdint>

#include "emu_core.h"

namespace emu {

// Lanes of one warp meet here for a shuffle, vote or __syncwarp, one meeting per mask (tiled partitions meet
// independently). A mask naming an exited lane is an error; lanes that never meet end in the deadlock timeout.
struct Warp {
  struct Group {
    unsigned arrived = 0;
    unsigned long generation = 0;
    uint64_t slots[2][32];
  };
  std::mutex m;
  std::condition_variable cv;
  unsigned exited = 0;
  std::map<unsigned, Group> groups;  // by mask, while lanes wait in it
};

inline void add_warps(Block& block, unsigned nthreads) {
  for (unsigned first = 0; first < nthreads; first += 32) {
    block.warps.push_back(std::make_unique<Warp>());
    const unsigned lanes = std::min(32u, nthreads - first);
    block.warps.back()->exited = lanes == 32 ? 0u : ~((1u << lanes) - 1);
  }
}

inline unsigned lane_id() { return self.rank % 32; }
inline Warp& warp() { return *self.block->warps[self.rank / 32]; }

// Every lane of `mask` contributes `mine`; returns what each lane contributed.
inline std::array<uint64_t, 32> exchange(unsigned mask, uint64_t mine, const char* what) {
  Warp& w = warp();
  const unsigned lane = lane_id();
  std::unique_lock lock(w.m);
  if (!(mask >> lane & 1u)) device_error(std::string(what) + ": the calling lane is not in the mask");
  if (mask & w.exited) device_error(std::string(what) + ": a lane of the mask has exited");
  Warp::Group& g = w.groups[mask];
  const unsigned long token = g.generation;
  const int parity = token & 1;
  g.slots[parity][lane] = mine;
  if (++g.arrived == unsigned(std::popcount(mask))) {
    g.arrived = 0;
    ++g.generation;
    w.cv.notify_all();
  }
  const auto deadline = std::chrono::steady_clock::now() + deadlock_timeout();
  while (g.generation == token) {
    w.cv.wait_for(lock, std::chrono::milliseconds(50));
    if (self.launch->failed) throw Abort{};
    if (g.generation == token && std::chrono::steady_clock::now() > deadline)
      device_error(std::string("deadlock: ") + what + " still waits after the timeout (EMU_DEADLOCK_S)");
  }
  std::array<uint64_t, 32> all;
  std::copy(g.slots[parity], g.slots[parity] + 32, all.begin());
  return all;
}

inline void on_exit(Launch& L, Block& block, unsigned rank) {
  {
    Warp& w = *block.warps[rank / 32];
    std::lock_guard lock(w.m);
    w.exited |= 1u << (rank % 32);
    for (auto& [mask, g] : w.groups)
      if (g.arrived && (mask >> (rank % 32) & 1u))
        L.fail(cudaErrorLaunchFailure, "a lane exited while others wait for it in a warp-synchronous call");
    w.cv.notify_all();
  }
  block.barrier.drop();
  L.clusters[cluster_id(L, blockIdx)].drop();
  L.grid.drop();
  // A block's shared memory is gone once it exits: in a cluster, peers reading it later read garbage here,
  // and TSan reports the reads that are not ordered before the exit (a missing final cluster.sync()).
  if (--block.running == 0 && L.cluster_size > 1) std::memset(block.smem, 0xFF, L.region);
}

template <class T>
uint64_t bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

template <class T>
T unbits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <class T>
T shuffle(unsigned mask, T var, unsigned src, const char* what) {
  const auto all = exchange(mask, bits(var), what);
  if (!(mask >> src & 1u)) device_error(std::string(what) + ": the source lane is not in the mask");
  return unbits<T>(all[src]);
}

// Block barriers: one per CUDA __syncthreads, every thread of the block, as on a GPU.
inline int block_vote(int predicate) {
  Block& b = *self.block;
  const int parity = self.votes++ & 1;
  b.votes[parity] += predicate != 0;
  b.barrier.sync();
  const int n = b.votes[parity];
  b.barrier.sync();
  if (self.rank == 0) b.votes[parity] = 0;  // everyone has read it; reused two calls later
  return n;
}

}  // namespace emu

// Occupancy hints for ptxas only (cuda_runtime.h defines the macro for nvcc alone).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

inline void __syncthreads() { emu::self.block->barrier.sync(); }
inline int __syncthreads_count(int p) { return emu::block_vote(p); }
inline int __syncthreads_and(int p) { return emu::block_vote(p) == int(emu::self.launch->nthreads); }
inline int __syncthreads_or(int p) { return emu::block_vote(p) != 0; }
[[noreturn]] inline void __trap() { emu::device_error("__trap() called"); }

// Warp-level primitives.
template <class T>
T __shfl_sync(unsigned mask, T var, int src, int width = 32) {
  const unsigned lane = emu::lane_id();
  return emu::shuffle(mask, var, (lane & ~unsigned(width - 1)) + (src & (width - 1)), "__shfl_sync");
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const unsigned lane = emu::lane_id();
  return emu::shuffle(mask, var, lane % width < delta ? lane : lane - delta, "__shfl_up_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const unsigned lane = emu::lane_id();
  return emu::shuffle(mask, var, lane % width + delta >= unsigned(width) ? lane : lane + delta, "__shfl_down_sync");
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const unsigned lane = emu::lane_id(), src = lane ^ lane_mask;
  return emu::shuffle(mask, var, src / width > lane / width ? lane : src, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto all = emu::exchange(mask, predicate != 0, "__ballot_sync");
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) r |= unsigned((mask >> l & 1u) && all[l]) << l;
  return r;
}
inline int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == mask; }
inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::exchange(mask, 0, "__syncwarp"); }
inline unsigned __activemask() {
  std::lock_guard lock(emu::warp().m);
  return ~emu::warp().exited;
}
template <class T, class Op>
T warp_reduce(unsigned mask, T v, Op op, const char* what) {
  const auto all = emu::exchange(mask, emu::bits(v), what);
  T r = v;
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1u) r = op(r, emu::unbits<T>(all[l]));
  return r;
}
template <class T>
T __reduce_add_sync(unsigned mask, T v) {
  const auto all = emu::exchange(mask, emu::bits(v), "__reduce_add_sync");
  T r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1u) r += emu::unbits<T>(all[l]);
  return r;
}
template <class T>
T __reduce_min_sync(unsigned mask, T v) {
  return warp_reduce(mask, v, [](T a, T b) { return std::min(a, b); }, "__reduce_min_sync");
}
template <class T>
T __reduce_max_sync(unsigned mask, T v) {
  return warp_reduce(mask, v, [](T a, T b) { return std::max(a, b); }, "__reduce_max_sync");
}

// Atomics (sequentially consistent: at least as strong as the GPU's, and visible to TSan) and fences. Each
// first checks whether the launch has failed, so a thread spinning on a flag stops when the others are gone.
namespace emu {
template <class T>
std::atomic_ref<T> atomic(T* p) {
  if (self.launch->failed) throw Abort{};
  return std::atomic_ref<T>(*p);
}
}  // namespace emu
template <class T> T atomicAdd(T* p, T v) { return emu::atomic(p).fetch_add(v); }
template <class T> T atomicSub(T* p, T v) { return emu::atomic(p).fetch_sub(v); }
template <class T> T atomicExch(T* p, T v) { return emu::atomic(p).exchange(v); }
template <class T> T atomicAnd(T* p, T v) { return emu::atomic(p).fetch_and(v); }
template <class T> T atomicOr(T* p, T v) { return emu::atomic(p).fetch_or(v); }
template <class T> T atomicXor(T* p, T v) { return emu::atomic(p).fetch_xor(v); }
template <class T>
T atomicCAS(T* p, T compare, T v) {
  emu::atomic(p).compare_exchange_strong(compare, v);
  return compare;
}
namespace emu {
// atomicMax/atomicMin: replace *p by v while v beats it (before(a, b): a must give way to b).
template <class T, class Before>
T atomic_extremum(T* p, T v, Before before) {
  auto a = atomic(p);
  T old = a.load();
  while (before(old, v) && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
}  // namespace emu
template <class T> T atomicMax(T* p, T v) { return emu::atomic_extremum(p, v, [](T a, T b) { return a < b; }); }
template <class T> T atomicMin(T* p, T v) { return emu::atomic_extremum(p, v, [](T a, T b) { return b < a; }); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Loads through the read-only / streaming caches are plain loads here.
template <class T> T __ldg(const T* p) { return *p; }
template <class T> T __ldcg(const T* p) { return *p; }
template <class T> T __ldcs(const T* p) { return *p; }
template <class T> void __stcg(T* p, T v) { *p = v; }
template <class T> void __stcs(T* p, T v) { *p = v; }

// cuda_runtime.h declares this C++ form for nvcc only.
template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// Programmatic dependent launch: launches on a stream are serialized here, so the dependency is always met.
inline void cudaGridDependencySynchronize() {}
inline void cudaTriggerProgrammaticLaunchCompletion() {}

namespace emu {

inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return Config{grid, block, {1, 1, 1}, smem, stream, false};
}

// `k<<<cfg>>>(args);` becomes `emu::chevron(emu::config(cfg), k, args);`: a launch error is left for
// cudaGetLastError, as with <<<>>>.
template <class... P, class... A>
void chevron(const Config& cfg, void (*kernel)(P...), A&&... args) {
  launch(cfg, kernel, std::forward<A>(args)...);
}

// The configuration of cudaLaunchKernelEx (and cudaOccupancyMaxActiveClusters): cluster and cooperative attributes.
inline Config config_of(const cudaLaunchConfig_t* c) {
  Config cfg{c->gridDim, c->blockDim, {1, 1, 1}, c->dynamicSmemBytes, c->stream, false};
  for (unsigned i = 0; i < c->numAttrs; ++i) {
    const cudaLaunchAttribute& a = c->attrs[i];
    if (a.id == cudaLaunchAttributeClusterDimension)
      cfg.cluster = dim3(a.val.clusterDim.x, a.val.clusterDim.y, a.val.clusterDim.z);
    else if (a.id == cudaLaunchAttributeCooperative)
      cfg.cooperative = a.val.cooperative != 0;
  }
  return cfg;
}

template <class... P, class... A>
cudaError_t launch_ex(const cudaLaunchConfig_t* c, void (*kernel)(P...), A&&... args) {
  return launch(config_of(c), kernel, std::forward<A>(args)...);
}

template <class... P, size_t... I>
cudaError_t launch_packed(const Config& cfg, void (*kernel)(P...), void** args, std::index_sequence<I...>) {
  return launch(cfg, kernel, *static_cast<std::decay_t<P>*>(args[I])...);
}

template <class... P>
cudaError_t launch_cooperative(void (*kernel)(P...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                               cudaStream_t stream = nullptr) {
  Config cfg{grid, block, {1, 1, 1}, smem, stream, true};
  return launch_packed(cfg, kernel, args, std::index_sequence_for<P...>{});
}

}  // namespace emu
