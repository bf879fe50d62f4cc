#pragma once
// Persistent forward scans (sm_90, issue 14): one launch per call. A thread-block cluster of C CTAs runs one
// slice of kPersistRows batch rows for the whole sequence; CTA c owns the units [c*HC, (c+1)*HC) (HC = units,
// the last CTA may own fewer) with all G gate columns of them, so the cell math is local, and keeps its slice
// of U (H x G x HC, storage type) in shared memory (in float32 where that is too small, H up to 512, part of it in
// its threads' registers: kPersistRegK). Each CTA also holds h of the slice's rows for every unit
// (accumulation type, k-major: h[k][row]); a CTA pushes its new h values into every peer's copy through
// distributed shared memory, then one cluster barrier ends the step (two for GRU without reset_after, whose
// r * h is exchanged the same way in mid-step). The step's writes to global memory (out, hs, the tape, the gates
// into gx) and the loads of the next step's inputs go between that barrier's arrive and its wait
// (cluster_sync_around: why). The tape is the step kernels' (lstm_kernels.cuh,
// gru_kernels.cuh), so their backward runs unchanged after it. A step where none of the slice's rows is
// computed (sizes[t] <= first row: rows finished, or not yet started when pre-padded) is only carried: no
// product, no exchange, no barrier. The product h U (persist_dot) splits k among a unit's threads, each over all
// the slice's rows, and adds the parts through shared memory. In float16 and bfloat16 the product runs on tensor cores
// (persistent_mma.cuh: its layout and shape), h is exchanged in the storage type and a CTA's threads are rounded
// up to whole warps; the threads past kRowGroups * HC own no unit.
#include <cooperative_groups.h>

#include <type_traits>
#include <utility>

#include "persistent_mma.cuh"
#include "tile.cuh"

