#pragma once
// The choice between the persistent kernels (persistent_fwd.cuh, persistent_bwd.cuh, persistent_gru_bwd.cuh) and
// the step kernels, in one place:
// MASKRNN_CUDA_KERNEL=persistent|cooperative|step forces one (read at every call), and "registers" the persistent
// kernel's variant with part of U in registers where there is one (for tests); unset (or "auto"), the
// persistent kernel runs where it fits: an sm_90 GPU with cluster launch, U's slice for one cluster of at most 16
// CTAs in shared memory (in float32, and the LSTM's and reset_after GRU's backward in float16 and bfloat16: in
// shared memory and registers where shared memory alone is short), and at least one such cluster able to be
// resident; else the step kernels. The cooperative kernels (persistent_coop.cuh,
// persistent_coop_bwd.cuh) run only when forced: on an H100 they took 2-7 times the step kernels' time where they
// were the choice before (H = 512, bench/results/gpu-H100-20261126b/README.md).
// Forced where it cannot run, a kernel raises why.
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "persistent_bwd.cuh"
#include "persistent_coop_bwd.cuh"
#include "persistent_fwd.cuh"
#include "persistent_gru_bwd.cuh"

namespace maskrnn {

enum class KernelChoice { kAuto, kPersistent, kRegisters, kCooperative, kStep };

inline KernelChoice kernel_choice() {
  const char* v = std::getenv("MASKRNN_CUDA_KERNEL");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return KernelChoice::kAuto;
  if (s == "persistent") return KernelChoice::kPersistent;
  if (s == "registers") return KernelChoice::kRegisters;
  if (s == "cooperative") return KernelChoice::kCooperative;
  if (s == "step") return KernelChoice::kStep;
  throw std::invalid_argument("MASKRNN_CUDA_KERNEL must be persistent, registers, cooperative, step, auto or unset; "
                              "got '" + s + "'");
}

struct PersistPlan {
  int ctas = 0, units = 0;  // cluster size C, units per CTA HC
  size_t smem = 0;          // dynamic shared memory per CTA
  std::string why;          // empty when the persistent kernel runs
};

// The cluster size MASKRNN_CUDA_CLUSTER names (1 to 16, read at every call), else 0. For benchmarks and tests:
// which size is faster at a shape is for a GPU to measure (at H = 256 a CTA of 8 runs two warps a scheduler, one
// of 16 one warp: half the product an SM, less latency hidden), and every size gives the same sums (a unit's k
// is split kRowGroups ways whatever the cluster).
inline int cluster_override() {
  const char* v = std::getenv("MASKRNN_CUDA_CLUSTER");
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long c = std::strtol(v, &end, 10);
  if (*end || c < 1 || c > 16)
    throw std::invalid_argument(std::string("MASKRNN_CUDA_CLUSTER must be an integer from 1 to 16; got '") + v + "'");
  return int(c);
}

// Clusters of 8 CTAs (portable) when U's slice fits, else 16 (non-portable: H100 allows them), or the size
// MASKRNN_CUDA_CLUSTER names. smem(H, HC): the kernel's dynamic shared memory per CTA.
inline PersistPlan persist_plan(const ScanParams& p, size_t (*smem)(int, int)) {
  PersistPlan plan;
  const int forced = cluster_override();
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  if (major < 9 || !device_attribute(cudaDevAttrClusterLaunch)) {
    plan.why = "thread-block clusters need sm_90 or newer, this GPU is sm_" + std::to_string(major) + "x";
    return plan;
  }
  const size_t limit = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  bool fits = false;
  int C = 0;
  for (const int size : {8, 16}) {
    C = forced ? forced : size;
    plan.units = (p.H + C - 1) / C;
    plan.ctas = (p.H + plan.units - 1) / plan.units;  // no CTA without units
    plan.smem = smem(p.H, plan.units);
    fits = kRowGroups * plan.units <= kMaxPersistThreads && plan.smem <= limit;
    if (fits || forced) break;
  }
  if (!fits && plan.smem == ~size_t(0)) {  // a variant with part of U in registers whose split does not hold
    plan.why = "at H=" + std::to_string(p.H) + " a thread's part of U's rows is shorter than the rows it would keep "
               "in registers";
  } else if (!fits) {
    plan.why = "at H=" + std::to_string(p.H) + " a " + std::to_string(C) + "-CTA cluster's CTA needs " +
               std::to_string(plan.smem) + " bytes of shared memory (at most " + std::to_string(limit) + ") and " +
               std::to_string(kRowGroups * plan.units) + " threads (at most " + std::to_string(kMaxPersistThreads) +
               ")";
  }
  return plan;
}

// How many clusters of this launch shape can be resident at once (0 where none can: MIG slices, MPS limits), after
// raising the kernel's shared-memory limit to the launch's and allowing clusters over 8 CTAs where it has them.
// Found once per device, kernel and shape, and each attribute set only when it must grow: three runtime calls on
// every launch were ~15 us of a small forward's host time. (The limit is the kernel's, not the shape's: lowering
// it for a smaller shape would fail the next launch of a larger one.)
template <typename K>
int resident_clusters(K* kernel, const cudaLaunchConfig_t& cfg, const PersistPlan& plan) {
  struct Set {
    size_t smem = 0;
    bool non_portable = false;
  };
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, Set> attributes;
  static std::map<std::tuple<int, const void*, size_t, int, unsigned>, int> known;
  int dev = 0;
  MASKRNN_CHECK(cudaGetDevice(&dev));
  const void* f = reinterpret_cast<const void*>(kernel);
  const auto shape = std::make_tuple(dev, f, plan.smem, plan.ctas, cfg.blockDim.x);
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(shape);
  if (it != known.end()) return it->second;
  Set& set = attributes[{dev, f}];
  if (plan.smem > set.smem) {
    MASKRNN_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)));
    set.smem = plan.smem;
  }
  if (plan.ctas > 8 && !set.non_portable) {
    MASKRNN_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    set.non_portable = true;
  }
  int clusters = 0;
  MASKRNN_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
  known.emplace(shape, clusters);
  return clusters;
}

