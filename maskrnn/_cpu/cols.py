"""Both cores on a small batch: the hidden units split across threads, one spin barrier per step.

The row split (rows.py) needs MIN_ROWS rows per thread, so a batch of 4 ran on one thread, and its step read
all of U (4 MiB at H = 512, float32) from beyond the L2 every step. Here thread p of n owns a contiguous block of
hidden units for the whole call: the gate columns of its units of W[; b] and U (half of U, 2 MiB at H = 512, n = 2:
about one core's L2), their projections, products and gate math, and its units of c. A step needs all of
h_{t-1}: h is double-buffered by the parity of the global step (each thread reads h[t % 2] and writes its units of
h[(t + 1) % 2]), so one barrier after each step's writes is the only synchronisation.

The barrier is a counter that only grows (``wait``): each thread adds 1 after a step and spins until it reaches
n (k + 1) for its k-th step of the call, yielding the core after a while (a busy machine may have descheduled
the other thread). The kernels allocate nothing and raise nothing, so no thread leaves a barrier unmatched.

Measured at (4,200,256,512) float32 on this 2-core machine (interleaved, under ``chrt -f 10`` against the load):
inference 1.7-1.9x (LSTM) and 1.9-2.0x (GRU) the one-thread kernels, LSTM forward+backward 1.3-1.6x.
"""

import os
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _scan
from . import gemm, rows
from .cache import njit
from .cells import INLINE, JIT, gru_cell_fwd, gru_gates_zr, lstm_cell_bwd, lstm_cell_fwd, unit
from .gemm import product
from .infer import _carry_output, _input_buffers, _project

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
SPINS = 1 << 12  # spins between yields of the core (a step is ~10-100 us; the other thread is usually near)
_POSIX = hasattr(os, "sched_yield")
MIN_UNITS = 64  # hidden units per thread at least (a guess, not measured: a barrier per step of a tiny product)


@intrinsic
def _arrive(typingctx, counter):
    """Atomically adds 1 to counter[0] (int64), with release and acquire ordering."""

    def codegen(context, builder, signature, args):
        ptr = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0]).data
        builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "acq_rel")
        return context.get_dummy_value()

    return types.void(counter), codegen


@intrinsic
def _arrived(typingctx, counter):
    """counter[0] (int64), read with acquire ordering."""

    def codegen(context, builder, signature, args):
        ptr = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0]).data
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(counter), codegen


@intrinsic
def _relax(typingctx, spins):
    """A spin loop's pause (x86 ``pause``), and every SPINS spins ``sched_yield``."""

    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        due = builder.icmp_signed("==", builder.and_(args[0], ir.Constant(ir.IntType(64), SPINS - 1)),
                                  ir.Constant(ir.IntType(64), SPINS - 1))
        with builder.if_then(due, likely=False):
            yield_ = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                    "sched_yield")
            builder.call(yield_, [])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@njit(**INLINE)
def wait(counter, target):
    """This thread's arrival at a barrier, then a spin until every thread's: target = n (k + 1) for the k-th
    barrier of n threads since counter was 0."""
    _arrive(counter)
    spins = 0
    while _arrived(counter) < target:
        _relax(spins)
        spins += 1


