// Inference in one native call per chunk of steps (maskrnn/_cuda.py lstm_infer, gru_infer; scan.h InferChunk):
// around the scan, one kernel puts the chunk's projection in plan row order with the bias added and sets the
// states before its first step, and one writes its outputs into the caller's array and, after the last chunk, the
// final states in the caller's row order. These were ~10 CuPy operations (a gather of the inputs, a bias add, two
// state fills, an output gather, two final-state gathers, their allocations), each 20-70 us of host time in a cold
// call (bench/results/gpu-H100-20261127d/call3-gaps.txt), which a forward's wall time waited for.
#include <cstdint>
#include <stdexcept>

#include "check.h"
#include "tile.cuh"

namespace maskrnn {
namespace {

// One block per row (a row of gx, of the outputs or of a state: G*H or H contiguous values), its threads along
// the row: the row's indices are worked out once, the loads and stores are coalesced. Rows beyond the grid go
// grid-stride: a launch has at most MASKRNN_MAX_GRID_THREADS threads (the host emulation, tests/cuda_emulation,
// starts an OS thread per CUDA thread and builds with 256).
#ifndef MASKRNN_MAX_GRID_THREADS
#define MASKRNN_MAX_GRID_THREADS (int64_t(1) << 24)
#endif
constexpr int kMaxInferThreads = 256;

// Whole warps, up to kMaxInferThreads, for rows of n values.
inline unsigned infer_threads(int64_t n) {
  return unsigned(n >= kMaxInferThreads ? kMaxInferThreads : (n + 31) / 32 * 32);
}

inline unsigned infer_blocks(int64_t rows, unsigned threads) {
  const int64_t most = int64_t(MASKRNN_MAX_GRID_THREADS) / threads;
  return unsigned(rows < most ? rows : most > 0 ? most : 1);
}

// gx[t, i, :] = proj(t, order[i], :) + bias (rows t * B + i), then the state buffers' step 0 (rows T*B + q*B + i):
// the previous chunk's last states (carry > 0: their step `carry`), else init (0 if null).
template <typename T>
__global__ void infer_prep(int T_, int B, int H, int G, InferChunk c, int n_states, T* gx, T* states0, T* states1) {
  const int64_t GH = int64_t(G) * H, BH = int64_t(B) * H, rows_gx = int64_t(T_) * B;
  const T* bias = static_cast<const T*>(c.bias);
  for (int64_t r = blockIdx.x; r < rows_gx + n_states * B; r += gridDim.x) {
    if (r < rows_gx) {
      const int64_t t = r / B, i = r % B, b = c.order ? c.order[i] : i;
      const T* src = static_cast<const T*>(c.proj) + t * c.proj_t + b * c.proj_b;
      T* dst = gx + r * GH;
      for (int64_t g = threadIdx.x; g < GH; g += blockDim.x)
        dst[g] = from_acc<T>(bias ? to_acc(src[g]) + to_acc(bias[g]) : to_acc(src[g]));
      continue;
    }
    const int64_t q = (r - rows_gx) / B, i = (r - rows_gx) % B;
    T* state = q == 0 ? states0 : states1;
    const T* init = static_cast<const T*>(q == 0 ? c.init[0] : c.init[1]);  // c.init[q] would copy c to the stack
    const T* src = c.carry > 0 ? state + c.carry * BH + i * H : init ? init + i * H : nullptr;
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) state[i * H + j] = src ? src[j] : from_acc<T>(acc_t<T>(0));
  }
}

// Rows t * B + b: out(t, b, :) = the scan's output of caller row b's plan row i at step t, except at a padded step
// before the row's first real step in a chunk after the first (the scan took the chunk's first step for the
// sequence's): there the output before the chunk is carried (unless zero_output). After the last chunk, rows
// T*B + q*B + b: final[q][b, :] = states_q[T, i, :].
template <typename T>
__global__ void infer_finish(int T_, int B, int H, const uint8_t* plan_mask, bool zero_output, InferChunk c,
                             int n_states, const T* out_scan, const T* states0, const T* states1) {
  const int64_t BH = int64_t(B) * H, rows_out = int64_t(T_) * B;
  const bool carry = c.t0 > 0 && !zero_output;
  const int64_t rows = rows_out + (c.final[0] ? n_states * B : 0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t b = (r < rows_out ? r : r - rows_out) % B, i = c.inverse ? c.inverse[b] : b;
    if (r < rows_out) {
      const int64_t t = r / B;
      bool lead = carry;
      for (int64_t s = 0; lead && s <= t; ++s) lead = plan_mask[s * B + i] == 0;
      T* dst = static_cast<T*>(c.out) + t * c.out_t + b * c.out_b;
      const T* src = lead ? dst - (t + 1) * c.out_t : out_scan + (t * B + i) * H;  // lead: the step before the chunk
      for (int64_t j = threadIdx.x; j < H; j += blockDim.x) dst[j] = src[j];
      continue;
    }
    const int64_t q = (r - rows_out) / B;
    const T* src = (q == 0 ? states0 : states1) + T_ * BH + i * H;
    T* dst = static_cast<T*>(q == 0 ? c.final[0] : c.final[1]) + b * H;  // not c.final[q]: see infer_prep
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) dst[j] = src[j];
  }
}

