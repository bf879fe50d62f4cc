#pragma once
// The host emulation's cp.async: see cuda_pipeline_primitives.h.
#include "cuda_pipeline_primitives.h"
