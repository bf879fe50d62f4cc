#pragma once
// Persistent GRU backward, both variants (sm_90, issue 14): the layout of persistent_bwd.cuh (LSTM). CTA c owns
// the units [c*HC, (c+1)*HC), keeps the rows of U for them (U transposed: 3H x HC) in shared memory and the
// running gradients dh and carry of its units in registers; gate gradients of the slice's rows, every unit, are
// pushed into every peer's shared memory (distributed shared memory) and a cluster barrier makes them visible.
// The arithmetic is the step kernels' (gru_kernels.cuh): the same running gradients, the same rounding of the
// gradients to the storage type before they enter a product, the same order of the additions into dh.
//
// Data flow of step t (dh: the gradient of h_t so far, d = dh + d_out_t + carry, for the real rows):
// - reset_after (candidate x_h + r * (h U_h + b_h), hr = h U_h + b_h stored by the forward): dz, dhh and
//   dr = dhh * hr * r(1-r) are local to the unit, so dgr_t = (dz, dr, dhh * r) is pushed at once, and
//   dh_{t-1} = d * z + dgr_t U^T. One exchange (3H x rows), one barrier; the buffer is doubled so that step
//   t - 1 pushes while slow peers still read step t's.
// - not reset_after (candidate x_h + (r * h) U_h): dr_t = (dhh_t U_h^T) * h_{t-1} * r(1-r) needs dhh_t of
//   every unit, and dh_{t-1} = d * z + r * (dhh_t U_h^T) + (dz_t, dr_t) U_zr^T needs dr_t of every unit. The
//   chain dhh_t -> dr_t -> dh_{t-1} -> dhh_{t-1} crosses units twice, so a step needs two exchanges in series
//   (as the forward, whose r * h is exchanged in mid-step): (1) dhh_t, barrier, v = dhh_t U_h^T, dr_t,
//   dh += r * v; (2) (dz_t, dr_t), barrier; the next step opens with dh += (dz_t, dr_t) U_zr^T. Each buffer
//   has one barrier between its readers and its next writers, so neither is doubled. Merging the two would
//   need every CTA to form v for all H units (C times the product's work).
// A step where none of the slice's rows is computed (sizes[t] <= first row) pushes nothing and has no barrier.
// As in the forward, the step's writes (dgx, dgr) and the loads of the next step's inputs go between its last
// barrier's arrive and wait.
//
// Where U's rows outgrow shared memory, the kernel (kRegK > 0) keeps the first rows of each thread's part of k in
// registers, as the LSTM's (persistent_bwd.cuh). reset_after, in float32 from H = 433 (U's rows and the doubled
// buffer): kRegK = kPersistBwdRegK rows of U^T's 3H, and dgr in one buffer, with a second cluster barrier a step.
// Not reset_after, in float32 from H = 481: its two products have their own rows, kRegK = kPersistGruV1BwdRegK of
// U_zr^T's 2H (the (dz, dr) product) and kRegK / 2 of U_h^T's H (the dhh product); its buffers are single already.
#include "persistent_bwd.cuh"

