// Host emulation of the CUDA scan kernels, for checking their index math without a GPU (see build.py).
// Blocks run one after another; each CUDA thread of a block is a std::thread and __syncthreads a std::barrier;
// __shared__ arrays become function statics, shared by the threads of the one running block. Launches were
// rewritten by build.py into emu_launch calls. Races between threads are not detected (use compute-sanitizer).
#include <cuda_runtime.h>

#include <barrier>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
thread_local std::barrier<>* emu_barrier;

inline void __syncthreads() { emu_barrier->arrive_and_wait(); }

template <class F>
void emu_launch(dim3 grid, dim3 block, F kernel) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) throw std::runtime_error("emulated launch of an empty grid");
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(threads);
        std::vector<std::thread> pool;
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
              pool.emplace_back([&, tx, ty, tz] {
                threadIdx = {tx, ty, tz};
                blockIdx = {bx, by, bz};
                blockDim = block;
                gridDim = grid;
                emu_barrier = &barrier;
                kernel();
                barrier.arrive_and_drop();  // an exited thread no longer takes part in __syncthreads
              });
        for (auto& t : pool) t.join();
      }
}

// No CUDA runtime is linked: the check macros only need these two.
extern "C" const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }
#include "intrinsics.h"

#include "device_info.h"
#include "instantiate.cuh"

using maskrnn::ScanParams;
MASKRNN_INSTANTIATE(float)
MASKRNN_INSTANTIATE(double)
MASKRNN_INSTANTIATE(__half)
MASKRNN_INSTANTIATE(__nv_bfloat16)

std::vector<std::string> maskrnn::gpu_names() { return {"host emulation"}; }
