#include <cuda_runtime.h>

#include "device_info.h"

namespace maskrnn {

std::vector<std::string> gpu_names() {
  std::vector<std::string> names;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return names;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) names.emplace_back(prop.name);
  }
  return names;
}

}  // namespace maskrnn