namespace maskrnn {

enum class Cell { kLstm, kGruResetAfter, kGru };  // kGru: GRU with reset_after = false
template <Cell C> constexpr int kGates = C == Cell::kLstm ? 4 : 3;
// GRU without reset_after exchanges r * h_{t-1} before its candidate's product: two barriers a step, which
// also let one h buffer serve (step t reads it before the first barrier, writes it after).
template <Cell C> constexpr int kHBuffers = C == Cell::kGru ? 1 : 2;

constexpr int kPersistRows = 8;     // batch rows per cluster
// A thread's rows in the cell math. One: eight threads a unit, each summing an eighth of k in persist_dot. With
// two rows, four threads summed quarters and each warp's instruction stream bound the step (one warp per
// scheduler; ncu in bench/results/gpu-H100-20261126b). On an H100 (bench/results/gpu-H100-20261127c), fp32 scan
// kernels at (64,100,128,256) / (16,200,64,128): LSTM forward 475 -> 416 / 663 -> 484 us, backward 718 -> 562 /
// 909 -> 603 us; GRU forward 378 -> 341 / 552 -> 422 us, backward 605 -> 446 / 789 -> 532 us.
constexpr int kRowsPerThread = 1;
// Threads per unit (in persist_dot: k split kRowGroups ways); a CTA runs kRowGroups * HC.
constexpr int kRowGroups = kPersistRows / kRowsPerThread;
constexpr int kMaxPersistThreads = 256;  // __launch_bounds__: up to 255 registers a thread
static_assert(kMmaM == kPersistRows, "a tensor-core tile's rows are a batch slice");

// The element type of the forward's h buffers: the storage type where h feeds tensor cores.
template <typename T> using persist_h_t = std::conditional_t<kPersistMma<T>, T, acc_t<T>>;
// h buffers of the forward: kHBuffers, and GRU without reset_after's r * h.
template <Cell C> constexpr int kFwdBuffers = kHBuffers<C> + (C == Cell::kGru ? 1 : 0);

// Shared memory of persist_dot's partial sums (red): kRowGroups x G x kPersistRows x HC values.
template <typename Acc>
__host__ __device__ constexpr size_t persist_red_smem(int G, int HC) {
  return sizeof(Acc) * size_t(kRowGroups) * G * kPersistRows * HC;
}

// U's rows a thread of the float32 forward may hold in registers (kRegK of persistent_fwd): where U's slice does
// not fit a CTA's shared memory (H = 512: 256 KiB of U per CTA of a 16-CTA cluster, at most 227), thread (jj, q)
// keeps the first kRegK rows of its part of k (persist_dot) for its unit's G gates, 4 * kRegK registers for the
// LSTM (128 of the 255 a thread may have at 256 threads a CTA), and shared memory holds the rest of the slice.
// Zero: all of U's slice in shared memory (every other dtype: float64's 32 rows would be 256 registers).
// MASKRNN_PERSIST_REG_K (and MASKRNN_PERSIST_BWD_REG_K, persistent_bwd.cuh; MASKRNN_PERSIST_BWD_V1_REG_K,
// persistent_gru_bwd.cuh) set other counts: the emulation's ThreadSanitizer build runs the register kernels at
// H = 37 with 2, 4 and 4 (tests/cuda_emulation/test_tsan.py).
#ifndef MASKRNN_PERSIST_REG_K
#define MASKRNN_PERSIST_REG_K 32
#endif
template <typename T> constexpr int kPersistRegK = std::is_same_v<T, float> ? MASKRNN_PERSIST_REG_K : 0;

// A thread's U rows in registers (persist_dot): u[i][g] = U[q * kq + i][g * H + j] for unit j, part q of k.
template <typename Acc, int kRegK, int G> struct PersistRegs {
  Acc u[kRegK][G];
};
template <typename Acc, int G> struct PersistRegs<Acc, 0, G> {};

// Rows of U's slice in shared memory with kRegK rows of each of the kRowGroups parts of k (ceil(H / kRowGroups)
// rows each) in registers; -1 where that split does not hold (a part shorter than kRegK, or a part's register
// rows past H): that kernel cannot run.
__host__ __device__ constexpr int persist_smem_rows(int H, int kRegK) {
  const int kq = (H + kRowGroups - 1) / kRowGroups;
  return kq >= kRegK && (kRowGroups - 1) * kq + kRegK <= H ? kRowGroups * (kq - kRegK) : -1;
}

// The row k of U (of k's K rows, parts of kq) held in shared memory's row s (persist_dot): kRegK = 0, k = s; else
// part q's rows past its first kRegK, the parts one after another.
__host__ __device__ constexpr int persist_smem_k(int s, int kq, int kRegK) {
  return kRegK ? s / (kq - kRegK) * kq + kRegK + s % (kq - kRegK) : s;
}

// Shared memory of one CTA: the FMA product's partial sums (persist_red_smem), h buffers (and the r * h buffer) of
// Hp rows, the U slice (Hs x NP), then the tensor cores' fp32 product (8 x NP). FMA: Hp = H, NP = G * HC, no
// product buffer; Hs = H, or persist_smem_rows(H, kRegK) with U's other rows in registers. Tensor cores: no
// partial sums, Hs = Hp. A kRegK that cannot split H: more than any GPU has (the launch does not fit).
template <typename T, Cell C, int kRegK = 0>
constexpr size_t persist_smem(int H, int HC) {
  constexpr bool mma = kPersistMma<T>;
  static_assert(!mma || kRegK == 0, "tensor cores read all of U's slice from shared memory");
  const size_t Hp = mma ? mma_depth(H) : H, NP = mma ? mma_width(kGates<C>, HC) : kGates<C> * HC;
  if (kRegK && persist_smem_rows(H, kRegK) < 0) return ~size_t(0);
  const size_t Hs = kRegK ? size_t(persist_smem_rows(H, kRegK)) : Hp;
  return (mma ? 0 : persist_red_smem<acc_t<T>>(kGates<C>, HC)) +
         sizeof(persist_h_t<T>) * Hp * kPersistRows * kFwdBuffers<C> + sizeof(T) * Hs * NP +
         (mma ? sizeof(float) * kPersistRows * NP : 0);
}

// The one-cluster kernels' product: acc[i][g] += sum over k < K of hT[k][r0 + i] * U[k][g][jj] for the gates g in
// [g0, g1), hT K x kPersistRows (k-major, 16-byte aligned). The CTA's kRowGroups thread groups (q = r0 /
// kRowsPerThread) split k in parts of kq = ceil(K / kRowGroups): thread (jj, q) sums its part for all kPersistRows
// rows of the slice, so one load of U feeds kPersistRows FMAs and the rows of h come in two vector loads (the same
// address across a warp); the parts' sums meet in red (persist_red_smem) and each thread adds up those of its own
// rows. U: the part's first kRegK rows in the thread's registers (ur, PersistRegs), its others in shared memory,
// Us[(s * G + g) * HC + jj] for row s = k - (q + 1) * kRegK (part q's rows past its first kRegK follow the
// earlier parts' rows there; kRegK = 0: Us's row k).
// Every thread of the CTA calls it (block barriers); threads past the last unit sum U's zero columns.
template <int G, typename Acc, typename T, int kRegK = 0>
__device__ inline void persist_dot(const Acc* hT, const T* Us, int K, int HC, int jj, int r0, int g0, int g1,
                                   Acc* red, Acc (&acc)[kRowsPerThread][G],
                                   const PersistRegs<Acc, kRegK, G>& ur = PersistRegs<Acc, kRegK, G>{}) {
  constexpr int R = kPersistRows, Q = kRowGroups;
  static_assert(R == 8, "h's rows at one k are two 4-wide vector loads");
  const int q = r0 / kRowsPerThread, kq = (K + Q - 1) / Q, k1 = K < (q + 1) * kq ? K : (q + 1) * kq;
  Acc part[R][G] = {};
  // part += h's rows at k times U[k][g][jj] = u(g), for the gates in [g0, g1)
  auto add = [&](int k, auto u) {
    Acc lo[4], hi[4];
    loadv<4>(hT + k * R, lo);
    loadv<4>(hT + k * R + 4, hi);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g < g0 || g >= g1) continue;
      const Acc ug = u(g);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        part[r][g] += lo[r] * ug;
        part[r + 4][g] += hi[r] * ug;
      }
    }
  };
  if constexpr (kRegK > 0)
