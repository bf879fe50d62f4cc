#pragma once
// Host emulation of CUDA launches (see build.py): every CUDA thread of every block of a launch runs on its own
// host thread (emu_workers.h), all at once, so blocks run concurrently as on a GPU. Barriers (__syncthreads, cluster and grid sync)
// are mutex/condition-variable barriers: ThreadSanitizer sees exactly the happens-before order a GPU
// guarantees, so a missing barrier is a reported data race. Each block has its own shared memory (dynamic part
// first, then the static __shared__ variables), filled with 0xFF bytes (NaN) at launch so that reading it
// before writing shows up. A launch is checked like a real one against an H100 (device constants below);
// failures set the error that cudaGetLastError returns, so csrc/check.h raises as it would on a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "emu_workers.h"

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace emu {

// The emulated device: an H100 SXM (sm_90).
constexpr unsigned kSMs = 132, kSMsPerGPC = 16, kThreadsPerSM = 2048, kBlocksPerSM = 32;
constexpr size_t kSmemPerSM = 233472, kSmemOptIn = 232448, kSmemDefault = 49152, kSmemReserved = 1024;
constexpr unsigned kClusterPortable = 8, kClusterMax = 16;

// The last error of the calling host thread (cudaGetLastError) and its explanation (cudaGetErrorString).
inline thread_local cudaError_t last_error = cudaSuccess;
inline thread_local std::string last_message;
inline thread_local cudaError_t last_message_code = cudaSuccess;
inline cudaError_t set_error(cudaError_t code, const std::string& why) {
  last_error = last_message_code = code;
  last_message = why;
  return code;
}

// Per-kernel attributes set by cudaFuncSetAttribute, and the static shared memory each kernel was seen to use.
struct FuncInfo {
  size_t max_dynamic_smem = kSmemDefault;
  bool non_portable_cluster = false;
  size_t static_smem = 0;
};
inline std::mutex funcs_mutex;
inline std::map<const void*, FuncInfo> funcs;
inline FuncInfo func_info(const void* f) {
  std::lock_guard lock(funcs_mutex);
  return funcs[f];
}

struct Abort {};  // unwinds a CUDA thread once its launch has failed

struct Launch;

// A barrier for a fixed set of threads; an exited thread drops out (CUDA: exited threads no longer take part).
// Split arrive/wait models cluster.barrier_arrive()/barrier_wait(). A wait that lasts longer than the deadlock
// timeout fails the launch instead of hanging the test run.
class Barrier {
 public:
  void init(Launch* launch, unsigned count, const char* what) { launch_ = launch, expected_ = count, what_ = what; }
  unsigned long arrive();
  void wait(unsigned long token);
  void sync() { wait(arrive()); }
  void drop();
  void wake() {
    std::lock_guard lock(m_);
    cv_.notify_all();
  }

 private:
  void complete() { arrived_ = 0, ++generation_, cv_.notify_all(); }
  std::mutex m_;
  std::condition_variable cv_;
  Launch* launch_ = nullptr;
  unsigned expected_ = 0, arrived_ = 0;
  unsigned long generation_ = 0;
  const char* what_ = "";
};

struct Warp;  // emu_device.h

struct Block {
  Barrier barrier;
  char* smem = nullptr;
  std::atomic<unsigned> running{0};
  std::atomic<int> votes[2] = {0, 0};  // __syncthreads_count, by parity of the call
  std::vector<std::unique_ptr<Warp>> warps;
};

struct Config {
  dim3 grid, block, cluster{1, 1, 1};
  size_t smem = 0;
  cudaStream_t stream = nullptr;
  bool cooperative = false;
};

struct Launch {
  Config cfg;
  const void* kernel;
  unsigned nthreads, cluster_size;
  size_t dynamic_bytes, region;  // per block: the dynamic part (aligned), then the static variables
  std::unique_ptr<char[]> smem;
  std::vector<Block> blocks;
  std::vector<Barrier> clusters;
  Barrier grid;
  std::mutex m;
  std::map<const void*, size_t> statics;  // static __shared__ variable -> offset after the dynamic part
  size_t static_top = 0;
  std::atomic<bool> failed{false};
  cudaError_t error = cudaSuccess;
  std::string message;

  void fail(cudaError_t code, const std::string& why);
};

struct AsyncCopy {  // a cp.async (cuda_pipeline_primitives.h)
  void* dst;
  const void* src;
  size_t size, zfill;
};

// The calling CUDA thread (set anew for each one: host threads are reused from launch to launch).
struct Thread {
  Launch* launch;
  Block* block;
  unsigned block_rank, rank;  // linear block index in the grid, linear thread index in the block
  unsigned votes = 0;         // __syncthreads_count calls so far
  // cp.async groups (cuda_pipeline_primitives.h): the committed ones first, the open one last.
  std::vector<std::vector<AsyncCopy>> pipeline = std::vector<std::vector<AsyncCopy>>(1);
};
inline thread_local Thread self;

// EMU_ASYNC_ERRORS=1: a fault inside a kernel (cudaErrorLaunchFailure) is reported as a GPU reports it, not by
// its own launch but by the next synchronization (cudaDeviceSynchronize, cudaStreamSynchronize) or the next launch,
// which then does not run. Once reported it is cleared (a real GPU's context stays broken). Default: at the launch.
inline bool async_errors() {
  static const bool on = [] {
    const char* v = std::getenv("EMU_ASYNC_ERRORS");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}
inline std::mutex pending_mutex;
inline cudaError_t pending_error = cudaSuccess;
inline std::string pending_message;

// Reports (and clears) a fault left by an earlier kernel, as the error of the calling runtime call.
inline cudaError_t take_pending() {
  std::lock_guard lock(pending_mutex);
  const cudaError_t e = pending_error;
  if (e == cudaSuccess) return e;
  pending_error = cudaSuccess;
  return set_error(e, "an earlier kernel faulted: " + pending_message);
}

// The compute capability's major number: 9 (an H100), or EMU_SM_MAJOR (below 9: no thread-block clusters).
inline int sm_major() {
  const char* s = std::getenv("EMU_SM_MAJOR");
  return s ? std::atoi(s) : 9;
}

inline std::chrono::seconds deadlock_timeout() {
  const char* s = std::getenv("EMU_DEADLOCK_S");
  return std::chrono::seconds(s ? std::atoi(s) : 300);
}

inline void Launch::fail(cudaError_t code, const std::string& why) {
  {
    std::lock_guard lock(m);
    if (failed) return;
    error = code;
    message = why;
    failed = true;
  }
  for (auto& b : blocks) b.barrier.wake();
  for (auto& c : clusters) c.wake();
  grid.wake();
}

// The cluster of a block (clusters tile the grid; numbered x fastest, like blocks).
inline unsigned cluster_id(const Launch& L, uint3 block) {
  const dim3 c = L.cfg.cluster, g = L.cfg.grid;
  return block.x / c.x + g.x / c.x * (block.y / c.y + g.y / c.y * (block.z / c.z));
}

// Throws Abort in the calling CUDA thread, after failing its launch (device-side error: a trap, a bad barrier).
[[noreturn]] inline void device_error(const std::string& why) {
  self.launch->fail(cudaErrorLaunchFailure, why);
  throw Abort{};
}

inline unsigned long Barrier::arrive() {
  std::unique_lock lock(m_);
  if (launch_->failed) throw Abort{};
  const unsigned long token = generation_;
  if (++arrived_ == expected_) complete();
  return token;
}

inline void Barrier::wait(unsigned long token) {
  std::unique_lock lock(m_);
  const auto deadline = std::chrono::steady_clock::now() + deadlock_timeout();
  while (generation_ == token) {
    if (launch_->failed) throw Abort{};
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && generation_ == token) {
      lock.unlock();
      device_error(std::string("deadlock: ") + what_ + " still waits after the timeout (EMU_DEADLOCK_S)");
    }
  }
}

inline void Barrier::drop() {
  std::lock_guard lock(m_);
  --expected_;
  if (arrived_ > 0 && arrived_ == expected_) complete();
}

// ---- shared memory ----

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// The calling block's instance of the static __shared__ variable `tag` (one tag per declaration and template
// instantiation); build.py rewrites `__shared__ T name[N];` into `auto& name = emu::shared<T[N]>(tag);`.
template <class T>
T& shared(const void* tag) {
  Launch& L = *self.launch;
  size_t offset;
  {
    std::lock_guard lock(L.m);
    auto it = L.statics.find(tag);
    if (it == L.statics.end()) {
      offset = align_up(L.static_top, std::max<size_t>(alignof(T), 16));
      L.static_top = offset + sizeof(T);
      it = L.statics.emplace(tag, offset).first;
    }
    offset = it->second;
  }
  if (offset + sizeof(T) > kSmemDefault) device_error("more than 48 KB of static __shared__ memory (a ptxas error)");
  if (L.dynamic_bytes + offset + sizeof(T) > kSmemOptIn)
    device_error("static + dynamic shared memory exceed 227 KB per block");
  return *reinterpret_cast<T*>(self.block->smem + L.dynamic_bytes + offset);
}

// `extern __shared__ T name[];`: the launch's dynamic shared memory (every such declaration aliases it).
template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(self.block->smem);
}

