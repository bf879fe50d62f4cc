"""LSTM scans on the CPU: masked and packed, forward and backward (contract in maskrnn/_scan.py).

One jitted call runs a chunk of steps on a set of rows (rows.py splits the batch across threads): per step, one
product (h @ U over the rows that are computed, gemm.py) and the fused gate math of ``cells``. The masked and
packed variants share one body: the packed kernels pass ``mask=None`` (Numba prunes the test) and compute only
the prefix ``[0, batch_sizes[t])``.
"""

import numpy as np

from .. import _scan
from . import cols, gemm, rows
from .cache import njit
from .cells import JIT, carry_row, carry_row_grad, lstm_cell_bwd, lstm_cell_fwd, unit
from .gemm import product


@njit(**JIT)
def _lstm_fwd(gx, U, mask, batch_sizes, zero_output, out, hs, cs):
    """U: gemm.operand of the recurrent weights (H, 4H). The arrays may be a thread's strided rows (rows.py):
    each row is taken as contiguous (rows.unit)."""
    T, B, G = gx.shape
    H = G // 4
    u = np.empty((B, G), gx.dtype)
    for t in range(T):
        n = batch_sizes[t]
        if n > 0:
            product(U, hs[t, :n], u[:n])
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                h = unit(hs[t + 1, b])
                lstm_cell_fwd(unit(gx[t, b]), u[b], unit(cs[t, b]), unit(cs[t + 1, b]), h, H)
                unit(out[t, b])[:] = h
            else:
                carry_row(t, b, zero_output, out, hs, cs)


@njit(**JIT)
def _lstm_bwd(gx, Ut, mask, batch_sizes, zero_output, t_base, cs, d_out, dh, dc, dgx, d_carry):
    """Steps [t_base, t_base + T) of the backward scan, in reverse: dh, dc and d_carry (the gradient of a carried
    output on its way to the previous real step) come in from the later steps and go out to the earlier ones.
    Ut: gemm.operand of U^T. Rows as in _lstm_fwd."""
    T, B, G = gx.shape
    H = G // 4
    dht = np.empty(H, gx.dtype)
    dh_prev = np.empty((B, H), gx.dtype)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                dhb, dob, dcb = unit(dh[b]), unit(d_out[t, b]), unit(d_carry[b])
                for j in range(H):
                    dht[j] = dhb[j] + dob[j] + dcb[j]
                    dcb[j] = 0
                lstm_cell_bwd(unit(gx[t, b]), unit(cs[t, b]), unit(cs[t + 1, b]), dht, unit(dc[b]),
                              unit(dgx[t, b]), H)
            else:
                unit(dgx[t, b])[:] = 0
                carry_row_grad(t, b, zero_output, d_out, d_carry, t_base)
        if n > 0:
            product(Ut, dgx[t, :n], dh_prev[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                unit(dh[b])[:] = dh_prev[b]


def _fwd(gx, U, mask, sizes, zero_output, out, hs, cs):
    T, B, G = gx.shape
    n = cols.threads_for(B, G // 4, G, sizes)
    if n > 1:  # a small batch: the hidden units split across threads (cols.py)
        return cols.lstm_fwd(gx, U, mask, sizes, zero_output, out, hs, cs, n)
    op = gemm.operand(U)

    def run(r, n):
        _lstm_fwd(gx[:, r], op, None if mask is None else mask[:, r], n, zero_output, out[:, r], hs[:, r], cs[:, r])

    rows.split(run, sizes, rows.threads_for(B, G // 4, G, sizes))


def _lstm_bwd_chunks(gx, U, mask, batch_sizes, zero_output, cs, d_out, dh, dc, dgx):
    """The backward scan in chunks of steps, last chunk first: Python regains control (Ctrl-C) between them."""
    T, B, G = gx.shape
    n = cols.threads_for(B, G // 4, G, batch_sizes)
    if n > 1:
        return cols.lstm_bwd(gx, U, mask, batch_sizes, zero_output, cs, d_out, dh, dc, dgx, n)
    Ut = gemm.operand(U.T)
    d_carry = np.zeros((B, G // 4), gx.dtype)
    n_threads = rows.threads_for(B, G // 4, G, batch_sizes)
    for t0, t1 in reversed(_scan.chunks(T, B, G // 4, G)):
        m = None if mask is None else mask[t0:t1]

        def run(r, n, t0=t0, t1=t1, m=m):
            _lstm_bwd(gx[t0:t1, r], Ut, None if m is None else m[:, r], n, zero_output, t0, cs[t0:t1 + 1, r],
                      d_out[t0:t1, r], dh[r], dc[r], dgx[t0:t1, r], d_carry[r])

        rows.split(run, batch_sizes[t0:t1], n_threads)


def lstm_masked_fwd(gx, U, steps, zero_output, out, hs, cs):
    mask, sizes = steps
    _fwd(gx, U, mask, sizes, zero_output, out, hs, cs)


def lstm_packed_fwd(gx, U, batch_sizes, zero_output, out, hs, cs):
    _fwd(gx, U, None, batch_sizes, zero_output, out, hs, cs)


def lstm_masked_bwd(gx, U, steps, zero_output, hs, cs, d_out, dh, dc, dgx):
    mask, sizes = steps
    _lstm_bwd_chunks(gx, U, mask, sizes, zero_output, cs, d_out, dh, dc, dgx)


def lstm_packed_bwd(gx, U, batch_sizes, zero_output, hs, cs, d_out, dh, dc, dgx):
    _lstm_bwd_chunks(gx, U, None, batch_sizes, zero_output, cs, d_out, dh, dc, dgx)
