#pragma once
#include <string>
#include <vector>

namespace maskrnn {
// Names of the visible CUDA devices; empty when there is no driver or no GPU (never throws for that).
std::vector<std::string> gpu_names();
}  // namespace maskrnn
