#pragma once
// The cooperative persistent forward (issue 14): for scans whose U does not fit one thread-block cluster's
// shared memory (H = 1024, float32 LSTM at H = 512), and GPUs without clusters. One launch per call of
// ceil(H / HC) CTAs, all co-resident (a cooperative launch); CTA c owns the units [c*HC, (c+1)*HC) for every
// batch row and keeps their slice of U (H x G x HC, storage type) in shared memory for the whole scan, so U is
// read from global memory once. There is no copy of h on chip: the tape hs is the exchange buffer. At step t
// every CTA reads h_{t-1} = hs[t] of its rows for all units (through L2: __ldcg, as L1 is not coherent between
// SMs), in chunks of kCoopDepth units staged in shared memory, and writes h_t of its units into hs[t+1]; one
// grid barrier (grid.sync(), before the step's product) orders the writes of step t - 1 before the reads of
// step t. hs[t] and hs[t+1] are different memory, so one barrier a step suffices. GRU without reset_after
// exchanges r * h_{t-1} the same way through its tape hr[t], with a second barrier in mid-step. A step where no
// row is computed (sizes[t] == 0) has no product and no barrier: the next computed step's barrier orders its
// carries.
//
// A CTA's threads: (row group, unit) pairs, kCoopRowsPerThread rows each, with as many row groups as fit
// kMaxPersistThreads (or as the batch needs); a CTA loops over blocks of those rows. The gate
// math and tape writes are the one-cluster kernel's (persist_cell, persist_gru_gates), the product an FMA loop
// (coop_dot) in every dtype: float16/bfloat16 multiply in fp32 here (tensor cores are left for later). The
// states run in the tape for float32/float64; float16/bfloat16 run them in float32 in scan.h's scratch (h, then
// c: (B,H) each), as the step kernels do, and the product reads the storage-type h of hs, as the one-cluster
// tensor-core kernel does.
#include <cooperative_groups.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "persistent_fwd.cuh"
#include "tile.cuh"

namespace maskrnn {

constexpr int kCoopDepth = 64;  // units of h per chunk staged in shared memory
constexpr int kCoopRowsPerThread = 2;  // a thread's rows in the cell math and the product

// Row groups of a CTA of HC units over B rows: kCoopRowsPerThread rows a thread, at most kMaxPersistThreads threads.
__host__ __device__ constexpr int coop_row_groups(int B, int HC) {
  const int fit = kMaxPersistThreads / HC, need = (B + kCoopRowsPerThread - 1) / kCoopRowsPerThread;
  return need < 1 ? 1 : need < fit ? need : fit;
}

// Shared memory of one CTA: the h chunk [kCoopDepth][rows] (accumulation type), then U's slice [H][G][HC].
template <typename T, Cell C>
constexpr size_t coop_smem(int B, int H, int HC) {
  return sizeof(acc_t<T>) * kCoopDepth * coop_row_groups(B, HC) * kCoopRowsPerThread +
         sizeof(T) * size_t(H) * kGates<C> * HC;
}

// acc[i][g] += sum over k < K of hT[k][r0 + i] * Us[(k * G + g) * HC + jj] for the gates g in [g0, g1): the
// thread's kCoopRowsPerThread rows at unit jj; ld: hT's row stride (the row block's RB rows).
template <int G, typename Acc, typename T>
__device__ inline void coop_dot(const Acc* hT, const T* Us, int K, int HC, int jj, int r0, int g0, int g1, int ld,
                                Acc (&acc)[kCoopRowsPerThread][G]) {
#pragma unroll 2
  for (int k = 0; k < K; ++k) {
    Acc hv[kCoopRowsPerThread];
#pragma unroll
    for (int i = 0; i < kCoopRowsPerThread; ++i) hv[i] = hT[k * ld + r0 + i];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g < g0 || g >= g1) continue;
      const Acc u = to_acc(Us[(k * G + g) * HC + jj]);
#pragma unroll
      for (int i = 0; i < kCoopRowsPerThread; ++i) acc[i][g] += hv[i] * u;
    }
  }
}

