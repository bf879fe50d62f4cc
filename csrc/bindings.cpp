// The only file that includes pybind11. Converts Python arguments to the framework-free C++ API.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#ifdef MASKRNN_WITH_CUDA
#include "device_info.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_ext, m) {
  m.doc() = "maskrnn native extension (CUDA kernels when built with nvcc)";
#ifdef MASKRNN_WITH_CUDA
  m.attr("cuda_built") = true;
  m.attr("cuda_archs") = std::string(MASKRNN_CUDA_ARCHS);
  m.def("gpu_names", &maskrnn::gpu_names, "Names of the visible CUDA devices (empty without driver/GPU)");
#else
  m.attr("cuda_built") = false;
  m.attr("cuda_archs") = std::string();
  m.def("gpu_names", []() { return std::vector<std::string>(); });
#endif
}
