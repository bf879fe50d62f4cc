#pragma once
// One check for every CUDA call and one after every launch: failures become C++ exceptions (RuntimeError in
// Python through pybind11) that name the file and line.
#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace maskrnn {

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    // A failed runtime call also sets the last error: clear it, or the next launch check reports it again.
    cudaGetLastError();
    throw std::runtime_error(std::string("maskrnn CUDA error at ") + file + ":" + std::to_string(line) + ": " +
                             what + ": " + cudaGetErrorString(status));
  }
}

// MASKRNN_CUDA_SYNC=1 (read once): every launch waits for its kernel and checks how it ended, so a fault is
// reported at the launch that caused it (for a first run on new hardware; slow).
inline bool sync_launches() {
  static const bool on = [] {
    const char* v = std::getenv("MASKRNN_CUDA_SYNC");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }();
  return on;
}

inline void check_launch(const char* file, int line) {
  check_cuda(cudaGetLastError(), "kernel launch", file, line);
  if (sync_launches()) check_cuda(cudaDeviceSynchronize(), "kernel run (MASKRNN_CUDA_SYNC=1)", file, line);
}

}  // namespace maskrnn

#define MASKRNN_CHECK(call) ::maskrnn::check_cuda((call), #call, __FILE__, __LINE__)
#define MASKRNN_LAUNCH_CHECK() ::maskrnn::check_launch(__FILE__, __LINE__)