#pragma unroll
    for (int i = 0; i < kRegK; ++i) add(q * kq + i, [&](int g) { return ur.u[i][g]; });
  const int s0 = (q + 1) * kRegK;  // k's row in Us: k - s0
#pragma unroll 4
  for (int k = q * kq + kRegK; k < k1; ++k) add(k, [&](int g) { return to_acc(Us[((k - s0) * G + g) * HC + jj]); });
  __syncthreads();  // every thread has read the sums of the CTA's previous product (today's callers pass a
                    // barrier between two products anyway: a guard for one that does not)
#pragma unroll
  for (int g = 0; g < G; ++g)
    if (g >= g0 && g < g1)
#pragma unroll
      for (int r = 0; r < R; ++r) red[((q * G + g) * R + r) * HC + jj] = part[r][g];
  __syncthreads();
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g < g0 || g >= g1) continue;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      Acc sum = 0;
#pragma unroll
      for (int s = 0; s < Q; ++s) sum += red[((s * G + g) * R + r0 + i) * HC + jj];
      acc[i][g] += sum;
    }
  }
}

// GRU without reset_after, first half at one row: z and r from their pre-activations (gv: gx's, acc: h U's),
// stored in the row's gx (g_row); returns r * h_{t-1}.
template <typename T, typename Acc>
__device__ inline Acc persist_gru_gates(const Acc (&gv)[3], const Acc (&acc)[3], Acc h, int H, T* g_row, Acc& z) {
  z = sigmoid(gv[0] + acc[0]);
  const Acc r_gate = sigmoid(gv[1] + acc[1]);
  g_row[0] = from_acc<T>(z);
  g_row[H] = from_acc<T>(r_gate);
  return r_gate * h;
}

// What persist_cell leaves for persist_store to write of one row at unit j and step t: whether the row is real, the
// gates' values into its gx (LSTM: the four activations; GRU with reset_after: z, r and the candidate; without:
// the candidate, z and r went in mid-step), the tape's (reset_after GRU: the candidate's h U_h + b, 0 where the row
// is not real), the output and the states after the step. The persistent forward holds them across the step's
// exchange and writes them once its cluster barrier has been arrived at (persistent_fwd).
template <typename T, int G> struct PersistOut {
  bool real;
  T gate[G], tape, y, h, c;
};

