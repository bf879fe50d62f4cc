#pragma once
// GRU scans, both variants. reset_after: one fused kernel per step (h U for z, r, h at once). Not reset_after:
// z and r first, then (r * h) U_h and the candidate. Backward: one kernel per step (the previous step's
// products fused with this step's pointwise gradients), plus the reset-gate product when not reset_after.
#include "tile.cuh"

namespace maskrnn {

// Forward, reset_after, or the z/r half of not reset_after (kFull = false: stores r * h_{t-1} in hr).
template <typename T, bool kFull>
__global__ void gru_fwd_step(int t, int B, int H, int n, const uint8_t* mask, bool zero_output, T* gx, const T* U,
                             const T* b_rec, T* out, T* hs, T* hr) {
  using Acc = acc_t<T>;
  constexpr int G = kFull ? 3 : 2;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H;
  Acc u[G] = {};
  if (row0 < n) tile_dot<T, G>(hs + t * BH, H, n, U, 3 * H, 1, H, H, row0, col0, u);
  if (b >= B || j >= H) return;
  const int64_t o = t * BH + int64_t(b) * H + j;
  if (!is_real(mask, t, B, b, n)) {
    hr[o] = from_acc<T>(Acc(0));
    if (kFull) {  // not reset_after carries in gru_fwd_candidate
      hs[o + BH] = hs[o];
      out[o] = carried_output(out, o, t, BH, zero_output);
    }
    return;
  }
  T* g = gx + (t * BH + int64_t(b) * H) * 3;
  // Not reset_after has its whole bias in gx; b_rec is only read by the reset_after variant.
  const Acc bz = kFull ? to_acc(b_rec[j]) : Acc(0), br = kFull ? to_acc(b_rec[H + j]) : Acc(0);
  const Acc z = sigmoid(to_acc(g[j]) + u[0] + bz);
  const Acc r = sigmoid(to_acc(g[H + j]) + u[1] + br);
  g[j] = from_acc<T>(z);
  g[H + j] = from_acc<T>(r);
  if (!kFull) {
    hr[o] = from_acc<T>(r * to_acc(hs[o]));
    return;
  }
  const Acc rh = u[G - 1] + to_acc(b_rec[2 * H + j]);
  Acc hh;
  const Acc h_new = gru_cell_fwd(z, to_acc(g[2 * H + j]), r * rh, to_acc(hs[o]), hh);
  hr[o] = from_acc<T>(rh);
  g[2 * H + j] = from_acc<T>(hh);
  hs[o + BH] = from_acc<T>(h_new);
  out[o] = from_acc<T>(h_new);
}

// Not reset_after, second half: (r * h_{t-1}) U_h, the candidate and the new state.
template <typename T>
__global__ void gru_fwd_candidate(int t, int B, int H, int n, const uint8_t* mask, bool zero_output, T* gx,
                                  const T* U, T* out, T* hs, const T* hr) {
  using Acc = acc_t<T>;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H;
  Acc v[1] = {0};
  if (row0 < n) tile_dot<T, 1>(hr + t * BH, H, n, U + 2 * H, 3 * H, 1, H, H, row0, col0, v);
  if (b >= B || j >= H) return;
  const int64_t o = t * BH + int64_t(b) * H + j;
  if (!is_real(mask, t, B, b, n)) {
    hs[o + BH] = hs[o];
    out[o] = carried_output(out, o, t, BH, zero_output);
    return;
  }
  T* g = gx + (t * BH + int64_t(b) * H) * 3;
  Acc hh;
  const Acc h_new = gru_cell_fwd(to_acc(g[j]), to_acc(g[2 * H + j]), v[0], to_acc(hs[o]), hh);
  g[2 * H + j] = from_acc<T>(hh);
  hs[o + BH] = from_acc<T>(h_new);
  out[o] = from_acc<T>(h_new);
}

// Backward step t: first dh_t += next_{t+1} U[:, :K]^T for the real rows of step t+1 (next = dgr with K = 3H
// when reset_after, else dgx with K = 2H: the z, r part; n_next = 0 at the last step), fused here to save a
// launch per step; then dgx (and dgr when reset_after) of step t, and dh becomes the direct part dh_t * z.
template <typename T>
__global__ void gru_bwd_step(int t, int B, int H, int n_next, int n, const uint8_t* mask, bool zero_output,
                             bool reset_after, const T* next, int K, const T* U, const T* gx, const T* hs,
                             const T* hr, const T* d_out, acc_t<T>* dh, acc_t<T>* carry, T* dgx, T* dgr) {
  using Acc = acc_t<T>;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H;
  Acc v[1] = {0};
  if (row0 < n_next)  // block-uniform test
    tile_dot<T, 1>(next + (t + 1) * BH * 3, 3 * H, n_next, U, 1, 3 * H, H, K, row0, col0, v);
  if (b >= B || j >= H) return;
  const int64_t s = int64_t(b) * H + j, o = t * BH + s, row = (t * BH + int64_t(b) * H) * 3;
  if (is_real(mask, t + 1, B, b, n_next)) dh[s] += v[0];  // b < n_next is tested first: t + 1 < T
  if (!is_real(mask, t, B, b, n)) {
    for (int k = 0; k < 3; ++k) {
      dgx[row + k * H + j] = from_acc<T>(Acc(0));
      if (reset_after) dgr[row + k * H + j] = from_acc<T>(Acc(0));
    }
    carry[s] = (zero_output || t == 0) ? Acc(0) : carry[s] + to_acc(d_out[o]);
    return;
  }
  const Acc z = to_acc(gx[row + j]), r = to_acc(gx[row + H + j]), hh = to_acc(gx[row + 2 * H + j]);
  Acc d = dh[s] + to_acc(d_out[o]) + carry[s], dz, dhh;
  carry[s] = Acc(0);
  gru_cell_bwd(z, hh, to_acc(hs[o]), d, dz, dhh);
  dh[s] = d;
  dgx[row + j] = from_acc<T>(dz);
  dgx[row + 2 * H + j] = from_acc<T>(dhh);
  if (reset_after) {  // candidate pre-activation x_h + r * (h U_h + b_h): dr = dhh * (h U_h + b_h)
    const Acc dr = dhh * to_acc(hr[o]) * r * (Acc(1) - r);
    dgx[row + H + j] = from_acc<T>(dr);
    dgr[row + j] = from_acc<T>(dz);
    dgr[row + H + j] = from_acc<T>(dr);
    dgr[row + 2 * H + j] = from_acc<T>(dhh * r);
  }
}

// dh += A_t B over the real rows of step t, A_t = columns [a_offset, a_offset + K) of dgx_t (or dgr_t),
// B(k, c) = U[c * 3H + a_offset + k].
// With kReset (not reset_after, first product): A = d hh_pre, the result is d(r * h); it yields the reset
// gate's gradient into dgx and r * d(r * h) into dh instead.
template <typename T, bool kReset>
__global__ void gru_bwd_product(int t, int B, int H, int n, const uint8_t* mask, int K, int a_offset, T* dgx,
                                const T* gx, const T* hs, const T* U, acc_t<T>* dh) {
  using Acc = acc_t<T>;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H;
  Acc v[1] = {0};
  if (row0 < n) tile_dot<T, 1>(dgx + t * BH * 3 + a_offset, 3 * H, n, U + a_offset, 1, 3 * H, H, K, row0, col0, v);
  if (b >= B || j >= H || !is_real(mask, t, B, b, n)) return;
  const int64_t s = int64_t(b) * H + j;
  if (!kReset) {
    dh[s] += v[0];
    return;
  }
  const int64_t row = (t * BH + int64_t(b) * H) * 3;
  const Acc r = to_acc(gx[row + H + j]);
  dgx[row + H + j] = from_acc<T>(v[0] * to_acc(hs[t * BH + s]) * r * (Acc(1) - r));
  dh[s] += v[0] * r;
}

template <typename T>
void gru_fwd(const ScanParams& p, T* gx, const T* U, const T* b_rec, T* out, T* hs, T* hr) {
  if (empty(p)) return;
  const dim3 grid = step_grid(p), block(BN, BM);
  for (int t = 0; t < p.T; ++t) {
    const int n = active_rows(p, t);
    if (p.reset_after) {
      gru_fwd_step<T, true><<<grid, block, 0, p.stream>>>(t, p.B, p.H, n, p.mask, p.zero_output, gx, U, b_rec, out,
                                                           hs, hr);
      MASKRNN_LAUNCH_CHECK();
      continue;
    }
    gru_fwd_step<T, false><<<grid, block, 0, p.stream>>>(t, p.B, p.H, n, p.mask, p.zero_output, gx, U, b_rec, out,
                                                          hs, hr);
    MASKRNN_LAUNCH_CHECK();
    gru_fwd_candidate<T><<<grid, block, 0, p.stream>>>(t, p.B, p.H, n, p.mask, p.zero_output, gx, U, out, hs, hr);
    MASKRNN_LAUNCH_CHECK();
  }
}

template <typename T>
void gru_bwd(const ScanParams& p, const T* gx, const T* U, const T* hs, const T* hr, const T* d_out, T* dh, T* dgx,
             T* dgr) {
  if (empty(p)) return;
  using Acc = acc_t<T>;
  Acc* dh_acc = static_cast<Acc*>(p.scratch);
  Acc* carry = dh_acc + int64_t(p.B) * p.H;
  copy_to_acc<T>(p, dh, dh_acc);
  copy_to_acc<T>(p, nullptr, carry);
  const dim3 grid = step_grid(p), block(BN, BM);
  const int H = p.H;
  // The product of h_{t-1} with every pre-activation gradient that reads it through U: all three gates'
  // recurrent ones (dgr) when reset_after; else z and r here, the candidate's in the kReset product.
  T* next = p.reset_after ? dgr : dgx;
  const int K = p.reset_after ? 3 * H : 2 * H;
  for (int t = p.T - 1; t >= 0; --t) {
    const int n = active_rows(p, t), n_next = t + 1 < p.T ? active_rows(p, t + 1) : 0;
    gru_bwd_step<T><<<grid, block, 0, p.stream>>>(t, p.B, H, n_next, n, p.mask, p.zero_output, p.reset_after, next,
                                                   K, U, gx, hs, hr, d_out, dh_acc, carry, dgx, dgr);
    MASKRNN_LAUNCH_CHECK();
    if (!p.reset_after) {  // d(r * h) = dhh_t U_h^T -> reset gate gradient and r * d(r * h)
      gru_bwd_product<T, true><<<grid, block, 0, p.stream>>>(t, p.B, H, n, p.mask, H, 2 * H, dgx, gx, hs, U, dh_acc);
      MASKRNN_LAUNCH_CHECK();
    }
  }
  if (p.T > 0) {
    gru_bwd_product<T, false><<<grid, block, 0, p.stream>>>(0, p.B, H, active_rows(p, 0), p.mask, K, 0, next, gx, hs,
                                                             U, dh_acc);
    MASKRNN_LAUNCH_CHECK();
  }
  copy_from_acc<T>(p, dh_acc, dh);
}

}  // namespace maskrnn
