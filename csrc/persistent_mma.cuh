#pragma once
// Tensor cores for the persistent forward's step product in float16 and bfloat16 (issue 14; persistent_fwd.cuh
// runs it, float32 and float64 keep their FMA product). Per step a CTA forms P = h_{t-1} U_c: its slice's
// kPersistRows = 8 rows of h (the storage type) times its slice of U (H x G*HC gate columns), accumulated in
// fp32 by WMMA, stores P to shared memory, and every thread reads its units' pre-activations from there into
// the same gate math as the FMA path (cell_math.cuh).
//
// Shape m8n32k16. M = 8 is the slice's row count, so the slice size and the cluster layout stay those of the
// FMA path and no tile row is padding (m16n16k16 would need 16-row slices: half as many clusters at a given B,
// and half of every tile wasted at B <= 8, the latency-bound case these kernels are for). N = 32: a CTA of
// kRowGroups * HC = 8 HC threads (rounded up to whole warps) has ceil(HC / 4) warps and ceil(G HC / 32) <= that
// many column tiles, so warp w computes column tile w over all of K (in two accumulator fragments, the even and
// the odd k tiles, added in registers at the end): no split-K sums across warps, no second barrier. K = H is
// padded to a multiple of 16 with zero rows of h and U, and the CTA's G HC columns to a multiple of 32 with zero
// columns of U (their products are never read).
//
// Shared memory (storage type unless said): h buffers [Hp][8] (k-major, the A operand column-major, ldm 8),
// U's slice [Hp][NP] (row-major B operand, ldm NP; U[k][g H + j] at k NP + g HC + jj), P [8][NP] in fp32; Hp
// and NP the padded depth and width. Every operand tile starts at a multiple of 32 bytes, as WMMA requires.
//
// Numerics: products of two float16 or bfloat16 values are exact in fp32, so against the step kernels (which
// read h_{t-1} back from hs in the storage type, as the A operand here is) only the order of the fp32 sums
// differs. U stays in shared memory: as A/B fragments in registers it would take 8 registers a thread per
// 16 x 32 tile, 128 at H = 256, too many next to the gate math's (left for later, with measurements).
#include <mma.h>

#include <type_traits>

#include "cell_math.cuh"

namespace maskrnn {

// Storage types whose persistent forward product runs on tensor cores.
template <typename T>
constexpr bool kPersistMma = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

constexpr int kMmaM = 8, kMmaN = 32, kMmaK = 16;
constexpr int kWarp = 32;

__host__ __device__ constexpr int round_up(int n, int m) { return (n + m - 1) / m * m; }
__host__ __device__ constexpr int mma_depth(int H) { return round_up(H, kMmaK); }          // Hp
__host__ __device__ constexpr int mma_width(int G, int HC) { return round_up(G * HC, kMmaN); }  // NP

// acc[i][g] += P[r0 + i][g HC + jj] for the gates g in [g0, g1), P = hT^T Us computed for the column tiles that
// meet those gates. Every thread of the block calls it (it has a block barrier); `unit`: the thread owns a unit.
template <int G, int RT, typename T>
__device__ inline void persist_mma_dot(const T* hT, const T* Us, int Hp, int HC, int jj, int r0, int g0, int g1,
                                       bool unit, float* P, float (&acc)[RT][G]) {
  namespace wmma = nvcuda::wmma;
  const int NP = mma_width(G, HC), n = int(threadIdx.x) / kWarp * kMmaN;
  if (n < g1 * HC && n + kMmaN > g0 * HC) {  // warp-uniform
    // Two accumulators, the even and the odd k tiles: each mma waits for the one before it on its accumulator
    // (sm_90 SASS: two HMMA.16816 a tile, chained through the loop), so two chains take half the latency of one.
    wmma::fragment<wmma::matrix_a, kMmaM, kMmaN, kMmaK, T, wmma::col_major> a;
    wmma::fragment<wmma::matrix_b, kMmaM, kMmaN, kMmaK, T, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, kMmaM, kMmaN, kMmaK, float> d0, d1;  // named: an indexed pair is local memory
    wmma::fill_fragment(d0, 0.0f);
    wmma::fill_fragment(d1, 0.0f);
    auto tile = [&](int k, auto& d) {
      wmma::load_matrix_sync(a, hT + k * kMmaM, kMmaM);
      wmma::load_matrix_sync(b, Us + k * NP + n, NP);
      wmma::mma_sync(d, a, b, d);
    };
    int k = 0;
    for (; k + kMmaK < Hp; k += 2 * kMmaK) {
      tile(k, d0);
      tile(k + kMmaK, d1);
    }
    if (k < Hp) tile(k, d0);  // an odd count of tiles
#pragma unroll
    for (int i = 0; i < d0.num_elements; ++i) d0.x[i] += d1.x[i];  // the same layout: element by element
    wmma::store_matrix_sync(P + n, d0, NP, wmma::mem_row_major);
  }
  __syncthreads();
  if (!unit) return;
#pragma unroll
  for (int i = 0; i < RT; ++i)
#pragma unroll
    for (int g = 0; g < G; ++g)
      if (g >= g0 && g < g1) acc[i][g] += P[(r0 + i) * NP + g * HC + jj];
}

}  // namespace maskrnn