// Byte offsets of an inference chunk's buffers in its workspace, for T steps of cell G (4: LSTM, 3: GRU): gx
// (T,B,G*H) at 0, out (T,B,H), n_states state buffers (T+1,B,H) each, hr (T,B,H) for the GRU, the half types'
// scratch (3*B*H accumulation-type values); bytes: the workspace's size.
struct InferLayout {
  int n_states;
  bool hr;
  std::size_t gx = 0, out = 0, states = 0, hr_at = 0, scratch = 0, bytes = 0;
};

template <typename S>
InferLayout infer_layout(int G, int T, int B, int H) {
  const auto aligned = [](std::size_t bytes) { return (bytes + 255) / 256 * 256; };
  const std::size_t TBH = std::size_t(T) * B * H, BH = std::size_t(B) * H;
  InferLayout at{G == 4 ? 2 : 1, G == 3};
  at.out = aligned(TBH * G * sizeof(S));
  at.states = at.out + aligned(TBH * sizeof(S));
  at.hr_at = at.states + aligned(at.n_states * (TBH + BH) * sizeof(S));
  at.scratch = at.hr_at + (at.hr ? aligned(TBH * sizeof(S)) : 0);
  at.bytes = at.scratch + (kSeparateState<S> ? aligned(3 * BH * sizeof(acc_t<S>)) : 0);
  return at;
}

// scan(params, gx, out, states0, states1, hr): the cell's forward scan on the chunk's buffers.
template <typename T, class Scan>
void infer_chunk(const ScanParams& p, const InferChunk& c, int G, void* work, Scan scan) {
  if (c.work_steps < p.T) throw std::invalid_argument("maskrnn inference: a chunk longer than its workspace");
  const InferLayout at = infer_layout<T>(G, c.work_steps, p.B, p.H);
  const int n_states = at.n_states;
  char* base = static_cast<char*>(work);
  T* gx = reinterpret_cast<T*>(base + at.gx);
  T* out = reinterpret_cast<T*>(base + at.out);
  T* s0 = reinterpret_cast<T*>(base + at.states);
  T* s1 = n_states > 1 ? s0 + int64_t(c.work_steps + 1) * p.B * p.H : nullptr;
  T* hr_buf = at.hr ? reinterpret_cast<T*>(base + at.hr_at) : nullptr;
  ScanParams q = p;
  q.scratch = kSeparateState<T> ? base + at.scratch : nullptr;
  const int64_t n_prep = (int64_t(p.T) + n_states) * p.B;  // rows
  if (n_prep > 0 && p.H > 0) {
    const unsigned threads = infer_threads(int64_t(G) * p.H);
    infer_prep<T><<<infer_blocks(n_prep, threads), threads, 0, p.stream>>>(p.T, p.B, p.H, G, c, n_states, gx, s0,
                                                                           s1);
    MASKRNN_LAUNCH_CHECK();
  }
  scan(q, gx, out, s0, s1, hr_buf);
  const int64_t n_finish = (int64_t(p.T) + (c.final[0] ? n_states : 0)) * p.B;  // rows
  if (n_finish > 0 && p.H > 0) {
    const unsigned threads = infer_threads(p.H);
    infer_finish<T><<<infer_blocks(n_finish, threads), threads, 0, p.stream>>>(p.T, p.B, p.H, c.plan_mask,
                                                                               p.zero_output, c, n_states, out, s0,
                                                                               s1);
    MASKRNN_LAUNCH_CHECK();
  }
}

}  // namespace

template <typename T> std::size_t infer_workspace(int G, int steps, int B, int H) {
  return infer_layout<T>(G, steps, B, H).bytes;
}

template <typename T> void lstm_infer(const ScanParams& p, const InferChunk& c, const T* U, void* work) {
  infer_chunk<T>(p, c, 4, work, [U](const ScanParams& q, T* gx, T* out, T* hs, T* cs, T*) {
    lstm_fwd<T>(q, gx, U, out, hs, cs);
  });
}

template <typename T>
void gru_infer(const ScanParams& p, const InferChunk& c, const T* U, const T* b_rec, void* work) {
  infer_chunk<T>(p, c, 3, work, [U, b_rec](const ScanParams& q, T* gx, T* out, T* hs, T*, T* hr) {
    gru_fwd<T>(q, gx, U, b_rec, out, hs, hr);
  });
}

#define MASKRNN_INSTANTIATE_INFER(T)                                                     \
  template std::size_t infer_workspace<T>(int, int, int, int);                           \
  template void lstm_infer<T>(const ScanParams&, const InferChunk&, const T*, void*);    \
  template void gru_infer<T>(const ScanParams&, const InferChunk&, const T*, const T*, void*);
MASKRNN_INSTANTIATE_INFER(float)
MASKRNN_INSTANTIATE_INFER(double)
MASKRNN_INSTANTIATE_INFER(__half)
MASKRNN_INSTANTIATE_INFER(__nv_bfloat16)

}  // namespace maskrnn
