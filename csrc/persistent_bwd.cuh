#pragma once
// Persistent LSTM backward (sm_90, issue 14): the layout of persistent_fwd.cuh run backwards in time. CTA c
// owns the units [c*HC, (c+1)*HC) and keeps the rows of U for them (U transposed: 4H x HC) in shared memory; at
// step t it forms dh_t = dgx_{t+1} U^T for its units from the slice's gate gradients of every unit, then its
// units' gate gradients of step t, and pushes them (4 x HC per row) into every peer's copy through distributed
// shared memory: one cluster barrier per step. The arithmetic is the step kernels' (lstm_kernels.cuh): the same
// running gradients dh, dc and carried output gradient, here in registers, and the same rounding of the gate
// gradients to the storage type before they enter the product. As in the forward, the step's writes (dgx) and the
// loads of the next step's inputs go between the cluster barrier's arrive and its wait.
//
// Where U's rows and the doubled gradient buffer outgrow shared memory (float32 from H = 364, float16 and bfloat16
// from 462: at H = 512 in float32, 256 KiB of U and 128 KiB of buffers per CTA), the kernel (kRegK =
// kPersistBwdRegK) keeps the first kRegK rows of each thread's part of k in registers (persist_dot) and the
// gradients in one buffer: a second cluster barrier a step, between the product's reads of step t + 1's gradients
// and the push of step t's.
#include "persistent_fwd.cuh"

namespace maskrnn {

// U's rows (of the 4H of U transposed) a thread of the backward may hold in registers (see the top), in float32
// accumulation (float32, float16, bfloat16): 112 of the 255 a thread may have (the kernel's own work takes ~110).
#ifndef MASKRNN_PERSIST_BWD_REG_K
#define MASKRNN_PERSIST_BWD_REG_K 112
#endif
template <typename T> constexpr int kPersistBwdRegK = std::is_same_v<acc_t<T>, float> ? MASKRNN_PERSIST_BWD_REG_K : 0;

// persist_dot's partial sums, the gate gradients of the slice's rows, double-buffered (one buffer where kRegK > 0;
// accumulation type), then U's rows (storage type; persist_smem_rows(4H, kRegK) of them where kRegK > 0, and more
// than any GPU has where that split does not hold).
template <typename T, int kRegK = 0>
constexpr size_t persist_bwd_smem(int H, int HC) {
  if (kRegK && persist_smem_rows(4 * H, kRegK) < 0) return ~size_t(0);
  const size_t rows = kRegK ? size_t(persist_smem_rows(4 * H, kRegK)) : size_t(4 * H);
  return persist_red_smem<acc_t<T>>(1, HC) + (kRegK ? 1 : 2) * sizeof(acc_t<T>) * size_t(4 * H) * kPersistRows +
         sizeof(T) * rows * HC;
}

// The backwards' U rows (LSTM and GRU: U transposed, K = G*H rows), those of one product: U^T's rows [k0, k0 + KA)
// for the CTA's units j0 + u (u < HC; zero past H) of U's row-major (H x K) array, U^T's row k0 + k of unit u at
// Us[s * HC + u] for k = persist_smem_k(s) with parts of KA (k fastest: U's rows are read in order; zero for
// k >= KA, where the last part of k ends past KA), and the thread's register rows ur.u[i][0] = U^T[k0 + q * kq +
// i][j] (zero for no unit).
template <typename T, typename Acc, int kRegK>
__device__ inline void persist_load_ut(const T* U, int H, int K, int k0, int KA, int HC, int j, int jj, bool unit,
                                       T* Us, PersistRegs<Acc, kRegK, 1>& ur) {
  const int kq = (KA + kRowGroups - 1) / kRowGroups, Ks = kRegK ? persist_smem_rows(KA, kRegK) : KA;
  const int tid = int(threadIdx.x);
  for (int i = tid; i < Ks * HC; i += int(blockDim.x)) {
    const int s = i % Ks, u = i / Ks, jg = j - jj + u, k = persist_smem_k(s, kq, kRegK);
    Us[s * HC + u] = jg < H && k < KA ? U[int64_t(jg) * K + k0 + k] : T(0.0f);
  }
  if constexpr (kRegK > 0)
#pragma unroll
    for (int i = 0; i < kRegK; ++i) ur.u[i][0] = unit ? to_acc(U[int64_t(j) * K + k0 + tid / HC * kq + i]) : Acc(0);
}

// Launched like persistent_fwd (persist_bwd_smem<T, kRegK> bytes of dynamic shared memory); the other arguments as
// in scan.h's lstm_bwd.
template <typename T, int kRegK = 0>
__global__ void __launch_bounds__(kMaxPersistThreads, 1)
    persistent_lstm_bwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask,
                        bool zero_output, const T* gx, const T* U, const T* cs, const T* d_out, T* dh, T* dc,
                        T* dgx) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90: the launcher never sends a launch here
#else
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  constexpr int RT = kRowsPerThread, R = kPersistRows;
  const cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks()), tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT;
  const int j = int(cluster.block_rank()) * HC + jj, row0 = int(blockIdx.x) / C * R, K = 4 * H;
  const bool unit = j < H;
  extern __shared__ __align__(16) unsigned char persist_smem_raw[];
  Acc* red = reinterpret_cast<Acc*>(persist_smem_raw);  // persist_dot's partial sums
  constexpr int kBuffers = kRegK ? 1 : 2;
  Acc* dgbuf = red + persist_red_smem<Acc>(1, HC) / sizeof(Acc);  // [kBuffers][4H][R]
  T* Us = reinterpret_cast<T*>(dgbuf + kBuffers * K * R);  // [Ks][HC]: U[j][k] at s * HC + jj
  const int64_t BH = int64_t(B) * H;
  PersistRegs<Acc, kRegK, 1> ur;  // U's other rows: thread (jj, q)'s part's first kRegK
  persist_load_ut(U, H, K, 0, K, HC, j, jj, unit, Us, ur);
  bool ok[RT];
  Acc dhr[RT], dcr[RT], carry[RT];