// acc[i][g] += (src Us)[rb0 + r0 + i][g, jj] for g in [g0, g1): src (B,K), rows ld apart, read through L2 in
// chunks staged in hT; Us [K][G][HC]. Every thread of the block calls it (barriers).
template <int G, typename T, typename Acc>
__device__ inline void coop_product(const T* src, int B, int64_t ld, int K, int HC, int rb0, int RB, int jj, int r0,
                                    bool unit, const T* Us, Acc* hT, int g0, int g1,
                                    Acc (&acc)[kCoopRowsPerThread][G]) {
  for (int k0 = 0; k0 < K; k0 += kCoopDepth) {
    const int kc = K - k0 < kCoopDepth ? K - k0 : kCoopDepth;
    __syncthreads();  // every thread is done with the previous chunk
    for (int i = int(threadIdx.x); i < RB * kCoopDepth; i += int(blockDim.x)) {
      const int r = i / kCoopDepth, kk = i % kCoopDepth, b = rb0 + r;
      hT[kk * RB + r] = b < B && kk < kc ? to_acc(__ldcg(src + b * ld + k0 + kk)) : Acc(0);
    }
    __syncthreads();
    if (unit) coop_dot(hT, Us + k0 * G * HC, kc, HC, jj, r0, g0, g1, RB, acc);
  }
}

// Launched cooperatively as ceil(H / HC) CTAs of coop_row_groups(B, HC) * HC threads with coop_smem bytes of
// dynamic shared memory. state: float16/bfloat16 only (see the top). The other arguments as persistent_fwd's.
template <typename T, Cell kCell>
__global__ void __launch_bounds__(kMaxPersistThreads)
    persistent_coop_fwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask, bool zero_output,
                        T* gx, const T* U, const T* b_rec, T* out, T* hs, T* tape, acc_t<T>* state) {
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  constexpr int G = kGates<kCell>, RT = kCoopRowsPerThread;
  constexpr bool kLstm = kCell == Cell::kLstm, kSplit = kCell == Cell::kGru, kSep = kSeparateState<T>;
  const cg::grid_group grid = cg::this_grid();
  const int tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT, RB = int(blockDim.x) / HC * RT;
  const int j = int(blockIdx.x) * HC + jj;
  const bool unit = j < H;
  extern __shared__ __align__(128) unsigned char persist_coop_smem[];
  Acc* hT = reinterpret_cast<Acc*>(persist_coop_smem);  // [kCoopDepth][RB]
  T* Us = reinterpret_cast<T*>(hT + kCoopDepth * RB);   // [H][G][HC]: U[k][g*H + j] at (k*G + g)*HC + jj
  const int64_t BH = int64_t(B) * H;
  for (int i = tid; i < H * G * HC; i += int(blockDim.x)) {
    const int k = i / (G * HC), g = i / HC % G, u = j - jj + i % HC;
    Us[i] = u < H ? U[int64_t(k) * G * H + g * H + u] : T(0.0f);
  }
  Acc bias[G] = {};
  if (kCell == Cell::kGruResetAfter && unit)
    for (int g = 0; g < G; ++g) bias[g] = to_acc(b_rec[g * H + j]);
  // The states of row b at unit j (s = b * H + j) after step t - 1, and their update after step t.
  auto h_at = [&](int t, int64_t s) { return kSep ? state[s] : to_acc(hs[t * BH + s]); };
  auto c_at = [&](int t, int64_t s) { return kSep ? state[BH + s] : to_acc(tape[t * BH + s]); };
  if constexpr (kSep)
    for (int b = r0; b < B; b += RB)
      for (int i = 0; i < RT && unit && b + i < B; ++i) {
        const int64_t s = int64_t(b + i) * H + j;
        state[s] = to_acc(hs[s]);
        if (kLstm) state[BH + s] = to_acc(tape[s]);
      }

  for (int t = 0; t < steps; ++t) {
    const int n = rows_at(sizes, t, B);  // the same for the whole grid
    if (n > 0 && t > 0) {  // hs[t] is complete: every CTA wrote its units of it
      grid.sync();
    }
    // One pass over the row blocks: gates [g0, g1) of the product of src (skipped where the block has no
    // computed row), then each row of the thread (real or not) to `row`.
    auto pass = [&](const T* src, int g0, int g1, auto&& row) {
      for (int rb0 = 0; rb0 < B; rb0 += RB) {
        Acc acc[RT][G] = {};
        if (rb0 < n) coop_product(src, B, H, H, HC, rb0, RB, jj, r0, unit, Us, hT, g0, g1, acc);
#pragma unroll
        for (int i = 0; i < RT; ++i) {
          const int b = rb0 + r0 + i;
          if (!unit || b >= B) continue;
          const bool real = is_real(mask, t, B, b, n);
          T* g_row = gx + (t * BH + int64_t(b) * H) * G + j;
          Acc gv[G];
#pragma unroll
          for (int g = 0; g < G; ++g) gv[g] = real ? to_acc(g_row[g * H]) : Acc(0);
          row(real, int64_t(b) * H + j, g_row, gv, acc[i]);
        }
      }
    };
    if constexpr (kSplit) {  // z, r and r * h_{t-1} into hr[t] first; the candidate after the barrier
      pass(hs + t * BH, 0, 2, [&](bool real, int64_t s, T* g_row, const Acc (&gv)[G], const Acc (&acc)[G]) {
        Acc z;
        tape[t * BH + s] = from_acc<T>(real ? persist_gru_gates(gv, acc, h_at(t, s), H, g_row, z) : Acc(0));
      });
      if (n > 0) grid.sync();
    }
    // kSplit: z is back in gx (its pre-activation's place, as the step kernels keep it), so gv[0] is z.
    pass(kSplit ? tape + t * BH : hs + t * BH, kSplit ? 2 : 0, G,
         [&](bool real, int64_t s, T* g_row, const Acc (&gv)[G], const Acc (&acc)[G]) {
           const int64_t o = t * BH + s;
           Acc h = h_at(t, s), c = kLstm ? c_at(t, s) : Acc(0);
           T y = carried_output(out, o, t, BH, zero_output);
           persist_store<T, kCell>(persist_cell<T, kCell>(real, zero_output, gv, acc, bias, gv[0], h, c, y), H, BH, o,
                                   g_row, out, hs, tape);
           if constexpr (kSep) {
             state[s] = h;
             if (kLstm) state[BH + s] = c;
           }
         });
  }
}

