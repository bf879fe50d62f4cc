"""GRU scans on the CPU: masked and packed, forward and backward, reset_after True and False
(contract in maskrnn/_scan.py). Same structure as ``lstm``: one jitted call per chunk of steps and set of rows,
gemm.py's per-step products, the gate math of ``cells``; ``mask=None`` selects the packed variant.
"""

import numpy as np

from .. import _scan
from . import gemm, rows
from .cache import njit
from .cells import JIT, carry_row, carry_row_grad, gru_cell_bwd, gru_cell_fwd, gru_gates_zr, unit
from .gemm import product


@njit(**JIT)
def _gru_fwd(gx, Ustep, Uh, b_rec, mask, batch_sizes, zero_output, reset_after, out, hs, hr):
    """gemm.operand of the recurrent weights: reset_after, Ustep of U (u = h U, all three gates; Uh unused);
    else Ustep of U_zr and Uh of U_h (the candidate's product comes after the reset gate). Rows as in
    lstm._lstm_fwd (a thread's strided rows, each taken as contiguous)."""
    T, B, G = gx.shape
    H = G // 3
    u = np.empty((B, G if reset_after else 2 * H), gx.dtype)
    term = np.empty((B, H), gx.dtype)
    for t in range(T):
        n = batch_sizes[t]
        if n > 0:
            product(Ustep, hs[t, :n], u[:n])
        for b in range(B):
            real = b < n and (mask is None or mask[t, b])
            if not real:
                carry_row(t, b, zero_output, out, hs, None)
                unit(hr[t, b])[:] = 0
                continue
            g, hrb = unit(gx[t, b]), unit(hr[t, b])
            gru_gates_zr(g, u[b], b_rec, H)
            if reset_after:
                for j in range(H):
                    hrb[j] = u[b, 2 * H + j] + b_rec[2 * H + j]
                    term[b, j] = g[H + j] * hrb[j]
            else:
                h = unit(hs[t, b])
                for j in range(H):
                    hrb[j] = g[H + j] * h[j]
        if not reset_after and n > 0:
            product(Uh, hr[t, :n], term[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                h = unit(hs[t + 1, b])
                gru_cell_fwd(unit(gx[t, b]), term[b], unit(hs[t, b]), h, H)
                unit(out[t, b])[:] = h


@njit(**JIT)
def _gru_bwd(gx, Ut, Uh_t, mask, batch_sizes, zero_output, reset_after, t_base, hs, hr, d_out, dh, dgx, dgr, d_carry):
    """Steps [t_base, t_base + T) of the backward scan, in reverse (dh and d_carry as in lstm._lstm_bwd).
    gemm.operand of the transposed weights: reset_after, Ut of U^T (Uh_t unused); else Ut of U_zr^T, Uh_t of U_h^T.
    Rows as in _gru_fwd."""
    T, B, G = gx.shape
    H = G // 3
    dht = np.empty((B, H), gx.dtype)
    d_ah = np.empty((B, H), gx.dtype)
    d_rh = np.empty((B, H), gx.dtype)
    d_zr = np.empty((B, 2 * H), gx.dtype)
    dh_prev = np.empty((B, H), gx.dtype)
    one = gx.dtype.type(1)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        for b in range(B):
            dg = unit(dgx[t, b])
            if b < n and (mask is None or mask[t, b]):
                dhb, dob, dcb = unit(dh[b]), unit(d_out[t, b]), unit(d_carry[b])
                for j in range(H):
                    dht[b, j] = dhb[j] + dob[j] + dcb[j]
                    dcb[j] = 0
                gru_cell_bwd(unit(gx[t, b]), unit(hs[t, b]), dht[b], dg, H)
                d_ah[b] = dg[2 * H :]
            else:
                dg[:] = 0
                if reset_after:
                    unit(dgr[t, b])[:] = 0
                d_ah[b] = 0
                carry_row_grad(t, b, zero_output, d_out, d_carry, t_base)
        if n == 0:
            continue
        if not reset_after:
            product(Uh_t, d_ah[:n], d_rh[:n])  # gradient of r * h_{t-1}
        for b in range(n):
            if not (mask is None or mask[t, b]):
                d_zr[b] = 0
                continue
            a, dg, h, hrb = unit(gx[t, b]), unit(dgx[t, b]), unit(hs[t, b]), unit(hr[t, b])
            for j in range(H):
                r = a[H + j]
                dr = d_rh[b, j] * h[j] if not reset_after else d_ah[b, j] * hrb[j]
                dg[H + j] = dr * r * (one - r)
                if not reset_after:
                    dht[b, j] += d_rh[b, j] * r
            if reset_after:
                dgrb = unit(dgr[t, b])
                dgrb[: 2 * H] = dg[: 2 * H]
                for j in range(H):
                    dgrb[2 * H + j] = d_ah[b, j] * a[H + j]
            else:
                d_zr[b] = dg[: 2 * H]
        product(Ut, dgr[t, :n] if reset_after else d_zr[:n], dh_prev[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                dhb = unit(dh[b])
                for j in range(H):
                    dhb[j] = dht[b, j] + dh_prev[b, j]


def _operands(U, reset_after, transposed):
    """(main, candidate) gemm.operands of U (reset_after: all of U, the candidate's unused) or of U_zr and U_h."""
    H = U.shape[0]
    t = (lambda a: a.T) if transposed else (lambda a: a)
    if reset_after:
        return gemm.operand(t(U)), gemm.operand(U[:0, :0])
    return gemm.operand(t(U[:, : 2 * H])), gemm.operand(t(U[:, 2 * H :]))


def _fwd(gx, U, b_rec, mask, sizes, zero_output, reset_after, out, hs, hr):
    T, B, G = gx.shape
    main, cand = _operands(U, reset_after, False)

    def run(r, n):
        _gru_fwd(gx[:, r], main, cand, b_rec, None if mask is None else mask[:, r], n, zero_output, reset_after,
                 out[:, r], hs[:, r], hr[:, r])

    rows.split(run, sizes, rows.threads_for(B, G // 3, G, sizes))


def _gru_bwd_chunks(gx, U, mask, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    """The backward scan in chunks of steps, last chunk first: Python regains control (Ctrl-C) between them."""
    T, B, G = gx.shape
    H = G // 3
    main, cand = _operands(U, reset_after, True)
    d_carry = np.zeros((B, H), gx.dtype)
    n_threads = rows.threads_for(B, H, G, batch_sizes)
    for t0, t1 in reversed(_scan.chunks(T, B, H, G)):
        m = None if mask is None else mask[t0:t1]

        def run(r, n, t0=t0, t1=t1, m=m):
            _gru_bwd(gx[t0:t1, r], main, cand, None if m is None else m[:, r], n, zero_output, reset_after, t0,
                     hs[t0:t1 + 1, r], hr[t0:t1, r], d_out[t0:t1, r], dh[r], dgx[t0:t1, r], dgr[t0:t1, r],
                     d_carry[r])

        rows.split(run, batch_sizes[t0:t1], n_threads)


def gru_masked_fwd(gx, U, b_rec, steps, zero_output, reset_after, out, hs, hr):
    mask, sizes = steps
    _fwd(gx, U, b_rec, mask, sizes, zero_output, reset_after, out, hs, hr)


def gru_packed_fwd(gx, U, b_rec, batch_sizes, zero_output, reset_after, out, hs, hr):
    _fwd(gx, U, b_rec, None, batch_sizes, zero_output, reset_after, out, hs, hr)


def gru_masked_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    mask, sizes = steps
    _gru_bwd_chunks(gx, U, mask, sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)


def gru_packed_bwd(gx, U, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    _gru_bwd_chunks(gx, U, None, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)
