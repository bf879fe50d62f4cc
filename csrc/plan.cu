// The row plan of a masked batch, on the device, in one launch (maskrnn/_dispatch.py device_plan): it replaced the
// dozen CuPy array ops (each a launch and ~30 us of host time) that built the same arrays. See scan.h, row_plan.
#include <cstdint>

#include "check.h"
#include "scan.h"

namespace maskrnn {
namespace {

constexpr int kPlanThreads = 128;

// Last real step + 1 of row b (0 if it has none), searched from the last step down, 8 steps a round so that the
// loads of a round are in flight together.
__device__ int row_span(int T, int B, const uint8_t* mask, int b) {
  for (int t1 = T; t1 > 0; t1 -= 8) {
    bool real[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) real[k] = t1 - 1 - k >= 0 && mask[int64_t(t1 - 1 - k) * B + b] != 0;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (real[k]) return t1 - k;
  }
  return 0;
}

// One block. order holds each row's span until the rows are placed; work (T+1 int32) counts, per span, the rows
// of that span placed so far.
// (No __launch_bounds__: with it ptxas capped the kernel at 32 registers, for occupancy it never has, and spilled.)
__global__ void row_plan_kernel(int T, int B, const uint8_t* mask, int32_t* order, int32_t* inverse, int32_t* counts,
                                int32_t* work) {
  __shared__ int32_t buf[kPlanThreads];
  const int tid = int(threadIdx.x);
  for (int s = tid; s <= T; s += kPlanThreads) counts[s] = work[s] = 0;
  __syncthreads();
  // Spans, and how many rows have each (in counts for now).
  for (int b = tid; b < B; b += kPlanThreads) {
    const int span = row_span(T, B, mask, b);
    order[b] = span;
    atomicAdd(&counts[span], 1);
  }
  __syncthreads();
  // counts[t] := rows with a span above t: a suffix sum by one thread (its loads do not wait on each other; block
  // barriers, costly in the host emulation, were 16 per tile of spans in a parallel scan).
  if (tid == 0) {
    int above = 0;
    for (int s = T; s >= 0; --s) {
      const int n = counts[s];
      counts[s] = above;
      above += n;
    }
  }
  __syncthreads();
  // A row's place: after the rows of longer span, and after the rows before it of its own span (a stable sort).
  // Rows go a tile at a time; within a tile each counts the earlier ones of its span.
  for (int base = 0; base < B; base += kPlanThreads) {
    const int b = base + tid, rows = B - base < kPlanThreads ? B - base : kPlanThreads;
    buf[tid] = b < B ? order[b] : -1;
    __syncthreads();
    int before = 0, after = 0;
    for (int j = 0; j < rows && b < B; ++j) {
      if (buf[j] != buf[tid]) continue;
      before += j < tid;
      after += j > tid;
    }
    const int place = b < B ? counts[buf[tid]] + work[buf[tid]] + before : 0;
    __syncthreads();  // every row of the tile has read work before its span's last row moves it on
    if (b < B) {
      inverse[b] = place;
      if (after == 0) work[buf[tid]] += before + 1;
    }
    __syncthreads();
  }
  // The spans in order have all been read.
  for (int b = tid; b < B; b += kPlanThreads) order[inverse[b]] = b;
}

}  // namespace

void row_plan(int T, int B, const uint8_t* mask, int32_t* order, int32_t* inverse, int32_t* counts, int32_t* work,
              cudaStream_t stream) {
  row_plan_kernel<<<1, kPlanThreads, 0, stream>>>(T, B, mask, order, inverse, counts, work);
  MASKRNN_LAUNCH_CHECK();
}

}  // namespace maskrnn