#pragma unroll
  for (int i = 0; i < RT; ++i) {
    const int64_t s = int64_t(row0 + r0 + i) * H + j;
    ok[i] = unit && row0 + r0 + i < B;
    dhr[i] = ok[i] ? to_acc(dh[s]) : Acc(0);
    dcr[i] = ok[i] ? to_acc(dc[s]) : Acc(0);
    carry[i] = Acc(0);
  }
  cluster.sync();  // every CTA of the cluster has started before its peers push into it

  // dh <- (gate gradients of step t) U^T for the rows real at step t (n rows computed there), from the buffer
  // pushed at step t. Every thread of the CTA calls it (persist_dot).
  auto product = [&](const Acc* dgT, int t, int n) {
    Acc acc[RT][1] = {};
    persist_dot(dgT, Us, K, HC, jj, r0, 0, 1, red, acc, ur);
#pragma unroll
    for (int i = 0; i < RT; ++i)
      if (ok[i] && is_real(mask, t, B, row0 + r0 + i, n)) dhr[i] = acc[i][0];
  };
  // A step's inputs at the thread's rows: its row count n, which rows are real, the output gradient, the gates'
  // activations and the cell states before and after. Loaded for step t - 1 between step t's cluster barrier's
  // arrive and wait (as persistent_fwd's), so that their latency overlaps the barrier's rather than open the step.
  struct StepIn {
    int n;
    bool real[RT];
    Acc a[RT][4], c_prev[RT], c_t[RT], dout[RT];
  };
  auto load = [&](int t) {
    StepIn in;
    in.n = rows_at(sizes, t, B);
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int b = row0 + r0 + i;
      const int64_t o = t * BH + int64_t(b) * H + j, row = (t * BH + int64_t(b) * H) * 4 + j;
      in.real[i] = ok[i] && is_real(mask, t, B, b, in.n);
      in.dout[i] = ok[i] ? to_acc(d_out[o]) : Acc(0);
#pragma unroll
      for (int g = 0; g < 4; ++g) in.a[i][g] = in.real[i] ? to_acc(gx[row + g * H]) : Acc(0);
      in.c_prev[i] = in.real[i] ? to_acc(cs[o]) : Acc(0);
      in.c_t[i] = in.real[i] ? to_acc(cs[o + BH]) : Acc(0);
    }
    return in;
  };
  StepIn in = load(steps - 1);  // steps >= 1: the launcher launches no empty scan
  int phase = 0;                // pushes so far: the last one is in dgbuf[phase % kBuffers]
  bool next_active = false;     // whether step t + 1 was computed for the slice (and its gradients pushed)
  int n_next = 0;               // rows computed at step t + 1
  for (int t = steps - 1; t >= 0; --t) {
    const int n = in.n;
    const bool active = n > row0;  // the same for the whole cluster
    if (next_active) product(dgbuf + (phase % kBuffers) * K * R, t + 1, n_next);
    Acc d[RT][4] = {};
    T dg[RT][4];  // the gate gradients into dgx (0 where the row is not real)
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      if (!ok[i]) continue;
      if (!in.real[i]) {
#pragma unroll
        for (int g = 0; g < 4; ++g) dg[i][g] = from_acc<T>(Acc(0));
        carry[i] = (zero_output || t == 0) ? Acc(0) : carry[i] + in.dout[i];
        continue;
      }
      Acc dd[4];
      const Acc dht = dhr[i] + in.dout[i] + carry[i];
      carry[i] = Acc(0);
      lstm_cell_bwd(in.a[i], in.c_prev[i], in.c_t[i], dht, dcr[i], dd);
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        dg[i][g] = from_acc<T>(dd[g]);
        d[i][g] = to_acc(dg[i][g]);
      }
    }
    // dgx's writes and the next step's loads: inside the barrier where there is one (cluster_sync_around).
    auto store_and_load = [&] {
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        if (!ok[i]) continue;
        const int64_t row = (t * BH + int64_t(row0 + r0 + i) * H) * 4 + j;
#pragma unroll
        for (int g = 0; g < 4; ++g) dgx[row + g * H] = dg[i][g];
      }
      if (t > 0) in = load(t - 1);
    };
    if (active) {
      // One buffer: every CTA's product has read step t + 1's gradients before any peer writes step t's. (The
      // active steps are a prefix of time, so a step without a product here pushes into a buffer none has read.)
      if (kBuffers == 1 && next_active) cluster.sync();
      persist_push<T, 4>(cluster, dgbuf + ((phase + 1) % kBuffers) * K * R, H, HC, unit, j, r0,
                         [&](int g, int i) { return d[i][g]; });
      // step t's gradients are everywhere; with two buffers, every read of the other one is done
      cluster_sync_around(cluster, store_and_load);
      ++phase;
    } else {
      store_and_load();
    }
    next_active = active;
    n_next = n;
  }
  if (next_active) product(dgbuf + (phase % kBuffers) * K * R, 0, n_next);  // the gradient of h0
#pragma unroll
  for (int i = 0; i < RT; ++i) {
    if (!ok[i]) continue;
    const int64_t s = int64_t(row0 + r0 + i) * H + j;
    dh[s] = from_acc<T>(dhr[i]);
    dc[s] = from_acc<T>(dcr[i]);
  }
#endif
}

}  // namespace maskrnn
