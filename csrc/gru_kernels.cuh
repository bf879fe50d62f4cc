#pragma once
// GRU scans, both variants. reset_after: one fused kernel per step (h U for z, r, h at once). Not reset_after:
// z and r first, then (r * h) U_h and the candidate. Backward: one kernel per step (the previous step's
// products fused with this step's pointwise gradients), plus the reset-gate product when not reset_after. Rows
// at or past n_rows[t] (finished) are skipped, and finish_fwd/finish_bwd write what their steps would have:
// blocks whose rows are all finished return at once.
#include "finished_rows.cuh"
#include "persistent.cuh"

namespace maskrnn {

// Forward, reset_after, or the z/r half of not reset_after (kFull = false: stores r * h_{t-1} in hr). h_in:
// the state after step t - 1, h_out: after step t, (B,H) in the accumulation type (see kSeparateState).
template <typename T, bool kFull>
__global__ void gru_fwd_step(int t, int B, int H, const int32_t* n_rows, const uint8_t* mask, bool zero_output,
                             T* gx, const T* U, const T* b_rec, const acc_t<T>* h_in, acc_t<T>* h_out, T* out, T* hs,
                             T* hr) {
  using Acc = acc_t<T>;
  using S = FwdTile<kFull ? 3 : 2>;
  __shared__ TileSmem<Acc, S> sm;
  int row0, col0;
  block_origin<S::NJ>(H, S::BM, row0, col0);
  allow_next_step();
  const int n = rows_at(n_rows, t, B);
  if (finished_block(row0, n)) return;
  const int r = threadIdx.x / S::NJ, jj = threadIdx.x % S::NJ, b = row0 + r, j = col0 + jj;
  const int64_t BH = int64_t(B) * H, s = int64_t(b) * H + j, o = t * BH + s;
  const bool real = b < B && j < H && is_real(mask, t, B, b, n);
  T* g = gx + (t * BH + int64_t(b) * H) * 3;
  // Loaded before the product waits for step t - 1, which does not write gx_t: their latency is hidden. Not
  // reset_after has its whole bias in gx; b_rec is only read by the reset_after variant.
  T gv[3] = {};
  Acc bias[3] = {};
#pragma unroll
  for (int k = 0; k < S::G; ++k) {
    gv[k] = real ? g[k * H + j] : T(0.0f);
    if (kFull && real) bias[k] = to_acc(b_rec[k * H + j]);
  }
  tile_dot<false, S>(sm, h_in, H, n, row0, U, 3 * H, H, col0, H);
  if (b >= n || j >= H) return;  // n <= B; finished rows: finish_fwd
  if (!real) {
    hr[o] = from_acc<T>(Acc(0));
    if (kFull) {  // not reset_after carries in gru_fwd_candidate
      h_out[s] = h_in[s];
      if constexpr (kSeparateState<T>) hs[o + BH] = hs[o];
      out[o] = carried_output(out, o, t, BH, zero_output);
    }
    return;
  }
  const Acc z = sigmoid(to_acc(gv[0]) + tile_sum(sm, r, 0, jj) + bias[0]);
  const Acc r_gate = sigmoid(to_acc(gv[1]) + tile_sum(sm, r, 1, jj) + bias[1]);
  const Acc h_prev = h_in[s];
  g[j] = from_acc<T>(z);
  g[H + j] = from_acc<T>(r_gate);
  if constexpr (!kFull) {
    hr[o] = from_acc<T>(r_gate * h_prev);
  } else {
    const Acc rh = tile_sum(sm, r, 2, jj) + bias[2];
    Acc hh;
    const Acc h_new = gru_cell_fwd(z, to_acc(gv[2]), r_gate * rh, h_prev, hh);
    hr[o] = from_acc<T>(rh);
    g[2 * H + j] = from_acc<T>(hh);
    h_out[s] = h_new;
    if constexpr (kSeparateState<T>) hs[o + BH] = from_acc<T>(h_new);
    out[o] = from_acc<T>(h_new);
  }
}

// Not reset_after, second half: (r * h_{t-1}) U_h, the candidate and the new state.
template <typename T>
__global__ void gru_fwd_candidate(int t, int B, int H, const int32_t* n_rows, const uint8_t* mask, bool zero_output,
                                  T* gx, const T* U, const acc_t<T>* h_in, acc_t<T>* h_out, T* out, T* hs,
                                  const T* hr) {
  using Acc = acc_t<T>;
  using S = FwdTile<1>;
  __shared__ TileSmem<Acc, S> sm;
  int row0, col0;
  block_origin<S::NJ>(H, S::BM, row0, col0);
  allow_next_step();
  const int n = rows_at(n_rows, t, B);
  if (finished_block(row0, n)) return;
  const int64_t BH = int64_t(B) * H;
  tile_dot<false, S>(sm, hr + t * BH, H, n, row0, U + 2 * H, 3 * H, H, col0, H);
  const int r = threadIdx.x / S::NJ, jj = threadIdx.x % S::NJ, b = row0 + r, j = col0 + jj;
  if (b >= n || j >= H) return;  // n <= B; finished rows: finish_fwd
  const int64_t s = int64_t(b) * H + j, o = t * BH + s;
  if (!is_real(mask, t, B, b, n)) {
    h_out[s] = h_in[s];
    if constexpr (kSeparateState<T>) hs[o + BH] = hs[o];
    out[o] = carried_output(out, o, t, BH, zero_output);
    return;
  }
  T* g = gx + (t * BH + int64_t(b) * H) * 3;
  Acc hh;
  const Acc h_new = gru_cell_fwd(to_acc(g[j]), to_acc(g[2 * H + j]), tile_sum(sm, r, 0, jj), h_in[s], hh);
  g[2 * H + j] = from_acc<T>(hh);
  h_out[s] = h_new;
  if constexpr (kSeparateState<T>) hs[o + BH] = from_acc<T>(h_new);
  out[o] = from_acc<T>(h_new);
}

// Backward step t: first dh_t += next_{t+1} U[:, :K]^T for the real rows of step t+1 (next = dgr with K = 3H
// when reset_after, else dgx with K = 2H: the z, r part; n_next = 0 at the last step), fused here to save a
// launch per step; then dgx (and dgr when reset_after) of step t, and dh becomes the direct part dh_t * z.
template <typename T>
__global__ void gru_bwd_step(int t, int steps, int B, int H, const int32_t* n_rows, const uint8_t* mask,
                             bool zero_output, bool reset_after, const T* next, int K, const T* U, const T* gx,
                             const T* hs, const T* hr, const T* d_out, acc_t<T>* dh, acc_t<T>* carry, T* dgx,
                             T* dgr) {
  using Acc = acc_t<T>;
  using S = BwdTile;
  __shared__ TileSmem<Acc, S> sm;
  int row0, col0;
  block_origin<S::G * S::NJ>(H, S::BM, row0, col0);
  allow_next_step();
  const int n = rows_at(n_rows, t, B), n_next = t + 1 < steps ? rows_at(n_rows, t + 1, B) : 0;  // n_next <= n
  if (finished_block(row0, n)) return;
  const int64_t BH = int64_t(B) * H;
  if (row0 < n_next)  // block-uniform test
    tile_dot<true, S>(sm, next + (t + 1) * BH * 3, 3 * H, n_next, row0, U, 3 * H, H, col0, K);
  else
    wait_prior_step();
  const int r = threadIdx.x / (S::G * S::NJ), u = threadIdx.x % (S::G * S::NJ), b = row0 + r, j = col0 + u;
  if (b >= n || j >= H) return;  // finished rows: finish_bwd zeroed their dgx, dgr and seeded their carry
  const int64_t s = int64_t(b) * H + j, o = t * BH + s, row = (t * BH + int64_t(b) * H) * 3;
  if (is_real(mask, t + 1, B, b, n_next)) dh[s] += tile_sum(sm, r, u / S::NJ, u % S::NJ);  // b < n_next first
  if (!is_real(mask, t, B, b, n)) {
    for (int k = 0; k < 3; ++k) {
      dgx[row + k * H + j] = from_acc<T>(Acc(0));
      if (reset_after) dgr[row + k * H + j] = from_acc<T>(Acc(0));
    }
    carry[s] = (zero_output || t == 0) ? Acc(0) : carry[s] + to_acc(d_out[o]);
    return;
  }
  const Acc z = to_acc(gx[row + j]), r_gate = to_acc(gx[row + H + j]), hh = to_acc(gx[row + 2 * H + j]);
  Acc d = dh[s] + to_acc(d_out[o]) + carry[s], dz, dhh;
  carry[s] = Acc(0);
  gru_cell_bwd(z, hh, to_acc(hs[o]), d, dz, dhh);
  dh[s] = d;
  dgx[row + j] = from_acc<T>(dz);
  dgx[row + 2 * H + j] = from_acc<T>(dhh);
  if (reset_after) {  // candidate pre-activation x_h + r * (h U_h + b_h): dr = dhh * (h U_h + b_h)
    const Acc dr = dhh * to_acc(hr[o]) * r_gate * (Acc(1) - r_gate);
    dgx[row + H + j] = from_acc<T>(dr);
    dgr[row + j] = from_acc<T>(dz);
    dgr[row + H + j] = from_acc<T>(dr);
    dgr[row + 2 * H + j] = from_acc<T>(dhh * r_gate);
  }
}

// dh += A_t B over the real rows of step t, A_t = columns [a_offset, a_offset + K) of dgx_t (or dgr_t),
// B(k, c) = U[c * 3H + a_offset + k].
// With kReset (not reset_after, first product): A = d hh_pre, the result is d(r * h); it yields the reset
// gate's gradient into dgx and r * d(r * h) into dh instead.
template <typename T, bool kReset>
__global__ void gru_bwd_product(int t, int B, int H, const int32_t* n_rows, const uint8_t* mask, int K, int a_offset,
                                T* dgx, const T* gx, const T* hs, const T* U, acc_t<T>* dh) {
  using Acc = acc_t<T>;
  using S = BwdTile;
  __shared__ TileSmem<Acc, S> sm;
  int row0, col0;
  block_origin<S::G * S::NJ>(H, S::BM, row0, col0);
  allow_next_step();
  const int n = rows_at(n_rows, t, B);
  if (finished_block(row0, n)) return;
  const int64_t BH = int64_t(B) * H;
  tile_dot<true, S>(sm, dgx + t * BH * 3 + a_offset, 3 * H, n, row0, U + a_offset, 3 * H, H, col0, K);
  const int r = threadIdx.x / (S::G * S::NJ), u = threadIdx.x % (S::G * S::NJ), b = row0 + r, j = col0 + u;
  if (b >= B || j >= H || !is_real(mask, t, B, b, n)) return;
  const int64_t s = int64_t(b) * H + j;
  const Acc v = tile_sum(sm, r, u / S::NJ, u % S::NJ);
  if constexpr (!kReset) {
    dh[s] += v;
  } else {
    const int64_t row = (t * BH + int64_t(b) * H) * 3;
    const Acc r_gate = to_acc(gx[row + H + j]);
    dgx[row + H + j] = from_acc<T>(v * to_acc(hs[t * BH + s]) * r_gate * (Acc(1) - r_gate));
    dh[s] += v * r_gate;
  }
}

template <typename T>
void gru_fwd(const ScanParams& p, T* gx, const T* U, const T* b_rec, T* out, T* hs, T* hr) {
  if (empty(p)) return;
  if (p.reset_after ? persistent_forward<T, Cell::kGruResetAfter>(p, gx, U, b_rec, out, hs, hr)
                    : persistent_forward<T, Cell::kGru>(p, gx, U, b_rec, out, hs, hr))
    return;
  using Acc = acc_t<T>;
  const int64_t BH = int64_t(p.B) * p.H;
  Acc* state = static_cast<Acc*>(p.scratch);  // half types: h (two buffers)
  if constexpr (kSeparateState<T>) convert_state<T, Acc>(p, hs, state);
  const bool pdl = pdl_supported();
  const dim3 grid = step_grid<FwdTile<1>::NJ>(p.B, p.H, FwdTile<1>::BM);
  for (int t = 0; t < p.T; ++t) {
    const Acc* h_in;
    Acc* h_out;
    if constexpr (kSeparateState<T>) {
      h_in = state + (t % 2) * BH;
      h_out = state + (1 - t % 2) * BH;
    } else {
      h_in = hs + t * BH;
      h_out = hs + (t + 1) * BH;
    }
    if (p.reset_after) {
      launch(p, t > 0 && pdl, grid, gru_fwd_step<T, true>, t, p.B, p.H, p.n_rows, p.mask, p.zero_output, gx, U,
             b_rec, h_in, h_out, out, hs, hr);
      continue;
    }
    launch(p, t > 0 && pdl, grid, gru_fwd_step<T, false>, t, p.B, p.H, p.n_rows, p.mask, p.zero_output, gx, U, b_rec,
           h_in, h_out, out, hs, hr);
    launch(p, pdl, grid, gru_fwd_candidate<T>, t, p.B, p.H, p.n_rows, p.mask, p.zero_output, gx, U, h_in, h_out, out,
           hs, static_cast<const T*>(hr));
  }
  finish_fwd_rows<T>(p, out, hs, nullptr, hr);
}

template <typename T>
void gru_bwd(const ScanParams& p, const T* gx, const T* U, const T* hs, const T* hr, const T* d_out, T* dh, T* dgx,
             T* dgr) {
  if (empty(p) || persistent_gru_backward<T>(p, gx, U, hs, hr, d_out, dh, dgx, dgr)) return;
  using Acc = acc_t<T>;
  Acc* dh_acc = static_cast<Acc*>(p.scratch);
  Acc* carry = dh_acc + int64_t(p.B) * p.H;
  convert_state<T, Acc>(p, dh, dh_acc);
  finish_bwd_rows<T>(p, 3, d_out, carry, dgx, p.reset_after ? dgr : nullptr);
  const bool pdl = pdl_supported();
  const dim3 grid = step_grid<BwdTile::G * BwdTile::NJ>(p.B, p.H, BwdTile::BM);
  const int H = p.H;
  // The product of h_{t-1} with every pre-activation gradient that reads it through U: all three gates'
  // recurrent ones (dgr) when reset_after; else z and r here, the candidate's in the kReset product.
  T* next = p.reset_after ? dgr : dgx;
  const int K = p.reset_after ? 3 * H : 2 * H;
  for (int t = p.T - 1; t >= 0; --t) {
    launch(p, t + 1 < p.T && pdl, grid, gru_bwd_step<T>, t, p.T, p.B, H, p.n_rows, p.mask, p.zero_output,
           p.reset_after, static_cast<const T*>(next), K, U, gx, hs, hr, d_out, dh_acc, carry, dgx, dgr);
    if (!p.reset_after)  // d(r * h) = dhh_t U_h^T -> reset gate gradient and r * d(r * h)
      launch(p, pdl, grid, gru_bwd_product<T, true>, t, p.B, H, p.n_rows, p.mask, H, 2 * H, dgx, gx, hs, U, dh_acc);
  }
  if (p.T > 0)
    launch(p, pdl, grid, gru_bwd_product<T, false>, 0, p.B, H, p.n_rows, p.mask, K, 0, next, gx, hs, U, dh_acc);
  convert_state<Acc, T>(p, dh_acc, dh);
}

}  // namespace maskrnn