// Runs a persistent kernel (arguments: steps, B, H, HC, p.n_rows, mask, zero_output, then args) and returns
// true, or returns false for the step kernels (see the top). kWarps: CTAs of whole warps (tensor cores).
template <bool kWarps = false, typename... P, typename... A>
bool run_persistent(const ScanParams& p, size_t (*smem)(int, int), void (*kernel)(P...), A... args) {
  const KernelChoice choice = kernel_choice();
  if (choice == KernelChoice::kStep) return false;
  PersistPlan plan = persist_plan(p, smem);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(plan.ctas);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(plan.ctas) * unsigned((p.B + kPersistRows - 1) / kPersistRows));
  cfg.blockDim = dim3(unsigned(kWarps ? round_up(kRowGroups * plan.units, kWarp) : kRowGroups * plan.units));
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = p.stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (plan.why.empty()) {
    const int clusters = resident_clusters(kernel, cfg, plan);
    if (clusters < 1)
      plan.why = "no cluster of " + std::to_string(plan.ctas) + " CTAs with " + std::to_string(plan.smem) +
                 " bytes of shared memory each can be resident on this GPU";
  }
  if (!plan.why.empty()) {
    if (choice == KernelChoice::kPersistent || choice == KernelChoice::kRegisters)
      throw std::runtime_error(std::string("MASKRNN_CUDA_KERNEL=") +
                               (choice == KernelChoice::kPersistent ? "persistent" : "registers") +
                               " cannot run this scan: " + plan.why);
    return false;
  }
  if (p.T == 0) return true;
  MASKRNN_CHECK(cudaLaunchKernelEx(&cfg, kernel, p.T, p.B, p.H, plan.units, p.n_rows, p.mask, p.zero_output,
                                   args...));
  MASKRNN_LAUNCH_CHECK();
  return true;
}

[[noreturn]] inline void throw_no_register_variant() {
  throw std::runtime_error("MASKRNN_CUDA_KERNEL=registers cannot run this scan: it has no variant with part of U in "
                           "registers (the float32 forward and backward have one, and the LSTM's and reset_after "
                           "GRU's backward in float16 and bfloat16)");
}

// run_persistent of the kernel with U's slice all in shared memory (smem, kernel) where it fits, else, where that
// fits instead, of its variant with part of U in registers (reg_smem, reg_kernel: kRegK > 0 of kPersistRegK or
// kPersistBwdRegK; with kRegK = 0 the same kernel, so the first). Forced "registers": the variant, or why not.
template <bool kWarps = false, typename... P, typename... Q, typename... A>
bool run_shared_or_registers(const ScanParams& p, size_t (*smem)(int, int), void (*kernel)(P...),
                             size_t (*reg_smem)(int, int), void (*reg_kernel)(Q...), A... args) {
  const bool variant = reinterpret_cast<const void*>(reg_kernel) != reinterpret_cast<const void*>(kernel);
  if (kernel_choice() == KernelChoice::kRegisters) {
    if (!variant) throw_no_register_variant();
    return run_persistent<kWarps>(p, reg_smem, reg_kernel, args...);
  }
  if (variant && !persist_plan(p, smem).why.empty() && persist_plan(p, reg_smem).why.empty())
    return run_persistent<kWarps>(p, reg_smem, reg_kernel, args...);
  return run_persistent<kWarps>(p, smem, kernel, args...);
}

