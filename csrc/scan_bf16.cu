#include "instantiate.cuh"

using maskrnn::ScanParams;
MASKRNN_INSTANTIATE(__nv_bfloat16)