namespace maskrnn {

// The register rows of the backward without reset_after (float32 only: in float16 and bfloat16 U's rows fit shared
// memory up to H = 512): 32 + 16, where its U rows and buffers need 233044 bytes from H = 481 (at most 232448).
#ifndef MASKRNN_PERSIST_BWD_V1_REG_K
#define MASKRNN_PERSIST_BWD_V1_REG_K 32
#endif
template <typename T> constexpr int kPersistGruV1BwdRegK = std::is_same_v<T, float> ? MASKRNN_PERSIST_BWD_V1_REG_K : 0;

// The exchange buffers of 3H x kPersistRows: reset_after's dgr doubled, but where U's rows are partly in registers.
template <bool kResetAfter, int kRegK> constexpr int kGruBwdBuffers = kResetAfter && !kRegK ? 2 : 1;

// Not reset_after: the register rows of U_h^T's part (the dhh product) for kRegK of U_zr^T's, and U_zr^T's rows in
// shared memory (U_h^T's follow them there); -1: a split that does not hold.
template <int kRegK> constexpr int kGruV1RegH = kRegK / 2;
template <int kRegK>
constexpr int gru_v1_zr_smem_rows(int H) {
  return kRegK ? persist_smem_rows(2 * H, kRegK) : 2 * H;
}

// U's rows in shared memory: 3H, or with kRegK register rows a thread: reset_after persist_smem_rows(3H, kRegK);
// else U_zr^T's then U_h^T's persist_smem_rows(H, kGruV1RegH). -1: a split that does not hold.
template <bool kResetAfter, int kRegK>
constexpr int gru_bwd_smem_rows(int H) {
  static_assert(kResetAfter || kRegK == 0 || kGruV1RegH<kRegK> >= 1, "U_h's part needs a register row");
  if (!kRegK) return 3 * H;
  if (kResetAfter) return persist_smem_rows(3 * H, kRegK);
  const int zr = gru_v1_zr_smem_rows<kRegK>(H), h = persist_smem_rows(H, kGruV1RegH<kRegK>);
  return zr < 0 || h < 0 ? -1 : zr + h;
}

// Shared memory of one CTA: persist_dot's partial sums, the exchange buffers (accumulation type), then U's rows
// (storage type; gru_bwd_smem_rows, and more than any GPU has where the split does not hold).
template <typename T, bool kResetAfter, int kRegK = 0>
constexpr size_t persist_gru_bwd_smem(int H, int HC) {
  const int rows = gru_bwd_smem_rows<kResetAfter, kRegK>(H);
  if (rows < 0) return ~size_t(0);
  return persist_red_smem<acc_t<T>>(1, HC) +
         sizeof(acc_t<T>) * size_t(3 * H) * kPersistRows * kGruBwdBuffers<kResetAfter, kRegK> +
         sizeof(T) * size_t(rows) * HC;
}

// Launched like persistent_fwd (persist_gru_bwd_smem<T, kResetAfter, kRegK> bytes of dynamic shared memory); the
// other arguments as in scan.h's gru_bwd (dgr: reset_after only).
template <typename T, bool kResetAfter, int kRegK = 0>
__global__ void __launch_bounds__(kMaxPersistThreads, 1)
    persistent_gru_bwd(int steps, int B, int H, int HC, const int32_t* sizes, const uint8_t* mask,
                       bool zero_output, const T* gx, const T* U, const T* hs, const T* hr, const T* d_out, T* dh,
                       T* dgx, T* dgr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90: the launcher never sends a launch here
#else
  namespace cg = cooperative_groups;
  using Acc = acc_t<T>;
  constexpr int RT = kRowsPerThread, R = kPersistRows;
  const cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks()), tid = int(threadIdx.x), jj = tid % HC, r0 = tid / HC * RT;
  const int j = int(cluster.block_rank()) * HC + jj, row0 = int(blockIdx.x) / C * R, K = 3 * H;
  const bool unit = j < H;
  extern __shared__ __align__(16) unsigned char persist_smem_raw[];
  // reset_after: [kBuffers][3H][R], dgr. Else [3H][R]: dhh (H), then dz and dr (2H).
  constexpr int kBuffers = kGruBwdBuffers<kResetAfter, kRegK>, kRegH = kResetAfter ? 0 : kGruV1RegH<kRegK>;
  Acc* red = reinterpret_cast<Acc*>(persist_smem_raw);  // persist_dot's partial sums
  Acc* dgbuf = red + persist_red_smem<Acc>(1, HC) / sizeof(Acc);
  Acc* zrbuf = dgbuf + H * R;  // not reset_after
  T* Us = reinterpret_cast<T*>(dgbuf + kBuffers * K * R);  // [Ks][HC]: U[j][k] at s * HC + jj
  const int64_t BH = int64_t(B) * H;
  // U's other rows, thread (jj, q)'s part's first kRegK: reset_after U^T's (3H); else U_zr^T's (2H), and in urh
  // U_h^T's first kRegH, whose shared-memory rows (Uh) follow U_zr^T's.
  PersistRegs<Acc, kRegK, 1> ur;
  PersistRegs<Acc, kRegH, 1> urh;
  T* Uh = Us + gru_v1_zr_smem_rows<kRegK>(H) * HC;  // not reset_after
  if constexpr (kResetAfter) {
    persist_load_ut(U, H, K, 0, K, HC, j, jj, unit, Us, ur);
  } else {
    persist_load_ut(U, H, K, 0, 2 * H, HC, j, jj, unit, Us, ur);
    persist_load_ut(U, H, K, 2 * H, H, HC, j, jj, unit, Uh, urh);
  }
  bool ok[RT];
  Acc dhr[RT], carry[RT];
#pragma unroll
  for (int i = 0; i < RT; ++i) {
    ok[i] = unit && row0 + r0 + i < B;
    dhr[i] = ok[i] ? to_acc(dh[int64_t(row0 + r0 + i) * H + j]) : Acc(0);
    carry[i] = Acc(0);
  }
  cluster.sync();  // every CTA of the cluster has started before its peers push into it