// Units per CTA: as few as spread H over every SM (one CTA each), or fewer where MASKRNN_CUDA_COOP_UNITS (tests
// only: many CTAs at small H) says so.
inline int coop_units(int H, int sms) {
  int units = (H + sms - 1) / sms;
  if (const char* v = std::getenv("MASKRNN_CUDA_COOP_UNITS"); v && *v) {
    char* end = nullptr;
    const long cap = std::strtol(v, &end, 10);
    if (*end || cap < 1)
      throw std::invalid_argument(std::string("MASKRNN_CUDA_COOP_UNITS must be a positive integer; got '") + v + "'");
    units = int(cap < units ? cap : units);
  }
  return units < 1 ? 1 : units;
}

// Runs a cooperative kernel (arguments: steps, B, H, HC, p.n_rows, mask, zero_output, then args) where every CTA
// it needs can be resident at once, else raises why. Only MASKRNN_CUDA_KERNEL=cooperative runs it (persistent.cuh).
// smem(B, H, HC): its dynamic shared memory per CTA.
template <typename... P, typename... A>
void run_cooperative(const ScanParams& p, size_t (*smem)(int, int, int), void (*kernel)(P...), A... args) {
  std::string why;
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const int most = coop_units(p.H, sms), ctas = (p.H + most - 1) / most;
  const int units = (p.H + ctas - 1) / ctas;  // no CTA without units
  const int threads = coop_row_groups(p.B, units) * units;
  const size_t bytes = smem(p.B, p.H, units);
  const size_t limit = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  if (!device_attribute(cudaDevAttrCooperativeLaunch)) {
    why = "this GPU has no cooperative launch";
  } else if (bytes > limit) {
    why = "at H=" + std::to_string(p.H) + " a CTA of " + std::to_string(units) + " units needs " +
          std::to_string(bytes) + " bytes of shared memory (at most " + std::to_string(limit) + ")";
  } else {
    MASKRNN_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    int per_sm = 0;  // 0 where MIG slices, MPS limits or other kernels leave no room
    MASKRNN_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, bytes));
    if (per_sm * sms < ctas)
      why = "only " + std::to_string(per_sm * sms) + " of its " + std::to_string(ctas) + " CTAs (" +
            std::to_string(bytes) + " bytes of shared memory each) can be resident on this GPU";
  }
  if (!why.empty()) throw std::runtime_error("MASKRNN_CUDA_KERNEL=cooperative cannot run this scan: " + why);
  if (p.T == 0) return;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(ctas));
  cfg.blockDim = dim3(unsigned(threads));
  cfg.dynamicSmemBytes = bytes;
  cfg.stream = p.stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  MASKRNN_CHECK(cudaLaunchKernelEx(&cfg, kernel, p.T, p.B, p.H, units, p.n_rows, p.mask, p.zero_output, args...));
  MASKRNN_LAUNCH_CHECK();
}

}  // namespace maskrnn