def threads_for(B, H, GH, sizes=None):
    """Threads of a unit split for B rows and recurrent weights (H, GH): where the row split cannot give two
    threads MIN_ROWS rows each, the step's product is at least rows.MIN_STEP_WORK, the call is not small
    (rows.small_call; sizes: the rows computed per step) and each thread gets MIN_UNITS units; else 1 (the caller
    splits the rows or runs one thread). Not on Windows: the barrier's spin calls the POSIX sched_yield (_relax)."""
    if (B >= 2 * rows.MIN_ROWS or not gemm.level() or B * H * GH < rows.MIN_STEP_WORK or not _POSIX
            or rows.small_call(sizes, H, GH)):
        return 1
    return max(1, min(numba.get_num_threads(), H // MIN_UNITS))


def units(H, n, dtype):
    """[(j0, j1)] of n threads: blocks of whole vectors (16 float32 or 8 float64 units: the gate math's loops)."""
    v = 64 // np.dtype(dtype).itemsize
    edges = [min(H, -(-H * p // (n * v)) * v) for p in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def gate_spans(H, G, j0, j1):
    """[(s0, s1)] of the columns of units [j0, j1) in each of the G gates of a (.., G H) array."""
    return [(g * H + j0, g * H + j1) for g in range(G)]


def gate_columns(a, H, G, j0, j1):
    """The columns of a (.., G H) of units [j0, j1) in each of the G gates, gate after gate (a copy)."""
    return np.concatenate([a[..., s0:s1] for s0, s1 in gate_spans(H, G, j0, j1)], axis=-1)


@njit(**JIT)
def _lstm_steps(x, out, idx, mask, sizes, t0, t1, zero_output, j0, op_x, op_h, counter, n_threads, xb, hbuf,
                cell, pre, rec):
    """Steps [t0, t1) of units [j0, j0 + k) (k = cell's columns) of all B rows: plan row b is caller row idx[b];
    hbuf (2,B,H) h by step parity (full rows: read whole, written in this thread's units); cell (B,H) c (this
    thread's units only); pre (S B, 4k) and rec (B, 4k) this thread's gate columns (gate_columns) of x_s W + b
    (infer._project into xb) and h_{t-1} U. The gate math is infer._lstm_steps'."""
    B = hbuf.shape[1]
    k = pre.shape[1] // 4
    j1 = j0 + k
    for t in range(t0, t1):
        at = ((t - t0) % (xb.shape[0] // B)) * B
        if at == 0:
            _project(x, idx, mask, sizes, t, t1, op_x, xb, pre, B)
        h_prev, h_next = hbuf[t % 2], hbuf[(t + 1) % 2]
        n = sizes[t]
        if n > 0:
            product(op_h, h_prev[:n], rec[:n])
        for b in range(B):
            hb = unit(h_next[b, j0:j1])
            if b < n and (mask is None or mask[t, b]):
                cb = unit(cell[b, j0:j1])
                lstm_cell_fwd(unit(pre[at + b]), unit(rec[b]), cb, cb, hb, k)
                unit(out[t, idx[b], j0:j1])[:] = hb
            else:
                hb[:] = unit(h_prev[b, j0:j1])
                _carry_output(out, t, idx[b], zero_output, j0, j1)
        wait(counter, n_threads * (t - t0 + 1))


@njit(**JIT)
def _gru_steps(x, out, idx, mask, sizes, t0, t1, zero_output, j0, op_x, op_h, counter, n_threads, b_rec, xb, hbuf,
               pre, rec, term):
    """_lstm_steps for the GRU with reset_after (the candidate's product is of h_{t-1}, not of r * h_{t-1}, so
    the step's one product needs no other thread's gates): pre (S B, 3k), rec (B, 3k) and b_rec (3k,) this
    thread's gate columns; term (B, k) scratch. The gate math is infer._gru_steps'."""
    B = hbuf.shape[1]
    k = pre.shape[1] // 3
    j1 = j0 + k
    for t in range(t0, t1):
        at = ((t - t0) % (xb.shape[0] // B)) * B
        if at == 0:
            _project(x, idx, mask, sizes, t, t1, op_x, xb, pre, B)
        h_prev, h_next = hbuf[t % 2], hbuf[(t + 1) % 2]
        n = sizes[t]
        if n > 0:
            product(op_h, h_prev[:n], rec[:n])
        for b in range(B):
            hb, hp = unit(h_next[b, j0:j1]), unit(h_prev[b, j0:j1])
            if b < n and (mask is None or mask[t, b]):
                gb, ub, tb = unit(pre[at + b]), unit(rec[b]), unit(term[b])
                gru_gates_zr(gb, ub, b_rec, k)
                for j in range(k):
                    tb[j] = gb[k + j] * (ub[2 * k + j] + b_rec[2 * k + j])
                gru_cell_fwd(gb, tb, hp, hb, k)
                unit(out[t, idx[b], j0:j1])[:] = hb
            else:
                hb[:] = hp
                _carry_output(out, t, idx[b], zero_output, j0, j1)
        wait(counter, n_threads * (t - t0 + 1))


def _plan_rows(x, plan, h0):
    """(idx, mask, sizes) of the plan for the kernels, and hbuf (2,B,H) with h0 at parity 0."""
    B = x.shape[1]
    order = np.arange(B) if plan.order is None else np.asarray(plan.order)
    hbuf = np.empty((2, *h0.shape), x.dtype)
    hbuf[0] = h0
    return order.astype(np.intp), None if plan.packed else plan.mask, plan.sizes, hbuf


def gru_infer(x, W, U, b_in, b_rec, h0, plan, zero_output, out, n):
    """infer.gru_infer's contract (reset_after only) on n threads, each a block of units."""
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    Wb = W if b_in is None else np.concatenate([W, b_in.reshape(1, -1)])
    idx, mask, sizes, hbuf = _plan_rows(x, plan, h0)
    threads = []
    for j0, j1 in units(H, n, dtype):
        xb, pre = _input_buffers(B, I, Wb.shape[0], 3 * (j1 - j0), dtype)
        spans = gate_spans(H, 3, j0, j1)
        threads.append((j0, gemm.operand_columns(Wb, spans), gemm.operand_columns(U, spans),
                        gate_columns(b_rec, H, 3, j0, j1), xb, pre, np.empty((B, 3 * (j1 - j0)), dtype),
                        np.empty((B, j1 - j0), dtype)))
    for t0, t1 in _scan.chunks(T, B, H + I, 3 * H) if B else ():
        counter = np.zeros(1, np.int64)
        rows.parallel([lambda t0=t0, t1=t1, c=counter, a=a: _gru_steps(
            x, out, idx, mask, sizes, t0, t1, zero_output, *a[:3], c, len(threads), a[3], a[4], hbuf, *a[5:])
            for a in threads])
    return hbuf[T % 2].copy()


def lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out, n):
    """infer.lstm_infer's contract on n threads, each a block of units (x with unit-stride rows)."""
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    Wb = W if b is None else np.concatenate([W, b.reshape(1, -1)])
    idx, mask, sizes, hbuf = _plan_rows(x, plan, h0)
    cell = c0.copy()
    threads = []
    for j0, j1 in units(H, n, dtype):
        xb, pre = _input_buffers(B, I, Wb.shape[0], 4 * (j1 - j0), dtype)
        spans = gate_spans(H, 4, j0, j1)
        threads.append((j0, gemm.operand_columns(Wb, spans), gemm.operand_columns(U, spans), xb, pre,
                        np.empty((B, 4 * (j1 - j0)), dtype)))
    for t0, t1 in _scan.chunks(T, B, H + I, 4 * H) if B else ():
        counter = np.zeros(1, np.int64)
        rows.parallel([lambda t0=t0, t1=t1, c=counter, a=a: _lstm_steps(
            x, out, idx, mask, sizes, t0, t1, zero_output, a[0], a[1], a[2], c, len(threads), a[3], hbuf, cell, a[4],
            a[5]) for a in threads])
    return hbuf[T % 2].copy(), cell


@njit(**INLINE)
def _gather(a, H, j0, k, dst):
    """dst (4k,) = a's units [j0, j0 + k) of each of the 4 gates (a: a row (4H,) in the tape's layout)."""
    for g in range(4):
        unit(dst[g * k : (g + 1) * k])[:] = unit(a[g * H + j0 : g * H + j0 + k])


@njit(**INLINE)
def _scatter(src, H, j0, k, a):
    """The inverse of _gather: a's units [j0, j0 + k) of each gate = src (4k,)."""
    for g in range(4):
        unit(a[g * H + j0 : g * H + j0 + k])[:] = unit(src[g * k : (g + 1) * k])


@njit(**JIT)
def _lstm_fwd(gx, op_h, mask, sizes, zero_output, out, hs, cs, j0, counter, n_threads, rec, g):
    """lstm._lstm_fwd on this thread's units [j0, j0 + k) of a chunk of steps (k = rec's columns // 4): the
    step's product on its gate columns (op_h: gate_columns of U), the tape's activations, states and outputs of its
    units; g (4k,) scratch (the gate math runs on a row of this thread's gate columns)."""
    T, B, G = gx.shape
    H, k = G // 4, rec.shape[1] // 4
    j1 = j0 + k
    for t in range(T):
        n = sizes[t]
        if n > 0:
            product(op_h, hs[t, :n], rec[:n])
        for b in range(B):
            h, o = unit(hs[t + 1, b, j0:j1]), unit(out[t, b, j0:j1])
            if b < n and (mask is None or mask[t, b]):
                gb = unit(gx[t, b])
                _gather(gb, H, j0, k, g)
                lstm_cell_fwd(g, unit(rec[b]), unit(cs[t, b, j0:j1]), unit(cs[t + 1, b, j0:j1]), h, k)
                _scatter(g, H, j0, k, gb)
                o[:] = h
            else:
                h[:] = unit(hs[t, b, j0:j1])
                unit(cs[t + 1, b, j0:j1])[:] = unit(cs[t, b, j0:j1])
                if zero_output or t == 0:
                    o[:] = 0
                else:
                    o[:] = unit(out[t - 1, b, j0:j1])
        wait(counter, n_threads * (t + 1))


@njit(**JIT)
def _lstm_bwd(gx, op_ut, mask, sizes, zero_output, t_base, cs, d_out, dh, dc, dgx, d_carry, j0, counter, n_threads,
              dh_prev, dht, a, dg):
    """lstm._lstm_bwd on this thread's units [j0, j0 + k) (k = dh_prev's columns): their gate gradients of each
    step into dgx, a barrier (the step's product reads whole rows of dgx), then dh_prev = dgx_t U^T for its units
    (op_ut: the operand of U[j0:j0 + k].T). dht (k,), a and dg (4k,) scratch."""
    T, B, G = gx.shape
    H, k = G // 4, dh_prev.shape[1]
    j1 = j0 + k
    for t in range(T - 1, -1, -1):
        n = sizes[t]
        for b in range(B):
            dgb, dcb = unit(dgx[t, b]), unit(d_carry[b, j0:j1])
            if b < n and (mask is None or mask[t, b]):
                dhb, dob = unit(dh[b, j0:j1]), unit(d_out[t, b, j0:j1])
                for j in range(k):
                    dht[j] = dhb[j] + dob[j] + dcb[j]
                    dcb[j] = 0
                _gather(unit(gx[t, b]), H, j0, k, a)
                lstm_cell_bwd(a, unit(cs[t, b, j0:j1]), unit(cs[t + 1, b, j0:j1]), dht, unit(dc[b, j0:j1]), dg, k)
                _scatter(dg, H, j0, k, dgb)
            else:
                dg[:] = 0
                _scatter(dg, H, j0, k, dgb)
                if zero_output or t + t_base == 0:
                    dcb[:] = 0
                else:
                    dcb[:] += unit(d_out[t, b, j0:j1])
        wait(counter, n_threads * (T - t))
        if n > 0:
            product(op_ut, dgx[t, :n], dh_prev[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                unit(dh[b, j0:j1])[:] = dh_prev[b]


def _blocks(U, n, transpose):
    """[(j0, k, operand)] of n threads: gate_columns of U, or U's rows of the units transposed (the backward)."""
    H = U.shape[0]
    return [(j0, j1 - j0, gemm.operand(U[j0:j1].T) if transpose else gemm.operand_columns(U, gate_spans(H, 4, j0, j1)))
            for j0, j1 in units(H, n, U.dtype)]


def lstm_fwd(gx, U, mask, sizes, zero_output, out, hs, cs, n):
    """lstm._fwd on n threads, each a block of units."""
    B, dtype = gx.shape[1], gx.dtype
    parts = [(j0, op, np.empty((B, 4 * k), dtype), np.empty(4 * k, dtype)) for j0, k, op in _blocks(U, n, False)]
    counter = np.zeros(1, np.int64)
    rows.parallel([lambda p=p: _lstm_fwd(gx, p[1], mask, sizes, zero_output, out, hs, cs, p[0], counter, n, p[2],
                                         p[3]) for p in parts])


def lstm_bwd(gx, U, mask, sizes, zero_output, cs, d_out, dh, dc, dgx, n):
    """lstm._lstm_bwd_chunks on n threads, each a block of units."""
    T, B, G = gx.shape
    dtype, d_carry = gx.dtype, np.zeros((B, G // 4), gx.dtype)
    parts = [(j0, op, np.empty((B, k), dtype), np.empty(k, dtype), np.empty(4 * k, dtype), np.empty(4 * k, dtype))
             for j0, k, op in _blocks(U, n, True)]
    for t0, t1 in reversed(_scan.chunks(T, B, G // 4, G)):
        m = None if mask is None else mask[t0:t1]
        counter = np.zeros(1, np.int64)
        rows.parallel([lambda p=p, t0=t0, t1=t1, m=m, c=counter: _lstm_bwd(
            gx[t0:t1], p[1], m, sizes[t0:t1], zero_output, t0, cs[t0:t1 + 1], d_out[t0:t1], dh, dc, dgx[t0:t1],
            d_carry, p[0], c, n, *p[2:]) for p in parts])
