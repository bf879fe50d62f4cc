"""Inference on the CPU without a tape, fused: each kernel call runs a chunk of steps on a thread's rows
(rows.py) and reads the inputs and writes the outputs in the caller's layout and row order itself.

The generic driver (``_scan._infer``) projects a chunk's inputs with one GEMM, scans, then restores the carried
outputs and reorders the chunk into the caller's layout: at (64,100,128,256) those per-chunk passes and 17
chunks' thread hand-offs were ~13 ms of an LSTM forward's ~36. Here each step runs two products on the
thread's rows: [x_t | 1] (rows gathered from the caller's array) by W[; b], and h_{t-1} by U. One product of
[x_t | h_{t-1}] by [W; U] measured 12% slower at (64,100,128,256): a panel of 384 rows of [W; U] (48 KB) no
longer stays in L1 between the row tiles. The states stay in the thread's buffers from call to call: nothing
scales with T but the caller's outputs, and a call still covers only ``_scan.chunks`` steps, so Ctrl-C is noticed
between calls.

Entry points (the dispatcher calls them where ``takes`` the problem; arrays in scan time order, caller's rows):
``lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out)`` and
``gru_infer(x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output, out)``: x (T,B,I) and out (T,B,H) views
of the caller's arrays (any strides), h0, c0 (B,H) in plan order; they write out and return the final states in
plan order. Padded steps follow the contract of ``_scan`` (states carried, output 0 or the previous one).
"""

import numba
import numpy as np

from .. import _scan
from . import gemm, rows
from .cache import njit
from .cells import JIT, gru_cell_fwd, gru_gates_zr, lstm_cell_fwd, unit
from .gemm import product


@njit(**JIT)
def _carry_output(out, t, r, zero_output):
    """A padded step of caller row r: output 0 or the previous step's (``carry_row``'s output rule)."""
    o = unit(out[t, r])
    if zero_output or t == 0:
        o[:] = 0
    else:
        o[:] = unit(out[t - 1, r])


@njit(**JIT)
def _lstm_steps(x, out, idx, mask, sizes, t0, t1, zero_output, op_x, op_h, xb, state, cell, pre, rec):
    """Steps [t0, t1) on a thread's rows: plan row b is caller row idx[b]; sizes (T,) its rows computed per
    step; xb (B, I[+1]) holds [x_t | 1] (op_x: gemm.operand of W[; b]), state and cell (B,H) h and c, pre (B,4H)
    and rec (B,4H) scratch for x_t W + b and h_{t-1} U (op_h). Names differ from the inlined cell functions'
    locals: Numba's inlining then wrote nowhere (an argument named c)."""
    I = x.shape[2]
    B, H = state.shape
    for t in range(t0, t1):
        n = sizes[t]
        for b in range(n):
            if mask is None or mask[t, b]:
                unit(xb[b, :I])[:] = unit(x[t, idx[b]])
        if n > 0:
            product(op_x, xb[:n], pre[:n])
            product(op_h, state[:n], rec[:n])
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                hb, cb = unit(state[b]), unit(cell[b])
                lstm_cell_fwd(unit(pre[b]), unit(rec[b]), cb, cb, hb, H)
                unit(out[t, idx[b]])[:] = hb
            else:
                _carry_output(out, t, idx[b], zero_output)