  // dh += A Us[0 : K_A]^T for the rows real at step t (n rows computed there), A the K_A x R buffer dgT (reset_after
  // U^T, else U_zr^T; their rows in ur too). Every thread of the CTA calls it (persist_dot).
  auto product = [&](const Acc* dgT, int KA, int t, int n) {
    Acc acc[RT][1] = {};
    persist_dot(dgT, Us, KA, HC, jj, r0, 0, 1, red, acc, ur);
#pragma unroll
    for (int i = 0; i < RT; ++i)
      if (ok[i] && is_real(mask, t, B, row0 + r0 + i, n)) dhr[i] += acc[i][0];
  };
  // A step's inputs at the thread's rows: its row count n, which rows are real, the output gradient, z, r and the
  // candidate from gx, h_{t-1} and (reset_after) the tape's h U_h + b. Loaded for step t - 1 between step t's last
  // cluster barrier's arrive and wait (as persistent_fwd's), so that their latency overlaps the barrier's.
  struct StepIn {
    int n;
    bool real[RT];
    Acc z[RT], hh[RT], r_gate[RT], h_prev[RT], hr_t[RT], dout[RT];
  };
  auto load = [&](int t) {
    StepIn in;
    in.n = rows_at(sizes, t, B);
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int b = row0 + r0 + i;
      const int64_t o = t * BH + int64_t(b) * H + j, row = (t * BH + int64_t(b) * H) * 3 + j;
      const bool real = ok[i] && is_real(mask, t, B, b, in.n);
      in.real[i] = real;
      in.dout[i] = ok[i] ? to_acc(d_out[o]) : Acc(0);
      in.z[i] = real ? to_acc(gx[row]) : Acc(0);
      in.r_gate[i] = real ? to_acc(gx[row + H]) : Acc(0);
      in.hh[i] = real ? to_acc(gx[row + 2 * H]) : Acc(0);
      in.h_prev[i] = real ? to_acc(hs[o]) : Acc(0);
      in.hr_t[i] = kResetAfter && real ? to_acc(hr[o]) : Acc(0);
    }
    return in;
  };
  StepIn in = load(steps - 1);  // steps >= 1: the launcher launches no empty scan
  int phase = 0;                // reset_after: pushes so far, the last one in dgbuf[phase % kBuffers]
  bool next_active = false;     // whether step t + 1 was computed for the slice (and its gradients pushed)
  int n_next = 0;               // rows computed at step t + 1
  for (int t = steps - 1; t >= 0; --t) {
    const int n = in.n;
    const bool active = n > row0;  // the same for the whole cluster
    if (next_active) {
      if constexpr (kResetAfter)
        product(dgbuf + (phase % kBuffers) * K * R, K, t + 1, n_next);
      else
        product(zrbuf, 2 * H, t + 1, n_next);
    }
    // The pushed gradients, rounded to the storage type (0 for rows not real at t): z, r, h (dhh for not
    // reset_after, its r comes after the first exchange). dg, dgh: the step's rows of dgx and dgr (reset_after),
    // written after the last barrier's arrive.
    Acc d[3][RT] = {};
    T dg[RT][3], dgh[RT][3];
#pragma unroll
    for (int i = 0; i < RT; ++i) {
#pragma unroll
      for (int g = 0; g < 3; ++g) dg[i][g] = dgh[i][g] = from_acc<T>(Acc(0));
      if (!ok[i]) continue;
      if (!in.real[i]) {
        carry[i] = (zero_output || t == 0) ? Acc(0) : carry[i] + in.dout[i];
        continue;
      }
      Acc dt = dhr[i] + in.dout[i] + carry[i], dz, dhh;
      carry[i] = Acc(0);
      gru_cell_bwd(in.z[i], in.hh[i], in.h_prev[i], dt, dz, dhh);
      dhr[i] = dt;
      dg[i][0] = from_acc<T>(dz);
      dg[i][2] = from_acc<T>(dhh);
      d[0][i] = to_acc(dg[i][0]);
      if constexpr (kResetAfter) {  // dr = dhh * (h U_h + b_h) * r(1-r)
        const Acc r = in.r_gate[i];
        dg[i][1] = from_acc<T>(dhh * in.hr_t[i] * r * (Acc(1) - r));
        dgh[i][0] = dg[i][0];
        dgh[i][1] = dg[i][1];
        dgh[i][2] = from_acc<T>(dhh * r);
        d[1][i] = to_acc(dg[i][1]);
        d[2][i] = to_acc(dgh[i][2]);
      } else {
        d[2][i] = to_acc(dg[i][2]);
      }
    }
    // dgx's and dgr's writes and the next step's loads: inside the last barrier where there is one.
    auto store_and_load = [&] {
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        if (!ok[i]) continue;
        const int64_t row = (t * BH + int64_t(row0 + r0 + i) * H) * 3 + j;
#pragma unroll
        for (int g = 0; g < 3; ++g) {
          dgx[row + g * H] = dg[i][g];
          if constexpr (kResetAfter) dgr[row + g * H] = dgh[i][g];
        }
      }
      if (t > 0) in = load(t - 1);
    };
    if (!active) {
      store_and_load();
    } else if constexpr (kResetAfter) {
      // One buffer: every CTA's product has read step t + 1's dgr before any peer writes step t's (the active
      // steps are a prefix of time: a step without a product here pushes into a buffer none has read).
      if (kBuffers == 1 && next_active) cluster.sync();
      persist_push<T, 3>(cluster, dgbuf + ((phase + 1) % kBuffers) * K * R, H, HC, unit, j, r0,
                         [&](int g, int i) { return d[g][i]; });
      // step t's gradients are everywhere; with two buffers, every read of the other is done
      cluster_sync_around(cluster, store_and_load);
      ++phase;
    } else {
      persist_push<T, 1>(cluster, dgbuf, H, HC, unit, j, r0, [&](int, int i) { return d[2][i]; });
      cluster.sync();  // dhh_t is everywhere; every read of the (dz, dr) buffer of step t + 1 is done
      Acc v[RT][1] = {};  // v = dhh_t U_h^T: the gradient of r * h_{t-1} -> dr_t, and r * v into dh
      persist_dot(dgbuf, Uh, H, HC, jj, r0, 0, 1, red, v, urh);
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        if (!in.real[i]) continue;
        const Acc r = in.r_gate[i];
        dg[i][1] = from_acc<T>(v[i][0] * in.h_prev[i] * r * (Acc(1) - r));
        dhr[i] += v[i][0] * r;
        d[1][i] = to_acc(dg[i][1]);
      }
      persist_push<T, 2>(cluster, zrbuf, H, HC, unit, j, r0, [&](int g, int i) { return d[g][i]; });
      // (dz_t, dr_t) are everywhere; every read of dhh_t is done
      cluster_sync_around(cluster, store_and_load);
    }
    next_active = active;
    n_next = n;
  }
  if (next_active) {  // the gradient of h0
    if constexpr (kResetAfter)
      product(dgbuf + (phase % kBuffers) * K * R, K, 0, n_next);
    else
      product(zrbuf, 2 * H, 0, n_next);
  }
#pragma unroll
  for (int i = 0; i < RT; ++i)
    if (ok[i]) dh[int64_t(row0 + r0 + i) * H + j] = from_acc<T>(dhr[i]);
#endif
}

}  // namespace maskrnn
