#pragma once
// cp.async through the pipeline primitives, for the host emulation (found before the toolkit's header): a copy
// is deferred until __pipeline_wait_prior retires its group, so a kernel reading its destination too early
// reads the old contents, and TSan sees the write only where the wait puts it.
#include <vector>

#include "emu_device.h"

namespace emu {
struct AsyncCopy {
  void* dst;
  const void* src;
  size_t size, zfill;
};
// The calling CUDA thread's groups: committed ones first, the open one last.
inline thread_local std::vector<std::vector<AsyncCopy>> pipeline(1);
}  // namespace emu

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size, size_t zfill = 0) {
  emu::pipeline.back().push_back({dst, src, size, zfill});
}
inline void __pipeline_commit() { emu::pipeline.emplace_back(); }
inline void __pipeline_wait_prior(size_t n) {
  while (emu::pipeline.size() - 1 > n) {
    for (const emu::AsyncCopy& c : emu::pipeline.front()) {
      std::memcpy(c.dst, c.src, c.size - c.zfill);
      std::memset(static_cast<char*>(c.dst) + c.size - c.zfill, 0, c.zfill);
    }
    emu::pipeline.erase(emu::pipeline.begin());
  }
}