// One row at unit j after step t's product, for the persistent kernels: the cell where the row is real, else
// the carry. gv: gx's pre-activations, acc: h U's (the candidate's (r * h) U_h for GRU without reset_after, whose
// z comes in); h, c: the states (in: after t - 1, out: after t); y: the output carried into padded steps.
template <typename T, Cell kCell, typename Acc, int G = kGates<kCell>>
__device__ inline PersistOut<T, G> persist_cell(bool real, bool zero_output, const Acc (&gv)[G],
                                                const Acc (&acc)[G], const Acc (&bias)[G], Acc z, Acc& h, Acc& c,
                                                T& y) {
  PersistOut<T, G> v;
  v.real = real;
  v.tape = from_acc<T>(Acc(0));
  if (real) {
    if constexpr (kCell == Cell::kLstm) {
      Acc a[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) a[g] = gv[g] + acc[g];
      Acc c_new, h_new;
      lstm_cell_fwd(a, c, c_new, h_new);
#pragma unroll
      for (int g = 0; g < 4; ++g) v.gate[g] = from_acc<T>(a[g]);
      c = c_new;
      h = h_new;
    } else if constexpr (kCell == Cell::kGru) {
      Acc hh;
      h = gru_cell_fwd(z, gv[2], acc[2], h, hh);
      v.gate[2] = from_acc<T>(hh);
    } else {
      const Acc zg = sigmoid(gv[0] + acc[0] + bias[0]);
      const Acc r_gate = sigmoid(gv[1] + acc[1] + bias[1]);
      const Acc rh = acc[2] + bias[2];
      Acc hh;
      h = gru_cell_fwd(zg, gv[2], r_gate * rh, h, hh);
      v.gate[0] = from_acc<T>(zg);
      v.gate[1] = from_acc<T>(r_gate);
      v.gate[2] = from_acc<T>(hh);
      v.tape = from_acc<T>(rh);
    }
    y = from_acc<T>(h);
  } else if (zero_output) {
    y = from_acc<T>(Acc(0));  // else the previous output (0 before the first step)
  }
  v.y = y;
  v.h = from_acc<T>(h);
  v.c = from_acc<T>(c);
  return v;
}

// persist_cell's values of one row into out, hs and the tape at o = t * BH + b * H + j, and its gates into the
// row's gx (g_row: at gate 0 of unit j).
template <typename T, Cell kCell, int G = kGates<kCell>>
__device__ inline void persist_store(const PersistOut<T, G>& v, int H, int64_t BH, int64_t o, T* g_row, T* out,
                                     T* hs, T* tape) {
  if (v.real) {
#pragma unroll
    for (int g = kCell == Cell::kGru ? 2 : 0; g < G; ++g) g_row[g * H] = v.gate[g];
  }
  if constexpr (kCell == Cell::kGruResetAfter) tape[o] = v.tape;
  out[o] = v.y;
  hs[o + BH] = v.h;
  if constexpr (kCell == Cell::kLstm) tape[o + BH] = v.c;
}

// v(g, i) (the thread's rows r0 + i at unit j, for g < N) into buffer[(g * H + j) * kPersistRows + r0 + i] of every
// CTA of the cluster, rounded to the buffer's type E: into the CTA's own copy first, then its runs (its HC units,
// fewer in the last CTA: contiguous for each g) from there into each peer's copy in 16-byte pieces, so that a
// warp's stores into a peer are consecutive (value by value they would be kPersistRows apart: 8-way bank
// conflicts). Every thread of the CTA calls it (a block barrier); unit: the thread owns unit j. Templated on the
// storage type T, not only its accumulation type: each dtype's translation unit keeps its own copy, and the
// float32 one is the copy the ThreadSanitizer build instruments (it links the half types' objects plain).
template <typename T, int N, typename E, class Cluster, class V>
__device__ inline void persist_push(const Cluster& cluster, E* buffer, int H, int HC, bool unit, int j, int r0, V v) {
  constexpr int R = kPersistRows;
  static_assert(R * sizeof(E) % 16 == 0, "a unit's rows are whole 16-byte pieces");
  const unsigned me = cluster.block_rank();
  const int j0 = int(me) * HC, hc = H - j0 < HC ? H - j0 : HC;  // the CTA's units
  if (unit)
#pragma unroll
    for (int g = 0; g < N; ++g)
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) buffer[(g * H + j) * R + r0 + i] = from_acc<E>(v(g, i));
  __syncthreads();
  const int pieces = hc * R * int(sizeof(E)) / 16, peers = int(cluster.num_blocks()) - 1;
  for (int x = int(threadIdx.x); x < peers * N * pieces; x += int(blockDim.x)) {
    const int piece = x % pieces, g = x / pieces % N, c = x / (pieces * N);
    const int64_t at = int64_t(g * H + j0) * R;
    E* dst = cluster.map_shared_rank(buffer, unsigned(c) + (unsigned(c) >= me));
    reinterpret_cast<uint4*>(dst + at)[piece] = reinterpret_cast<const uint4*>(buffer + at)[piece];
  }
}

