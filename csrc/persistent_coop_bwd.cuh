#pragma once
// The cooperative persistent LSTM backward (issue 14): persistent_coop.cuh's layout run backwards in time, for
// scans whose U does not fit one cluster. CTA c owns the units [c*HC, (c+1)*HC) for every batch row and keeps the
// rows of U for them (U transposed: 4H x HC, storage type) in shared memory. The gate gradients tape dgx is the
// exchange buffer: at step t every CTA forms dh_t = dgx_{t+1} U^T for its units from every unit's gate gradients
// of step t + 1 (read through L2 in staged chunks, after one grid barrier), then writes its units' gate gradients
// of step t into dgx_t. The arithmetic is the step kernels' and the one-cluster kernel's (persistent_bwd.cuh):
// the same running gradients dh, dc and carried output gradient, here in scan.h's scratch (accumulation type,
// (B,H) each, each thread its own entries), and the gate gradients rounded to the storage type before they enter
// the product (they are read back from dgx).
#include "persistent_coop.cuh"

namespace maskrnn {

// Launched like persistent_coop_fwd (coop_smem<T, Cell::kLstm> bytes: the same chunk and slice sizes). scratch:
// 3 (B,H) accumulation-type buffers (dh, dc, carry). The other arguments as in scan.h's lstm_bwd.
template <typename T>
__global__ void __launch_bounds__(kMaxPersistThreads)
    persistent_coop_lstm_bwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask,
                             bool zero_output, const T* gx, const T* U, const T* cs, const T* d_out, T* dh, T* dc,
                             T* dgx, acc_t<T>* scratch) {
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  constexpr int RT = kRowsPerThread;
  const cg::grid_group grid = cg::this_grid();
  const int tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT, RB = int(blockDim.x) / HC * RT, K = 4 * H;
  const int j = int(blockIdx.x) * HC + jj;
  const bool unit = j < H;
  extern __shared__ __align__(128) unsigned char persist_coop_bwd_smem[];
  Acc* dgT = reinterpret_cast<Acc*>(persist_coop_bwd_smem);  // [kCoopDepth][RB]
  T* Us = reinterpret_cast<T*>(dgT + kCoopDepth * RB);        // [4H][HC]: U[j][k] at k * HC + jj
  const int64_t BH = int64_t(B) * H;
  Acc *dhs = scratch, *dcs = scratch + BH, *carry = scratch + 2 * BH;

  for (int i = tid; i < K * HC; i += int(blockDim.x)) {  // k fastest: U's rows are read in order
    const int k = i % K, u = i / K, jg = j - jj + u;
    Us[k * HC + u] = jg < H ? U[int64_t(jg) * K + k] : T(0.0f);
  }
  for (int b = r0; b < B; b += RB)
    for (int i = 0; i < RT && unit && b + i < B; ++i) {
      const int64_t s = int64_t(b + i) * H + j;
      dhs[s] = to_acc(dh[s]);
      dcs[s] = to_acc(dc[s]);
      carry[s] = Acc(0);
    }
  // dh <- dgx_t U^T for the rows real at step t (n rows computed there), in every row block that has one; every
  // CTA's dgx_t is written (a grid barrier first).
  auto product = [&](int t, int n) {
    grid.sync();
    for (int rb0 = 0; rb0 < n; rb0 += RB) {
      Acc acc[RT][1] = {};
      coop_product(dgx + t * BH * 4, B, K, K, HC, rb0, RB, jj, r0, unit, Us, dgT, 0, 1, acc);
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        const int b = rb0 + r0 + i;
        if (unit && b < B && is_real(mask, t, B, b, n)) dhs[int64_t(b) * H + j] = acc[i][0];
      }
    }
  };
  int n_next = 0;  // rows computed at step t + 1
  for (int t = steps - 1; t >= 0; --t) {
    if (n_next > 0) product(t + 1, n_next);  // grid-uniform
    const int n = rows_at(sizes, t, B);
    for (int b = r0; b < B; b += RB)
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        if (!unit || b + i >= B) continue;
        const int64_t s = int64_t(b + i) * H + j, o = t * BH + s, row = (t * BH + int64_t(b + i) * H) * 4 + j;
        if (!is_real(mask, t, B, b + i, n)) {
#pragma unroll
          for (int g = 0; g < 4; ++g) dgx[row + g * H] = from_acc<T>(Acc(0));
          carry[s] = (zero_output || t == 0) ? Acc(0) : carry[s] + to_acc(d_out[o]);
          continue;
        }
        Acc a[4], dd[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) a[g] = to_acc(gx[row + g * H]);
        const Acc dht = dhs[s] + to_acc(d_out[o]) + carry[s];
        carry[s] = Acc(0);
        Acc dct = dcs[s];
        lstm_cell_bwd(a, to_acc(cs[o]), to_acc(cs[o + BH]), dht, dct, dd);
        dcs[s] = dct;
#pragma unroll
        for (int g = 0; g < 4; ++g) dgx[row + g * H] = from_acc<T>(dd[g]);
      }
    n_next = n;
  }
  if (n_next > 0) product(0, n_next);  // the gradient of h0
  for (int b = r0; b < B; b += RB)
    for (int i = 0; i < RT && unit && b + i < B; ++i) {
      const int64_t s = int64_t(b + i) * H + j;
      dh[s] = from_acc<T>(dhs[s]);
      dc[s] = from_acc<T>(dcs[s]);
    }
}

}  // namespace maskrnn
