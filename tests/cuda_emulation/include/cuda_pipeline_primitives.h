#pragma once
// cp.async through the pipeline primitives, for the host emulation (found before the toolkit's header): a copy
// is deferred until __pipeline_wait_prior retires its group, so a kernel reading its destination too early
// reads the old contents, and TSan sees the write only where the wait puts it.
#include "emu_device.h"

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size, size_t zfill = 0) {
  emu::self.pipeline.back().push_back({dst, src, size, zfill});
}
inline void __pipeline_commit() { emu::self.pipeline.emplace_back(); }
inline void __pipeline_wait_prior(size_t n) {
  while (emu::self.pipeline.size() - 1 > n) {
    for (const emu::AsyncCopy& c : emu::self.pipeline.front()) {
      std::memcpy(c.dst, c.src, c.size - c.zfill);
      std::memset(static_cast<char*>(c.dst) + c.size - c.zfill, 0, c.zfill);
    }
    emu::self.pipeline.erase(emu::self.pipeline.begin());
  }
}
