#pragma once
// Host -> device copies queued without the host waiting (maskrnn/_cuda.py: _upload, host_plan): the bytes are
// written into the next of kUploadStages pinned host buffers of the current device and copied from there to the
// device in one cudaMemcpyAsync on the caller's stream. A buffer is written again once the copy last queued from
// it has run (its event): only a host kUploadStages calls ahead of the GPU waits. The same in Python (NumPy into a
// pinned buffer, the copy, a new CuPy event) was ~40 us of host time before a forward's first launch
// (bench/results/gpu-H100-20261127f/call2-gaps.txt).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "check.h"

namespace maskrnn {

constexpr int kUploadStages = 4;

// Calls fill(buffer) on a pinned host buffer of at least n bytes, then queues the copy of its first n bytes to
// dst on stream.
template <typename Fill>
void staged_upload(std::size_t n, void* dst, cudaStream_t stream, Fill fill) {
  struct Stage {
    std::uint8_t* host = nullptr;
    std::size_t size = 0;
    cudaEvent_t copied = nullptr;  // recorded after the copy last queued from host
  };
  struct Ring {
    std::array<Stage, kUploadStages> stages;
    int turn = 0;
  };
  static std::mutex mutex;
  static std::map<int, Ring> rings;  // by device: events and streams belong to one
  int dev = 0;
  MASKRNN_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mutex);
  Ring& ring = rings[dev];
  Stage& stage = ring.stages[ring.turn];
  ring.turn = (ring.turn + 1) % kUploadStages;
  if (stage.copied == nullptr) {
    MASKRNN_CHECK(cudaEventCreateWithFlags(&stage.copied, cudaEventDisableTiming));
  } else {
    MASKRNN_CHECK(cudaEventSynchronize(stage.copied));
  }
  if (stage.size < n) {
    const std::size_t size = std::max({n, 2 * stage.size, std::size_t(4096)});
    if (stage.host != nullptr) MASKRNN_CHECK(cudaFreeHost(stage.host));
    stage.host = nullptr;
    stage.size = 0;
    MASKRNN_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&stage.host), size, cudaHostAllocPortable));
    stage.size = size;
  }
  fill(stage.host);
  if (n != 0) MASKRNN_CHECK(cudaMemcpyAsync(dst, stage.host, n, cudaMemcpyHostToDevice, stream));
  MASKRNN_CHECK(cudaEventRecord(stage.copied, stream));
}

}  // namespace maskrnn
