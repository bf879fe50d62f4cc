#pragma once
// cg::reduce lives in ../cooperative_groups.h in the host emulation.
#include "../cooperative_groups.h"
