"""Inference on the CPU without a tape, fused: each kernel call runs a chunk of steps on a thread's rows
(rows.py) and reads the inputs and writes the outputs in the caller's layout and row order itself.

A generic driver (since removed) projected a chunk's inputs with one GEMM, scanned, then restored the carried
outputs and reordered the chunk into the caller's layout: at (64,100,128,256) those per-chunk passes and 17
chunks' thread hand-offs were ~13 ms of an LSTM forward's ~36. Here each step runs two products on the
thread's rows: [x_t | 1] (rows gathered from the caller's array) by W[; b], and h_{t-1} by U. One product of
[x_t | h_{t-1}] by [W; U] measured 12% slower at (64,100,128,256): a panel of 384 rows of [W; U] (48 KB) no
longer stays in L1 between the row tiles. The states stay in the thread's buffers from call to call: nothing
scales with T but the caller's outputs, and a call still covers only ``_scan.chunks`` steps, so Ctrl-C is noticed
between calls.

Entry points (every engine has them, the GPU's in maskrnn/_cuda.py; the dispatcher's inference calls them; arrays
in scan time order, caller's rows): ``lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out)`` and
``gru_infer(x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output, out)``: x (T,B,I) and out (T,B,H) views
of the caller's arrays (any strides), h0, c0 (B,H) in plan order; they write out and return the final states in
the caller's row order. Padded steps follow the contract of ``_scan`` (states carried, output 0 or the previous
one).
"""

import numpy as np

from .. import _scan
from . import gemm, rows
from .cache import njit
from .cells import INLINE, JIT, gru_cell_fwd, gru_gates_zr, lstm_cell_fwd, unit
from .gemm import product


@njit(**INLINE)
def _carry_output(out, t, r, zero_output, j0, j1):
    """A padded step of caller row r, units [j0, j1): output 0 or the previous step's (``carry_row``'s output
    rule). Inlined, not cached on its own: the LSTM and GRU kernels precompile in two processes at once
    (_precompile.py), which would both write its cache index."""
    o = unit(out[t, r, j0:j1])
    if zero_output or t == 0:
        o[:] = 0
    else:
        o[:] = unit(out[t - 1, r, j0:j1])