// ---- launch ----

inline unsigned count(dim3 d) { return d.x * d.y * d.z; }
inline std::string str(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// Blocks of this kernel that fit on one SM (threads, blocks and shared memory; registers are not modelled).
inline unsigned blocks_per_sm(const Config& c, const FuncInfo& f) {
  const unsigned warps = (count(c.block) + 31) / 32;
  const size_t smem = c.smem + f.static_smem + kSmemReserved;
  return std::min<size_t>({kBlocksPerSM, kThreadsPerSM / (warps * 32), kSmemPerSM / smem});
}

// The checks a real launch makes, with the error code it returns.
inline cudaError_t check(const Config& c, const void* kernel) {
  const FuncInfo f = func_info(kernel);
  const dim3 b = c.block, g = c.grid, k = c.cluster;
  if (count(b) == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || count(b) > 1024)
    return set_error(cudaErrorInvalidConfiguration, "block " + str(b) + ": at most (1024,1024,64), 1024 threads");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    return set_error(cudaErrorInvalidConfiguration, "grid " + str(g) + ": at most (2^31-1,65535,65535), none 0");
  if (c.smem > f.max_dynamic_smem)
    return set_error(cudaErrorInvalidValue, std::to_string(c.smem) + " B of dynamic shared memory, more than " +
                                                std::to_string(f.max_dynamic_smem) +
                                                " (cudaFuncAttributeMaxDynamicSharedMemorySize)");
  const unsigned fit = blocks_per_sm(c, f), csize = count(k);
  if (fit == 0) return set_error(cudaErrorInvalidValue, "one block does not fit on an SM");
  if (csize == 0 || g.x % k.x || g.y % k.y || g.z % k.z)
    return set_error(cudaErrorInvalidClusterSize, "cluster " + str(k) + " does not divide grid " + str(g));
  if (csize > 1 && sm_major() < 9) return set_error(cudaErrorInvalidClusterSize, "clusters need sm_90 or newer");
  if (csize > (f.non_portable_cluster ? kClusterMax : kClusterPortable))
    return set_error(cudaErrorInvalidClusterSize, "cluster of " + std::to_string(csize) +
                                                      " blocks (8 portable, 16 with NonPortableClusterSizeAllowed)");
  if (csize > 1 && (csize + fit - 1) / fit > kSMsPerGPC)
    return set_error(cudaErrorInvalidClusterSize, "a cluster of " + std::to_string(csize) +
                                                      " blocks cannot be co-scheduled on one GPC");
  if (c.cooperative && count(g) > fit * kSMs)
    return set_error(cudaErrorCooperativeLaunchTooLarge, "cooperative grid of " + std::to_string(count(g)) +
                                                             " blocks, at most " + std::to_string(fit * kSMs));
  return cudaSuccess;
}

void on_exit(Launch& L, Block& block, unsigned rank);  // emu_device.h: warp and cluster bookkeeping
void add_warps(Block& block, unsigned nthreads);

inline void run(Launch& L, const std::function<void()>& body, unsigned block_rank, unsigned rank) {
  const dim3 g = L.cfg.grid, b = L.cfg.block;
  self = {&L, &L.blocks[block_rank], block_rank, rank, 0};
  blockIdx = {block_rank % g.x, block_rank / g.x % g.y, block_rank / (g.x * g.y)};
  threadIdx = {rank % b.x, rank / b.x % b.y, rank / (b.x * b.y)};
  blockDim = b;
  gridDim = g;
  try {
    body();
  } catch (const Abort&) {
  } catch (const std::exception& e) {
    L.fail(cudaErrorLaunchFailure, e.what());
  }
  on_exit(L, *self.block, rank);
}

// Runs one launch to completion on the calling host thread (launches on a stream are serialized).
inline cudaError_t execute(const Config& cfg, const void* kernel, const std::function<void()>& body) {
  if (const cudaError_t e = take_pending(); e != cudaSuccess) return e;
  if (const cudaError_t e = check(cfg, kernel); e != cudaSuccess) return e;
  Launch L;
  L.cfg = cfg;
  L.kernel = kernel;
  L.nthreads = count(cfg.block);
  L.cluster_size = count(cfg.cluster);
  L.dynamic_bytes = align_up(cfg.smem, 128);
  L.region = L.dynamic_bytes + kSmemDefault;
  const unsigned nblocks = count(cfg.grid);
  // Each block's shared memory starts 128-byte aligned, as a GPU's does (wmma pointers must be 32-byte aligned).
  L.smem.reset(new char[L.region * nblocks + 128]);
  char* const base = L.smem.get() + (128 - reinterpret_cast<std::uintptr_t>(L.smem.get()) % 128) % 128;
  std::memset(base, 0xFF, L.region * nblocks);
  L.blocks = std::vector<Block>(nblocks);
  for (unsigned i = 0; i < nblocks; ++i) {
    L.blocks[i].barrier.init(&L, L.nthreads, "__syncthreads");
    L.blocks[i].smem = base + i * L.region;
    L.blocks[i].running = L.nthreads;
    add_warps(L.blocks[i], L.nthreads);
  }
  L.clusters = std::vector<Barrier>(nblocks / L.cluster_size);
  for (auto& c : L.clusters) c.init(&L, L.cluster_size * L.nthreads, "cluster.sync");
  L.grid.init(&L, nblocks * L.nthreads, "grid.sync");
  run_at_once(size_t(nblocks) * L.nthreads,
              [&](size_t i) { run(L, body, unsigned(i / L.nthreads), unsigned(i % L.nthreads)); });
  {
    std::lock_guard lock(funcs_mutex);
    funcs[kernel].static_smem = std::max(funcs[kernel].static_smem, L.static_top);
  }
  if (L.failed && L.error == cudaErrorLaunchFailure && async_errors()) {
    std::lock_guard lock(pending_mutex);
    pending_error = L.error;
    pending_message = L.message;
    return cudaSuccess;
  }
  if (L.failed) return set_error(L.error, L.message);
  return cudaSuccess;
}

// Stream capture (CUDA graphs): launches on a capturing stream are recorded and replayed by cudaGraphLaunch.
struct Graph {
  std::vector<std::function<cudaError_t()>> nodes;
};
inline std::mutex capture_mutex;
inline std::map<cudaStream_t, std::shared_ptr<Graph>> capturing;

// Enqueues work on a stream: recorded while the stream is captured, else run now.
inline cudaError_t enqueue(cudaStream_t stream, std::function<cudaError_t()> work) {
  {
    std::lock_guard lock(capture_mutex);
    auto it = capturing.find(stream);
    if (it != capturing.end()) {
      it->second->nodes.push_back(std::move(work));
      return cudaSuccess;
    }
  }
  return work();
}

// A typed launch: arguments are converted to the kernel's parameter types and copied now, as CUDA does.
template <class... P, class... A>
cudaError_t launch(const Config& cfg, void (*kernel)(P...), A&&... args) {
  if (const cudaError_t e = check(cfg, reinterpret_cast<const void*>(kernel)); e != cudaSuccess) return e;
  auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
  return enqueue(cfg.stream, [cfg, kernel, params] {
    return execute(cfg, reinterpret_cast<const void*>(kernel), [&] { std::apply(kernel, *params); });
  });
}

}  // namespace emu
