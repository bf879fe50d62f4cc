#pragma once
// LSTM scans: one fused kernel per step forward (h U, gate math, mask select) and backward (the previous
// step's dgx U^T, gate gradients, mask select). Masked and packed share the kernels: packed passes
// mask == nullptr and the prefix size n, and blocks of padded rows skip the product.
#include "tile.cuh"

namespace maskrnn {

template <typename T>
__global__ void lstm_fwd_step(int t, int B, int H, int n, const uint8_t* mask, bool zero_output, T* gx,
                              const T* U, T* out, T* hs, T* cs) {
  using Acc = acc_t<T>;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H;
  Acc u[4] = {0, 0, 0, 0};
  if (row0 < n) tile_dot<T, 4>(hs + t * BH, H, n, U, 4 * H, 1, H, H, row0, col0, u);  // block-uniform test
  if (b >= B || j >= H) return;
  const int64_t o = t * BH + int64_t(b) * H + j;  // out[t,b,j] == hs[t,b,j]; hs[t+1,b,j] = o + BH
  if (!is_real(mask, t, B, b, n)) {
    hs[o + BH] = hs[o];
    cs[o + BH] = cs[o];
    out[o] = carried_output(out, o, t, BH, zero_output);
    return;
  }
  T* g = gx + (t * BH + int64_t(b) * H) * 4;
  Acc a[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) a[k] = to_acc(g[k * H + j]) + u[k];
  Acc c_new, h_new;
  lstm_cell_fwd(a, to_acc(cs[o]), c_new, h_new);
#pragma unroll
  for (int k = 0; k < 4; ++k) g[k * H + j] = from_acc<T>(a[k]);
  cs[o + BH] = from_acc<T>(c_new);
  hs[o + BH] = from_acc<T>(h_new);
  out[o] = from_acc<T>(h_new);
}

// Backward step t: first dh_t = dgx_{t+1} U^T for the real rows of step t+1 (n_next rows computed there; 0 at
// the last step, which starts from the upstream gradient), fused here to save a launch per step; then the gate
// gradients of step t. dh, dc, carry: (B,H) accumulation-type running gradients of h, c and of the output
// carried into padded steps.
template <typename T>
__global__ void lstm_bwd_step(int t, int B, int H, int n_next, int n, const uint8_t* mask, bool zero_output,
                              const T* gx, const T* U, const T* cs, const T* d_out, acc_t<T>* dh, acc_t<T>* dc,
                              acc_t<T>* carry, T* dgx) {
  using Acc = acc_t<T>;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  const int64_t BH = int64_t(B) * H, s = int64_t(b) * H + j, o = t * BH + s;
  Acc v[1] = {0};
  if (row0 < n_next)  // block-uniform test
    tile_dot<T, 1>(dgx + (t + 1) * BH * 4, 4 * H, n_next, U, 1, 4 * H, H, 4 * H, row0, col0, v);
  if (b >= B || j >= H) return;
  if (is_real(mask, t + 1, B, b, n_next)) dh[s] = v[0];  // b < n_next is tested first: t + 1 < T
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
__global__ void lstm_bwd_product(int t, int B, int H, int n, const uint8_t* mask, const T* dgx, const T* U,
                                 acc_t<T>* dh) {
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int b = row0 + threadIdx.y, j = col0 + threadIdx.x;
  acc_t<T> v[1] = {0};
  if (row0 < n) tile_dot<T, 1>(dgx + t * int64_t(B) * H * 4, 4 * H, n, U, 1, 4 * H, H, 4 * H, row0, col0, v);
  if (b < B && j < H && is_real(mask, t, B, b, n)) dh[int64_t(b) * H + j] = v[0];
}

template <typename T>
void lstm_fwd(const ScanParams& p, T* gx, const T* U, T* out, T* hs, T* cs) {
  if (empty(p)) return;
  const dim3 grid = step_grid(p), block(BN, BM);
  for (int t = 0; t < p.T; ++t) {
    lstm_fwd_step<T><<<grid, block, 0, p.stream>>>(t, p.B, p.H, active_rows(p, t), p.mask, p.zero_output, gx, U,
                                                    out, hs, cs);
    MASKRNN_LAUNCH_CHECK();
  }
}

template <typename T>
void lstm_bwd(const ScanParams& p, const T* gx, const T* U, const T* cs, const T* d_out, T* dh, T* dc, T* dgx) {
  if (empty(p)) return;
  using Acc = acc_t<T>;
  Acc* dh_acc = static_cast<Acc*>(p.scratch);
  Acc* dc_acc = dh_acc + int64_t(p.B) * p.H;
  Acc* carry = dc_acc + int64_t(p.B) * p.H;
  copy_to_acc<T>(p, dh, dh_acc);
  copy_to_acc<T>(p, dc, dc_acc);
  copy_to_acc<T>(p, nullptr, carry);
  const dim3 grid = step_grid(p), block(BN, BM);
  for (int t = p.T - 1; t >= 0; --t) {
    const int n_next = t + 1 < p.T ? active_rows(p, t + 1) : 0;
    lstm_bwd_step<T><<<grid, block, 0, p.stream>>>(t, p.B, p.H, n_next, active_rows(p, t), p.mask, p.zero_output,
                                                    gx, U, cs, d_out, dh_acc, dc_acc, carry, dgx);
    MASKRNN_LAUNCH_CHECK();
  }
  if (p.T > 0) {
    lstm_bwd_product<T><<<grid, block, 0, p.stream>>>(0, p.B, p.H, active_rows(p, 0), p.mask, dgx, U, dh_acc);
    MASKRNN_LAUNCH_CHECK();
  }
  copy_from_acc<T>(p, dh_acc, dh);
  copy_from_acc<T>(p, dc_acc, dc);
}

}  // namespace maskrnn
