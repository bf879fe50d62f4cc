#pragma once
// One check for every CUDA call and one after every launch: failures become C++ exceptions (RuntimeError in
// Python through pybind11) that name the file and line.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace maskrnn {

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("maskrnn CUDA error at ") + file + ":" + std::to_string(line) + ": " +
                             what + ": " + cudaGetErrorString(status));
  }
}

}  // namespace maskrnn

#define MASKRNN_CHECK(call) ::maskrnn::check_cuda((call), #call, __FILE__, __LINE__)
#define MASKRNN_LAUNCH_CHECK() ::maskrnn::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
