#pragma once
// LSTM scans: one fused kernel per step forward (h U, gate math, mask select) and backward (the previous
// step's dgx U^T, gate gradients, mask select). Masked and packed share the kernels: packed passes
// mask == nullptr. Rows at or past n_rows[t] (finished) are skipped, and finish_fwd/finish_bwd write what their
// steps would have: blocks whose rows are all finished return at once.
#include "finished_rows.cuh"
#include "persistent.cuh"

namespace maskrnn {

// h_in/c_in: the states after step t - 1, h_out/c_out: after step t, all (B,H) in the accumulation type (see
// kSeparateState; c_in == c_out for half types: each thread reads its own c before writing it).
template <typename T>
__global__ void lstm_fwd_step(int t, int B, int H, const int32_t* n_rows, const uint8_t* mask, bool zero_output,
                              T* gx, const T* U, const acc_t<T>* h_in, acc_t<T>* h_out, const acc_t<T>* c_in,
                              acc_t<T>* c_out, T* out, T* hs, T* cs) {
  using Acc = acc_t<T>;
  using S = FwdTile<4>;
  __shared__ TileSmem<Acc, S> sm;
  int row0, col0;
  block_origin<S::NJ>(H, S::BM, row0, col0);
  allow_next_step();
  const int n = rows_at(n_rows, t, B);
  if (finished_block(row0, n)) return;
  const int r = threadIdx.x / S::NJ, jj = threadIdx.x % S::NJ, b = row0 + r, j = col0 + jj;
  const int64_t BH = int64_t(B) * H, s = int64_t(b) * H + j, o = t * BH + s;  // out[t,b,j] == hs[t,b,j]
  const bool real = b < B && j < H && is_real(mask, t, B, b, n);
  T* g = gx + (t * BH + int64_t(b) * H) * 4;
  // Loaded before the product waits for step t - 1, which does not write gx_t: their latency is hidden.
  T gv[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) gv[k] = real ? g[k * H + j] : T(0.0f);
  tile_dot<false, S>(sm, h_in, H, n, row0, U, 4 * H, H, col0, H);
  if (b >= n || j >= H) return;  // n <= B; finished rows: finish_fwd
  if (!real) {
    h_out[s] = h_in[s];
    c_out[s] = c_in[s];
    if constexpr (kSeparateState<T>) {
      hs[o + BH] = hs[o];
      cs[o + BH] = cs[o];
    }
    out[o] = carried_output(out, o, t, BH, zero_output);
    return;
  }
  Acc a[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) a[k] = to_acc(gv[k]) + tile_sum(sm, r, k, jj);
  Acc c_new, h_new;
  lstm_cell_fwd(a, c_in[s], c_new, h_new);
#pragma unroll
  for (int k = 0; k < 4; ++k) g[k * H + j] = from_acc<T>(a[k]);
  c_out[s] = c_new;
  h_out[s] = h_new;
  if constexpr (kSeparateState<T>) {
    cs[o + BH] = from_acc<T>(c_new);
    hs[o + BH] = from_acc<T>(h_new);
  }
  out[o] = from_acc<T>(h_new);
}

// Backward step t: first dh_t = dgx_{t+1} U^T for the real rows of step t+1 (n_next rows computed there; 0 at
// the last step, which starts from the upstream gradient), fused here to save a launch per step; then the gate
// gradients of step t. dh, dc, carry: (B,H) accumulation-type running gradients of h, c and of the output
// carried into padded steps.
template <typename T>
__global__ void lstm_bwd_step(int t, int steps, int B, int H, const int32_t* n_rows, const uint8_t* mask,
                              bool zero_output, const T* gx, const T* U, const T* cs, const T* d_out, acc_t<T>* dh,
                              acc_t<T>* dc, acc_t<T>* carry, T* dgx) {
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
    tile_dot<true, S>(sm, dgx + (t + 1) * BH * 4, 4 * H, n_next, row0, U, 4 * H, H, col0, 4 * H);
  else
    wait_prior_step();
  const int r = threadIdx.x / (S::G * S::NJ), u = threadIdx.x % (S::G * S::NJ), b = row0 + r, j = col0 + u;
  if (b >= n || j >= H) return;  // finished rows: finish_bwd zeroed their dgx and seeded their carry
  const int64_t s = int64_t(b) * H + j, o = t * BH + s;
  if (is_real(mask, t + 1, B, b, n_next)) dh[s] = tile_sum(sm, r, u / S::NJ, u % S::NJ);  // b < n_next first
  T* dg = dgx + (t * BH + int64_t(b) * H) * 4;
  if (!is_real(mask, t, B, b, n)) {
#pragma unroll
    for (int k = 0; k < 4; ++k) dg[k * H + j] = from_acc<T>(Acc(0));
    carry[s] = (zero_output || t == 0) ? Acc(0) : carry[s] + to_acc(d_out[o]);
    return;
  }
  const T* g = gx + (t * BH + int64_t(b) * H) * 4;
  Acc a[4], d[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) a[k] = to_acc(g[k * H + j]);
  const Acc dht = dh[s] + to_acc(d_out[o]) + carry[s];
  carry[s] = Acc(0);
  Acc dct = dc[s];
  lstm_cell_bwd(a, to_acc(cs[o]), to_acc(cs[o + BH]), dht, dct, d);
  dc[s] = dct;
#pragma unroll
  for (int k = 0; k < 4; ++k) dg[k * H + j] = from_acc<T>(d[k]);
}

// dh_{t-1} = dgx_t U^T for the real rows of step t (t = 0: the gradient of h0); other rows keep theirs.
template <typename T>
__global__ void lstm_bwd_product(int t, int B, int H, const int32_t* n_rows, const uint8_t* mask, const T* dgx,
                                 const T* U, acc_t<T>* dh) {
  using S = BwdTile;
  __shared__ TileSmem<acc_t<T>, S> sm;
  int row0, col0;
  block_origin<S::G * S::NJ>(H, S::BM, row0, col0);
  const int n = rows_at(n_rows, t, B);
  if (finished_block(row0, n)) return;
  tile_dot<true, S>(sm, dgx + t * int64_t(B) * H * 4, 4 * H, n, row0, U, 4 * H, H, col0, 4 * H);
  const int r = threadIdx.x / (S::G * S::NJ), u = threadIdx.x % (S::G * S::NJ), b = row0 + r, j = col0 + u;
  if (b < B && j < H && is_real(mask, t, B, b, n)) dh[int64_t(b) * H + j] = tile_sum(sm, r, u / S::NJ, u % S::NJ);
}

template <typename T>
void lstm_fwd(const ScanParams& p, T* gx, const T* U, T* out, T* hs, T* cs) {
  if (empty(p) || persistent_forward<T, Cell::kLstm>(p, gx, U, nullptr, out, hs, cs)) return;
  using Acc = acc_t<T>;
  using S = FwdTile<4>;
  const int64_t BH = int64_t(p.B) * p.H;
  Acc* state = static_cast<Acc*>(p.scratch);  // half types: h (two buffers), c
  if constexpr (kSeparateState<T>) {
    convert_state<T, Acc>(p, hs, state);
    convert_state<T, Acc>(p, cs, state + 2 * BH);
  }
  const bool pdl = pdl_supported();
  const dim3 grid = step_grid<S::NJ>(p.B, p.H, S::BM);
  for (int t = 0; t < p.T; ++t) {
    const Acc *h_in, *c_in;
    Acc *h_out, *c_out;
    if constexpr (kSeparateState<T>) {
      h_in = state + (t % 2) * BH;
      h_out = state + (1 - t % 2) * BH;
      c_in = c_out = state + 2 * BH;
    } else {
      h_in = hs + t * BH;
      h_out = hs + (t + 1) * BH;
      c_in = cs + t * BH;
      c_out = cs + (t + 1) * BH;
    }
    launch(p, t > 0 && pdl, grid, lstm_fwd_step<T>, t, p.B, p.H, p.n_rows, p.mask, p.zero_output, gx, U, h_in,
           h_out, c_in, c_out, out, hs, cs);
  }
  finish_fwd_rows<T>(p, out, hs, cs, nullptr);
}

template <typename T>
void lstm_bwd(const ScanParams& p, const T* gx, const T* U, const T* cs, const T* d_out, T* dh, T* dc, T* dgx) {
  if (empty(p) || persistent_lstm_backward<T>(p, gx, U, cs, d_out, dh, dc, dgx)) return;
  using Acc = acc_t<T>;
  Acc* dh_acc = static_cast<Acc*>(p.scratch);
  Acc* dc_acc = dh_acc + int64_t(p.B) * p.H;
  Acc* carry = dc_acc + int64_t(p.B) * p.H;
  convert_state<T, Acc>(p, dh, dh_acc);
  convert_state<T, Acc>(p, dc, dc_acc);
  finish_bwd_rows<T>(p, 4, d_out, carry, dgx, nullptr);
  const bool pdl = pdl_supported();
  const dim3 grid = step_grid<BwdTile::G * BwdTile::NJ>(p.B, p.H, BwdTile::BM);
  for (int t = p.T - 1; t >= 0; --t) {
    launch(p, t + 1 < p.T && pdl, grid, lstm_bwd_step<T>, t, p.T, p.B, p.H, p.n_rows, p.mask, p.zero_output, gx, U,
           cs, d_out, dh_acc, dc_acc, carry, dgx);
  }
  if (p.T > 0) launch(p, pdl, grid, lstm_bwd_product<T>, 0, p.B, p.H, p.n_rows, p.mask, dgx, U, dh_acc);
  convert_state<Acc, T>(p, dh_acc, dh);
  convert_state<Acc, T>(p, dc_acc, dc);
}

}  // namespace maskrnn
