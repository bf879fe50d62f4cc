#include "instantiate.cuh"

using maskrnn::ScanParams;
MASKRNN_INSTANTIATE(float)
