#pragma once
// The cooperative persistent backwards (issue 14), LSTM first: persistent_coop.cuh's layout run backwards in time, for
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
  constexpr int RT = kCoopRowsPerThread;
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

// The cooperative GRU backward, both variants: persistent_gru_bwd.cuh's data flow (see there) with the tapes as
// the exchange buffers. reset_after: dgr_t = (dz, dr, dhh * r), and dh_{t-1} = d * z + dgr_t U^T, one barrier a
// step. Not reset_after: dgx_t's dhh_t, a barrier, v = dhh_t U_h^T, dr_t into dgx_t, dh += r * v; the next step
// opens with a barrier and dh += (dz_t, dr_t) U_zr^T. Running gradients dh and carry in scratch ((B,H) each).
template <typename T, bool kResetAfter>
__global__ void __launch_bounds__(kMaxPersistThreads)
    persistent_coop_gru_bwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask,
                            bool zero_output, const T* gx, const T* U, const T* hs, const T* hr, const T* d_out,
                            T* dh, T* dgx, T* dgr, acc_t<T>* scratch) {
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  constexpr int RT = kCoopRowsPerThread;
  const cg::grid_group grid = cg::this_grid();
  const int tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT, RB = int(blockDim.x) / HC * RT, K = 3 * H;
  const int j = int(blockIdx.x) * HC + jj;
  const bool unit = j < H;
  extern __shared__ __align__(128) unsigned char persist_coop_gru_bwd_smem[];
  Acc* dgT = reinterpret_cast<Acc*>(persist_coop_gru_bwd_smem);  // [kCoopDepth][RB]
  T* Us = reinterpret_cast<T*>(dgT + kCoopDepth * RB);            // [3H][HC]: U[j][k] at k * HC + jj
  const int64_t BH = int64_t(B) * H;
  Acc *dhs = scratch, *carry = scratch + BH;

  for (int i = tid; i < K * HC; i += int(blockDim.x)) {  // k fastest: U's rows are read in order
    const int k = i % K, u = i / K, jg = j - jj + u;
    Us[k * HC + u] = jg < H ? U[int64_t(jg) * K + k] : T(0.0f);
  }
  for (int b = r0; b < B; b += RB)
    for (int i = 0; i < RT && unit && b + i < B; ++i) {
      const int64_t s = int64_t(b + i) * H + j;
      dhs[s] = to_acc(dh[s]);
      carry[s] = Acc(0);
    }
  // v[rows of the block at rb0] = src[:, k0 : k0 + KA] Us[k0 : k0 + KA]^T, src the (B, 3H) tape of one step.
  auto product = [&](const T* src, int k0, int KA, int rb0, Acc (&v)[RT][1]) {
    coop_product(src + k0, B, K, KA, HC, rb0, RB, jj, r0, unit, Us + k0 * HC, dgT, 0, 1, v);
  };
  // dh += the gradients of step t (n rows computed there) times U^T (reset_after) or U_zr^T, after a barrier.
  auto into_dh = [&](int t, int n) {
    grid.sync();
    for (int rb0 = 0; rb0 < n; rb0 += RB) {
      Acc v[RT][1] = {};
      product((kResetAfter ? dgr : dgx) + t * BH * 3, 0, kResetAfter ? K : 2 * H, rb0, v);
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        const int b = rb0 + r0 + i;
        if (unit && b < B && is_real(mask, t, B, b, n)) dhs[int64_t(b) * H + j] += v[i][0];
      }
    }
  };
  int n_next = 0;  // rows computed at step t + 1
  for (int t = steps - 1; t >= 0; --t) {
    if (n_next > 0) into_dh(t + 1, n_next);  // grid-uniform
    const int n = rows_at(sizes, t, B);
    for (int b = r0; b < B; b += RB)
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        if (!unit || b + i >= B) continue;
        const int64_t s = int64_t(b + i) * H + j, o = t * BH + s, row = (t * BH + int64_t(b + i) * H) * 3 + j;
        if (!is_real(mask, t, B, b + i, n)) {
#pragma unroll
          for (int g = 0; g < 3; ++g) {
            dgx[row + g * H] = from_acc<T>(Acc(0));
            if constexpr (kResetAfter) dgr[row + g * H] = from_acc<T>(Acc(0));
          }
          carry[s] = (zero_output || t == 0) ? Acc(0) : carry[s] + to_acc(d_out[o]);
          continue;
        }
        const Acc z = to_acc(gx[row]), hh = to_acc(gx[row + 2 * H]);
        Acc dt = dhs[s] + to_acc(d_out[o]) + carry[s], dz, dhh;
        carry[s] = Acc(0);
        gru_cell_bwd(z, hh, to_acc(hs[o]), dt, dz, dhh);
        dhs[s] = dt;
        const T dz_t = from_acc<T>(dz), dhh_t = from_acc<T>(dhh);
        dgx[row] = dz_t;
        dgx[row + 2 * H] = dhh_t;
        if constexpr (kResetAfter) {  // dr = dhh * (h U_h + b_h) * r(1-r)
          const Acc r_gate = to_acc(gx[row + H]);
          const T dr_t = from_acc<T>(dhh * to_acc(hr[o]) * r_gate * (Acc(1) - r_gate));
          dgx[row + H] = dr_t;
          dgr[row] = dz_t;
          dgr[row + H] = dr_t;
          dgr[row + 2 * H] = from_acc<T>(dhh * r_gate);
        }
      }
    if (!kResetAfter && n > 0) {  // v = dhh_t U_h^T: the gradient of r * h_{t-1} -> dr_t, and r * v into dh
      grid.sync();
      for (int rb0 = 0; rb0 < n; rb0 += RB) {
        Acc v[RT][1] = {};
        product(dgx + t * BH * 3, 2 * H, H, rb0, v);
#pragma unroll
        for (int i = 0; i < RT; ++i) {
          const int b = rb0 + r0 + i;
          if (!unit || b >= B || !is_real(mask, t, B, b, n)) continue;
          const int64_t o = t * BH + int64_t(b) * H + j, row = (o - j) * 3 + j;
          const Acc r_gate = to_acc(gx[row + H]);
          dgx[row + H] = from_acc<T>(v[i][0] * to_acc(hs[o]) * r_gate * (Acc(1) - r_gate));
          dhs[int64_t(b) * H + j] += v[i][0] * r_gate;
        }
      }
    }
    n_next = n;
  }
  if (n_next > 0) into_dh(0, n_next);  // the gradient of h0
  for (int b = r0; b < B; b += RB)
    for (int i = 0; i < RT && unit && b + i < B; ++i) {
      const int64_t s = int64_t(b + i) * H + j;
      dh[s] = from_acc<T>(dhs[s]);
    }
}

}  // namespace maskrnn