// A cluster barrier with `between` run after its arrive and before its wait: the step's writes to global memory
// and the next step's loads, which no peer reads. In sm_90 SASS the arrive's release is a MEMBAR.ALL.GPU (it waits
// for every earlier write of the thread to reach L2: only the pushes need to) and the wait is followed by CCTL.IVALL
// (L1 invalidated: loads after it are L2 round trips), so work between the two overlaps the barrier.
template <class Cluster, class F>
__device__ inline void cluster_sync_around(const Cluster& c, F between) {
  auto token = c.barrier_arrive();
  between();
  c.barrier_wait(std::move(token));
}

// Launched as a grid of C * ceil(B / kPersistRows) CTAs of kRowGroups * HC threads (rounded up to whole warps
// where kPersistMma<T>), clusters of (C,1,1), with persist_smem<T, kCell, kRegK> bytes of dynamic shared memory.
// kRegK: U's rows each thread holds in registers (kPersistRegK; 0: U's slice all in shared memory). sizes:
// scan.h's n_rows (device; nullptr: every row): rows [0, sizes[t]) are computed at step t. tape: cs (LSTM) or hr
// (GRU); b_rec: GRU reset_after only. The other arguments as in scan.h.
template <typename T, Cell kCell, int kRegK = 0>
__global__ void __launch_bounds__(kMaxPersistThreads, 1)
    persistent_fwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask, bool zero_output,
                   T* gx, const T* U, const T* b_rec, T* out, T* hs, T* tape) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90: the launcher never sends a launch here
#else
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  using HT = persist_h_t<T>;
  constexpr int G = kGates<kCell>, RT = kRowsPerThread, R = kPersistRows;
  constexpr bool kLstm = kCell == Cell::kLstm, kSplit = kCell == Cell::kGru, kMma = kPersistMma<T>;
  const cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks()), tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT;
  const int j = int(cluster.block_rank()) * HC + jj, row0 = int(blockIdx.x) / C * R;
  const bool unit = j < H && tid < kRowGroups * HC;
  const int Hp = kMma ? mma_depth(H) : H, NP = kMma ? mma_width(G, HC) : G * HC;  // see persist_smem
  const int kq = (H + kRowGroups - 1) / kRowGroups, Hs = kRegK ? persist_smem_rows(H, kRegK) : Hp;
  extern __shared__ __align__(128) unsigned char persist_fwd_smem[];
  Acc* red = reinterpret_cast<Acc*>(persist_fwd_smem);  // persist_dot's partial sums, FMA only
  HT* hbuf = reinterpret_cast<HT*>(persist_fwd_smem + (kMma ? 0 : persist_red_smem<Acc>(G, HC)));  // [kHBuffers][Hp][R]
  HT* rhbuf = hbuf + kHBuffers<kCell> * Hp * R;         // [Hp][R], kSplit only
  T* Us = reinterpret_cast<T*>(hbuf + kFwdBuffers<kCell> * Hp * R);  // [Hs][NP]: U[k][g*H + j] at s*NP + g*HC + jj
  float* P = kMma ? reinterpret_cast<float*>(Us + Hs * NP) : nullptr;  // [R][NP], tensor cores only
  const int64_t BH = int64_t(B) * H;

  for (int i = tid; i < Hs * NP; i += int(blockDim.x)) {
    const int s = i / NP, g = i % NP / HC, u = j - jj + i % NP % HC, k = persist_smem_k(s, kq, kRegK);
    Us[i] = k < H && g < G && u < H ? U[int64_t(k) * G * H + g * H + u] : T(0.0f);
  }
  PersistRegs<Acc, kRegK, G> ur;  // the other rows: thread (jj, q)'s part's first kRegK
  if constexpr (kRegK > 0)
#pragma unroll
    for (int i = 0; i < kRegK; ++i)
#pragma unroll
      for (int g = 0; g < G; ++g)
        ur.u[i][g] = unit ? to_acc(U[int64_t(tid / HC * kq + i) * G * H + g * H + j]) : Acc(0);
  // h_0 into the first buffer, zeros elsewhere: the padding rows k >= H are never written again.
  for (int i = tid; i < kFwdBuffers<kCell> * Hp * R; i += int(blockDim.x)) {
    const int b = row0 + i % R, k = i / R;
    hbuf[i] = k < H && b < B ? convert<HT>(hs[int64_t(b) * H + k]) : HT(0.0f);
  }
  // The thread's rows row0 + r0 + i at unit j: states in registers, the output it last wrote (carried).
  bool ok[RT];
  Acc h[RT], c[RT] = {}, bias[G] = {};
  T y[RT];