@njit(**INLINE)
def _project(x, idx, mask, sizes, t, t1, op_x, xb, pre, B):
    """x_s W[+b] for the steps s in [t, t + S) of the thread's rows (S = xb's rows // B, step s's row b at
    (s - t) B + b): their real rows gathered into xb, then one product (rows of other steps left stale: unread)."""
    I = x.shape[2]
    top = 0
    for s in range(t, min(t + xb.shape[0] // B, t1)):
        n = sizes[s]
        for b in range(n):
            if mask is None or mask[s, b]:
                unit(xb[(s - t) * B + b, :I])[:] = unit(x[s, idx[b]])
        if n > 0:
            top = (s - t) * B + n
    if top > 0:
        product(op_x, xb[:top], pre[:top])


@njit(**JIT)
def _lstm_steps(x, out, idx, mask, sizes, t0, t1, zero_output, op_x, op_h, xb, state, cell, pre, rec):
    """Steps [t0, t1) on a thread's rows: plan row b is caller row idx[b]; sizes (T,) its rows computed per
    step; xb (S B, I[+1]) and pre (S B, 4H): [x_s | 1] and x_s W + b of a block of S steps (_project; op_x:
    gemm.operand of W[; b]); state and cell (B,H) h and c; rec (B,4H) h_{t-1} U (op_h). A row's slice is taken
    before ``unit`` (unit(xb[b, :I]), not unit(xb[b])[:I]: the writes through the latter were lost)."""
    B, H = state.shape
    for t in range(t0, t1):
        at = ((t - t0) % (xb.shape[0] // B)) * B  # the step's first row in pre
        if at == 0:
            _project(x, idx, mask, sizes, t, t1, op_x, xb, pre, B)
        n = sizes[t]
        if n > 0:
            product(op_h, state[:n], rec[:n])
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                hb, cb = unit(state[b]), unit(cell[b])
                lstm_cell_fwd(unit(pre[at + b]), unit(rec[b]), cb, cb, hb, H)
                unit(out[t, idx[b]])[:] = hb
            else:
                _carry_output(out, t, idx[b], zero_output, 0, H)


@njit(**JIT)
def _gru_steps(x, out, idx, mask, sizes, t0, t1, zero_output, reset_after, op_x, op_h, op_c, b_rec, xb, state,
               pre, rec, rh, term):
    """As _lstm_steps for the GRU: op_h of U (reset_after) or U_zr, op_c of U_h (not reset_after: the
    candidate's product of rh = r * h_{t-1}); pre (S B, 3H); rec (B, 3H or 2H), rh and term (B,H) scratch. The
    gate math is gru._gru_fwd's."""
    B, H = state.shape
    for t in range(t0, t1):
        at = ((t - t0) % (xb.shape[0] // B)) * B
        if at == 0:
            _project(x, idx, mask, sizes, t, t1, op_x, xb, pre, B)
        n = sizes[t]
        if n > 0:
            product(op_h, state[:n], rec[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                gb, ub, hb = unit(pre[at + b]), unit(rec[b]), unit(state[b])
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
                gru_cell_fwd(unit(pre[at + b]), unit(term[b]), hb, hb, H)
                unit(out[t, idx[b]])[:] = hb
            else:
                _carry_output(out, t, idx[b], zero_output, 0, H)


def _unit_rows(a):
    """a with unit stride along its last axis (the kernels take each row as contiguous): a itself, or a copy."""
    return a if a.strides[-1] == a.itemsize or a.shape[-1] <= 1 else np.ascontiguousarray(a)


def _run(kernel, x, out, plan, H, GH, n, buffers, args):
    """kernel(x, out, idx, mask, sizes, t0, t1, *args, *buffers(r)) on n threads, thread p the plan rows r = p::n,
    over ``_scan.chunks`` of the T steps (the states stay in each thread's buffers from chunk to chunk). Returns
    [(r, buffers)] of the threads."""
    T, B, I = x.shape
    order = np.arange(B) if plan.order is None else np.asarray(plan.order)
    sizes = plan.sizes
    shares = [(r := slice(p, None, n), order[r].astype(np.intp), None if plan.packed else plan.mask[:, r],
               rows.share(sizes, p, n) if n > 1 else sizes) for p in range(n)]
    bufs = [buffers(r) for r, *_ in shares]
    for t0, t1 in _scan.chunks(T, B, H + I, GH) if B else ():  # an empty batch: nothing to compute
        rows.parallel([lambda s=s, bf=bf, t0=t0, t1=t1: kernel(x, out, *s[1:], t0, t1, *args, *bf)
                       for s, bf in zip(shares, bufs)])
    return [(r, bf) for (r, *_), bf in zip(shares, bufs)]


def _input_operand(W, b, packed=True):
    """gemm.operand of W[; b] and the width of the rows it takes (I[+1]: a column of ones carries the bias);
    unpacked, gemm.row_operand: W and b as they are, not their concatenation (a copy of W)."""
    if b is None:
        return gemm.operand(W, packed), W.shape[0]
    if not packed:
        return gemm.row_operand(W, b), W.shape[0] + 1
    return gemm.operand(np.concatenate([W, b.reshape(1, -1)])), W.shape[0] + 1


# Rows of a thread's input product at least (steps projected together, _project): with few rows per thread, a
# product per step read all of W[; b] for a handful of rows.
BLOCK_ROWS = 32


def _input_buffers(k, I, F, GH, dtype):
    """xb and pre for a thread of k rows: [x_s | 1] and x_s W[ + b] for each step s of a block."""
    rows_ = max(1, BLOCK_ROWS // max(k, 1)) * k
    xb = np.empty((rows_, F), dtype)
    xb[:, I:] = 1
    return xb, np.empty((rows_, GH), dtype)


# Rows of a single-step call at most for which its products run on np.dot with the weights as they are.
UNPACKED_ROWS = 4


def _unpacked(plan):
    """Whether one step computes rows, and at most UNPACKED_ROWS of them (a decoding loop's call: T = 1, a few
    rows): its two products then run on the calling thread's np.dot (OpenBLAS) over the weights as they are, where
    packing [W; b] and U for the native product was a pass over all the weights for one product.
    ``bench/single_step_ab.py``: at one row the LSTM call took 1.6 ms instead of 8.2 at (I, H) = (512, 1024), 0.22
    instead of 0.42 at (128, 256) (GRU: 2.7x and 2.0x), and 0.87 ms at (512, 1024) once the bias row no longer
    made a copy of W (gemm.row_operand); at 2-4 rows 1.1-2.2x; at 8 rows the native product on packed weights is
    as fast (0.9-1.0x as they are), so they stay packed there."""
    sizes = plan.sizes
    return np.count_nonzero(sizes) == 1 and int(sizes.max()) <= UNPACKED_ROWS


def _caller_rows(plan, *states):
    """Final states (B,H) in plan order -> the caller's row order (new arrays where rows move)."""
    return [s if plan.inverse is None else s[plan.inverse] for s in states]


def lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out):
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    packed = not _unpacked(plan)
    n = cols.threads_for(B, H, 4 * H, plan.sizes) if packed else 1
    if n > 1:  # a small batch: the hidden units split across threads (cols.py)
        return _caller_rows(plan, *cols.lstm_infer(_unit_rows(x), W, U, b, h0, c0, plan, zero_output, out, n))
    op_x, F = _input_operand(W, b, packed)

    def buffers(r):
        k = len(range(B)[r])
        xb, pre = _input_buffers(k, I, F, 4 * H, dtype)
        return xb, h0[r].copy(), c0[r].copy(), pre, np.empty((k, 4 * H), dtype)

    threads = rows.threads_for(B, I + H, 4 * H, plan.sizes) if packed else 1
    parts = _run(_lstm_steps, _unit_rows(x), out, plan, H, 4 * H, threads, buffers,
                 (zero_output, op_x, gemm.operand(U, packed)))
    h, c = np.empty_like(h0), np.empty_like(c0)
    for r, bufs in parts:
        h[r], c[r] = bufs[1], bufs[2]
    return _caller_rows(plan, h, c)


def gru_infer(x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output, out):
    T, B, I = x.shape
    H, dtype = U.shape[0], x.dtype
    packed = not _unpacked(plan)
    n = cols.threads_for(B, H, 3 * H, plan.sizes) if reset_after and packed else 1
    if n > 1:  # as lstm_infer (not reset_after: the candidate's product of r * h_{t-1} would need a second barrier)
        h = cols.gru_infer(_unit_rows(x), W, U, b_in, np.ascontiguousarray(b_rec), h0, plan, zero_output, out, n)
        return _caller_rows(plan, h)[0]
    op_x, F = _input_operand(W, b_in, packed)
    if reset_after:
        op_h, op_c = gemm.operand(U, packed), gemm.operand(U[:0, :0], packed)
    else:
        op_h, op_c = gemm.operand(U[:, : 2 * H], packed), gemm.operand(U[:, 2 * H :], packed)

    def buffers(r):
        k = len(range(B)[r])
        xb, pre = _input_buffers(k, I, F, 3 * H, dtype)
        scratch = [np.empty((k, w), dtype) for w in (3 * H if reset_after else 2 * H, H, H)]
        return xb, h0[r].copy(), pre, *scratch

    threads = rows.threads_for(B, I + H, 3 * H, plan.sizes) if packed else 1
    parts = _run(_gru_steps, _unit_rows(x), out, plan, H, 3 * H, threads, buffers,
                 (zero_output, reset_after, op_x, op_h, op_c, np.ascontiguousarray(b_rec)))
    h = np.empty_like(h0)
    for r, bufs in parts:
        h[r] = bufs[1]
    return _caller_rows(plan, h)[0]


from . import cols  # noqa: E402 - cols builds on this module's _project and _input_buffers