@njit(**JIT)
def _gru_steps(x, out, idx, mask, sizes, t0, t1, zero_output, reset_after, op_x, op_h, op_c, b_rec, xb, state,
               pre, rec, rh, term):
    """As _lstm_steps for the GRU: op_h of U (reset_after) or U_zr, op_c of U_h (not reset_after: the
    candidate's product of rh = r * h_{t-1}); pre (B,3H), rec (B, 3H or 2H), rh and term (B,H) scratch. The gate
    math is gru._gru_fwd's."""
    I = x.shape[2]
    B, H = state.shape
    for t in range(t0, t1):
        n = sizes[t]
        for b in range(n):
            if mask is None or mask[t, b]:
                unit(xb[b, :I])[:] = unit(x[t, idx[b]])
        if n > 0:
            product(op_x, xb[:n], pre[:n])
            product(op_h, state[:n], rec[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                gb, ub, hb = unit(pre[b]), unit(rec[b]), unit(state[b])
                gru_gates_zr(gb, ub, b_rec, H)
                if reset_after:
                    for j in range(H):
                        term[b, j] = gb[H + j] * (ub[2 * H + j] + b_rec[2 * H + j])
                else:
                    for j in range(H):
                        rh[b, j] = gb[H + j] * hb[j]
        if not reset_after and n > 0:
            product(op_c, rh[:n], term[:n])
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                hb = unit(state[b])
                gru_cell_fwd(unit(pre[b]), unit(term[b]), hb, hb, H)
                unit(out[t, idx[b]])[:] = hb
            else:
                _carry_output(out, t, idx[b], zero_output)


def takes(B, I, H, GH):
    """Whether the fused path runs an inference of B rows (else the generic driver): not where the batch is too
    small to split across the engine's threads (rows.threads_for) but a step is large enough to gain from them:
    there the generic driver's input projection runs on every thread (OpenBLAS), and at (4,200,256,512) the fused
    path on one thread measured 10-17% slower."""
    one = rows.threads_for(B, I + H, GH) == 1
    return not (one and numba.get_num_threads() > 1 and B * H * GH >= rows.MIN_STEP_WORK)


def _unit_rows(a):
    """a with unit stride along its last axis (the kernels take each row as contiguous): a itself, or a copy."""
    return a if a.strides[-1] == a.itemsize or a.shape[-1] <= 1 else np.ascontiguousarray(a)


def _run(kernel, x, out, plan, H, GH, n, buffers, args):
    """kernel(x, out, idx, mask, sizes, t0, t1, *args, *buffers(p, rows_p)) on n threads, thread p the plan rows
    p::n, over ``_scan.chunks`` of the T steps (the states stay in each thread's buffers from chunk to chunk).
    Returns each thread's buffers."""
    T, B, I = x.shape
    order = np.arange(B) if plan.order is None else np.asarray(plan.order)
    sizes = plan.sizes
    shares = [(r := slice(p, None, n), order[r].astype(np.intp), None if plan.packed else plan.mask[:, r],
               rows.share(sizes, p, n) if n > 1 else sizes) for p in range(n)]
    bufs = [buffers(r) for r, *_ in shares]
    for t0, t1 in _scan.chunks(T, B, H + I, GH):
        rows.parallel([lambda s=s, bf=bf, t0=t0, t1=t1: kernel(x, out, *s[1:], t0, t1, *args, *bf)
                       for s, bf in zip(shares, bufs)])
    return [(r, bf) for (r, *_), bf in zip(shares, bufs)]


def _input_operand(W, b):
    """gemm.operand of W[; b] and the width of the rows it takes (I[+1]: a column of ones carries the bias)."""
    return gemm.operand(W if b is None else np.concatenate([W, b.reshape(1, -1)])), W.shape[0] + (b is not None)


def _input_buffer(k, I, F, dtype):
    xb = np.empty((k, F), dtype)
    xb[:, I:] = 1
    return xb


def lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out):
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    op_x, F = _input_operand(W, b)

    def buffers(r):
        k = len(range(B)[r])
        return (_input_buffer(k, I, F, dtype), h0[r].copy(), c0[r].copy(), np.empty((k, 4 * H), dtype),
                np.empty((k, 4 * H), dtype))

    parts = _run(_lstm_steps, _unit_rows(x), out, plan, H, 4 * H, rows.threads_for(B, I + H, 4 * H), buffers,
                 (zero_output, op_x, gemm.operand(U)))
    h, c = np.empty_like(h0), np.empty_like(c0)
    for r, bufs in parts:
        h[r], c[r] = bufs[1], bufs[2]
    return h, c


def gru_infer(x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output, out):
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    op_x, F = _input_operand(W, b_in)
    if reset_after:
        op_h, op_c = gemm.operand(U), gemm.operand(U[:0, :0])
    else:
        op_h, op_c = gemm.operand(U[:, : 2 * H]), gemm.operand(U[:, 2 * H :])

    def buffers(r):
        k = len(range(B)[r])
        scratch = [np.empty((k, w), dtype) for w in (3 * H, 3 * H if reset_after else 2 * H, H, H)]
        return (_input_buffer(k, I, F, dtype), h0[r].copy(), *scratch)

    parts = _run(_gru_steps, _unit_rows(x), out, plan, H, 3 * H, rows.threads_for(B, I + H, 3 * H), buffers,
                 (zero_output, reset_after, op_x, op_h, op_c, np.ascontiguousarray(b_rec)))
    h = np.empty_like(h0)
    for r, bufs in parts:
        h[r] = bufs[1]
    return h
