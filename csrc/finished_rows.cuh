#pragma once
// Finished rows, once per call. Rows are sorted longest first and n_rows is non-increasing, so from the first step
// t_f with n_rows[t_f] <= b on, row b is never computed again: its states are carried and its outputs are the
// carried output. The step kernels' blocks whose rows are all finished return at once (finished_block in
// tile.cuh), and the step kernels skip finished rows in other blocks too; these kernels do instead, in one launch
// per call, what those steps would have done: forward after the step loop, backward before it.
#include "tile.cuh"

namespace maskrnn {

// t_f of row b: the first step with n_rows[t] <= b, `steps` if none (bisection: n_rows is non-increasing).
__device__ inline int finish_step(const int32_t* n_rows, int steps, int B, int b) {
  int lo = 0, hi = steps;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (rows_at(n_rows, mid, B) <= b)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Forward, after the last step: at each finished step t of row b, hs[t+1] = hs[t_f] (cs too when not null), out[t]
// the carried output and hr[t] = 0 (when not null: the GRU's weight-gradient GEMMs read every entry). One thread
// per (b, unit).
template <typename T>
__global__ void finish_fwd(int steps, int B, int H, const int32_t* n_rows, bool zero_output, T* out, T* hs, T* cs,
                           T* hr) {
  const int64_t BH = int64_t(B) * H, i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= BH) return;
  const int tf = finish_step(n_rows, steps, B, int(i / H));
  if (tf == steps) return;
  const T h = hs[tf * BH + i], c = cs ? cs[tf * BH + i] : T(0.0f);
  const T o = carried_output(out, tf * BH + i, tf, BH, zero_output);
  for (int64_t t = tf; t < steps; ++t) {
    hs[(t + 1) * BH + i] = h;
    if (cs) cs[(t + 1) * BH + i] = c;
    out[t * BH + i] = o;
    if (hr) hr[t * BH + i] = T(0.0f);
  }
}

// Backward, before the first step: carry (accumulation type, every row) starts as the gradient that the outputs
// carried through row b's finished steps send back to its last real step (0 with zero_output; a step-0 output is
// never carried), summed from the last step down as the step kernels sum it; dgx (and dgr when not null), G gates
// wide, are 0 at the finished steps.
template <typename T>
__global__ void finish_bwd(int steps, int B, int H, int G, const int32_t* n_rows, bool zero_output, const T* d_out,
                           acc_t<T>* carry, T* dgx, T* dgr) {
  const int64_t BH = int64_t(B) * H, i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= BH) return;
  const int b = int(i / H), j = int(i % H);
  const int tf = finish_step(n_rows, steps, B, b);
  acc_t<T> sum = 0;
  for (int64_t t = steps - 1; !zero_output && t >= tf && t >= 1; --t) sum += to_acc(d_out[t * BH + i]);
  carry[i] = sum;
  for (int64_t t = tf; t < steps; ++t) {
    const int64_t row = (t * BH + int64_t(b) * H) * G;
    for (int k = 0; k < G; ++k) {
      dgx[row + k * H + j] = T(0.0f);
      if (dgr) dgr[row + k * H + j] = T(0.0f);
    }
  }
}

// Launchers on p.stream, one thread per (row, unit). The forward one has nothing to do when every row runs every step.
template <typename T>
void finish_fwd_rows(const ScanParams& p, T* out, T* hs, T* cs, T* hr) {
  if (p.n_rows == nullptr) return;
  const int64_t n = int64_t(p.B) * p.H;
  finish_fwd<T><<<(n + 255) / 256, 256, 0, p.stream>>>(p.T, p.B, p.H, p.n_rows, p.zero_output, out, hs, cs, hr);
  MASKRNN_LAUNCH_CHECK();
}

template <typename T>
void finish_bwd_rows(const ScanParams& p, int G, const T* d_out, acc_t<T>* carry, T* dgx, T* dgr) {
  const int64_t n = int64_t(p.B) * p.H;
  finish_bwd<T><<<(n + 255) / 256, 256, 0, p.stream>>>(p.T, p.B, p.H, G, p.n_rows, p.zero_output, d_out, carry, dgx,
                                                        dgr);
  MASKRNN_LAUNCH_CHECK();
}

}  // namespace maskrnn