#pragma unroll
  for (int i = 0; i < RT; ++i) {
    const int b = row0 + r0 + i;
    ok[i] = unit && b < B;
    h[i] = ok[i] ? to_acc(hs[int64_t(b) * H + j]) : Acc(0);
    if constexpr (kLstm) c[i] = ok[i] ? to_acc(tape[int64_t(b) * H + j]) : Acc(0);
    y[i] = from_acc<T>(Acc(0));
  }
  if (kCell == Cell::kGruResetAfter && unit)
    for (int g = 0; g < G; ++g) bias[g] = to_acc(b_rec[g * H + j]);
  cluster.sync();  // every CTA of the cluster has started and loaded before its peers push into it

  // A step's inputs at the thread's rows: its row count n, which rows are real, gx's pre-activations. Loaded for step
  // t + 1 between step t's cluster barrier's arrive and wait, so that no step starts by waiting for its row count
  // and then for gx (the wait invalidates L1: each is an L2 round trip).
  struct StepIn {
    int n;
    bool real[RT];
    Acc gv[RT][G];
  };
  auto load = [&](int t) {
    StepIn in;
    in.n = rows_at(sizes, t, B);
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int b = row0 + r0 + i;
      in.real[i] = ok[i] && is_real(mask, t, B, b, in.n);
      const T* g_row = gx + (t * BH + int64_t(b) * H) * G + j;
#pragma unroll
      for (int g = 0; g < G; ++g) in.gv[i][g] = in.real[i] ? to_acc(g_row[g * H]) : Acc(0);
    }
    return in;
  };
  StepIn in = load(0);  // steps >= 1: the launcher launches no empty scan
  int phase = 0;        // computed steps so far: h_t is in hbuf[phase % kHBuffers]
  for (int t = 0; t < steps; ++t) {
    const bool active = in.n > row0;  // the same for the whole cluster
    T* g_row[RT];
#pragma unroll
    for (int i = 0; i < RT; ++i) g_row[i] = gx + (t * BH + int64_t(row0 + r0 + i) * H) * G + j;
    Acc acc[RT][G] = {}, z[RT] = {};
    // acc[i][g] += (h U)[row0 + r0 + i][g * H + j] for g in [g0, g1), h from the buffer hT; block-uniform.
    auto product = [&](const HT* hT, int g0, int g1) {
      if constexpr (kMma)
        persist_mma_dot(hT, Us, Hp, HC, jj, r0, g0, g1, unit, P, acc);
      else
        persist_dot(hT, Us, H, HC, jj, r0, g0, g1, red, acc, ur);
    };
    if (active) product(hbuf + (phase % kHBuffers<kCell>) * Hp * R, 0, kSplit ? 2 : G);
    if constexpr (kSplit) {  // z, r and r * h_{t-1} first; the candidate after the exchange
      Acc rh[RT];
#pragma unroll
      for (int i = 0; i < RT; ++i)
        rh[i] = in.real[i] ? persist_gru_gates(in.gv[i], acc[i], h[i], H, g_row[i], z[i]) : Acc(0);
      if (active) {
        persist_push<T, 1>(cluster, rhbuf, H, HC, unit, j, r0, [&](int, int i) { return rh[i]; });
        cluster.sync();
        product(rhbuf, 2, 3);
      }
#pragma unroll
      for (int i = 0; i < RT; ++i)
        if (ok[i]) tape[t * BH + int64_t(row0 + r0 + i) * H + j] = from_acc<T>(rh[i]);
    }
    PersistOut<T, G> v[RT];
#pragma unroll
    for (int i = 0; i < RT; ++i)
      if (ok[i]) v[i] = persist_cell<T, kCell>(in.real[i], zero_output, in.gv[i], acc[i], bias, z[i], h[i], c[i], y[i]);
    // The step's writes to global memory, and the next step's loads: inside the barrier where there is one.
    auto store_and_load = [&] {
#pragma unroll
      for (int i = 0; i < RT; ++i)
        if (ok[i])
          persist_store<T, kCell>(v[i], H, BH, t * BH + int64_t(row0 + r0 + i) * H + j, g_row[i], out, hs, tape);
      if (t + 1 < steps) in = load(t + 1);
    };
    if (active) {
      persist_push<T, 1>(cluster, hbuf + ((phase + 1) % kHBuffers<kCell>) * Hp * R, H, HC, unit, j, r0,
                         [&](int, int i) { return h[i]; });
      // h_{t+1} is everywhere; with two buffers, every read of the other one is done
      cluster_sync_around(cluster, store_and_load);
      ++phase;
    } else {
      store_and_load();
    }
  }
#endif
}

}  // namespace maskrnn