// Forced cooperative, the cooperative kernel (`coop`, a call of run_cooperative: it runs or raises); else the
// one-cluster kernel (`one`, a call of run_persistent: true where it ran); false: the step kernels.
template <class One, class Coop>
bool one_cluster_or_cooperative(One one, Coop coop) {
  const KernelChoice choice = kernel_choice();
  if (choice == KernelChoice::kStep) return false;
  if (choice != KernelChoice::kCooperative) return one();
  coop();
  return true;
}

// The forward: U's slice all in shared memory where it fits, else (float32) part of it in registers (kPersistRegK:
// LSTM H in [417, 512], GRU [481, 512] (reset_after) or [465, 512]).
template <typename T, Cell kCell>
bool persistent_forward(const ScanParams& p, T* gx, const T* U, const T* b_rec, T* out, T* hs, T* tape) {
  constexpr int kRegK = kPersistRegK<T>;
  return one_cluster_or_cooperative(
      [&] {
        return run_shared_or_registers<kPersistMma<T>>(p, persist_smem<T, kCell>, persistent_fwd<T, kCell>,
                                                       persist_smem<T, kCell, kRegK>, persistent_fwd<T, kCell, kRegK>,
                                                       gx, U, b_rec, out, hs, tape);
      },
      [&] {
        run_cooperative(p, coop_smem<T, kCell>, persistent_coop_fwd<T, kCell>, gx, U, b_rec, out, hs, tape,
                        static_cast<acc_t<T>*>(p.scratch));
      });
}

template <typename T>
bool persistent_lstm_backward(const ScanParams& p, const T* gx, const T* U, const T* cs, const T* d_out, T* dh,
                              T* dc, T* dgx) {
  return one_cluster_or_cooperative(
      [&] {
        constexpr int kRegK = kPersistBwdRegK<T>;  // as the forward: registers where shared memory alone is short
        return run_shared_or_registers(p, persist_bwd_smem<T>, persistent_lstm_bwd<T>, persist_bwd_smem<T, kRegK>,
                                       persistent_lstm_bwd<T, kRegK>, gx, U, cs, d_out, dh, dc, dgx);
      },
      [&] {
        run_cooperative(p, coop_smem<T, Cell::kLstm>, persistent_coop_lstm_bwd<T>, gx, U, cs, d_out, dh, dc, dgx,
                        static_cast<acc_t<T>*>(p.scratch));
      });
}

template <typename T>
bool persistent_gru_backward(const ScanParams& p, const T* gx, const T* U, const T* hs, const T* hr,
                             const T* d_out, T* dh, T* dgx, T* dgr) {
  acc_t<T>* scratch = static_cast<acc_t<T>*>(p.scratch);
  if (p.reset_after)
    return one_cluster_or_cooperative(
        [&] {
          constexpr int kRegK = kPersistBwdRegK<T>;  // as the LSTM's: registers where shared memory alone is short
          return run_shared_or_registers(p, persist_gru_bwd_smem<T, true>, persistent_gru_bwd<T, true>,
                                         persist_gru_bwd_smem<T, true, kRegK>, persistent_gru_bwd<T, true, kRegK>, gx,
                                         U, hs, hr, d_out, dh, dgx, dgr);
        },
        [&] {
          run_cooperative(p, coop_smem<T, Cell::kGru>, persistent_coop_gru_bwd<T, true>, gx, U, hs, hr, d_out, dh,
                          dgx, dgr, scratch);
        });
  return one_cluster_or_cooperative(
      [&] {
        constexpr int kRegK = kPersistGruV1BwdRegK<T>;  // its two products' register rows (persistent_gru_bwd.cuh)
        return run_shared_or_registers(p, persist_gru_bwd_smem<T, false>, persistent_gru_bwd<T, false>,
                                       persist_gru_bwd_smem<T, false, kRegK>, persistent_gru_bwd<T, false, kRegK>, gx,
                                       U, hs, hr, d_out, dh, dgx, dgr);
      },
      [&] {
        run_cooperative(p, coop_smem<T, Cell::kGru>, persistent_coop_gru_bwd<T, false>, gx, U, hs, hr, d_out, dh,
                        dgx, dgr, scratch);
      });
}

}  // namespace maskrnn
