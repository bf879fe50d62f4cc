"""GRU scans on the CPU: masked and packed, forward and backward, reset_after True and False
(contract in maskrnn/_scan.py). Same structure as ``lstm``: one jitted call per sequence, BLAS for the
per-step products, the gate math of ``cells``; ``mask=None`` selects the packed variant.
"""

import numpy as np

from .. import _scan
from .cache import njit
from .cells import JIT, carry_row, carry_row_grad, gru_cell_bwd, gru_cell_fwd, gru_gates_zr


@njit(**JIT)
def _gru_fwd(gx, U, b_rec, mask, batch_sizes, zero_output, reset_after, out, hs, hr):
    T, B, G = gx.shape
    H = G // 3
    # reset_after: u = h U (all three gates); else u = h U_zr and the candidate's product comes later.
    Ustep = U if reset_after else np.ascontiguousarray(U[:, : 2 * H])
    Uh = np.ascontiguousarray(U[:, 2 * H :])
    u = np.empty((B, Ustep.shape[1]), gx.dtype)
    term = np.empty((B, H), gx.dtype)
    for t in range(T):
        n = batch_sizes[t]
        if n > 0:
            np.dot(hs[t, :n], Ustep, u[:n])
        for b in range(B):
            real = b < n and (mask is None or mask[t, b])
            if not real:
                carry_row(t, b, zero_output, out, hs, None)
                hr[t, b] = 0
                continue
            g = gx[t, b]
            gru_gates_zr(g, u[b], b_rec, H)
            if reset_after:
                for j in range(H):
                    hr[t, b, j] = u[b, 2 * H + j] + b_rec[2 * H + j]
                    term[b, j] = g[H + j] * hr[t, b, j]
            else:
                for j in range(H):
                    hr[t, b, j] = g[H + j] * hs[t, b, j]
        if not reset_after and n > 0:
            np.dot(hr[t, :n], Uh, term[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                gru_cell_fwd(gx[t, b], term[b], hs[t, b], hs[t + 1, b], H)
                out[t, b] = hs[t + 1, b]


@njit(**JIT)
def _gru_bwd(gx, Ut, Uzr_t, Uh_t, mask, batch_sizes, zero_output, reset_after, t_base, hs, hr, d_out, dh, dgx, dgr,
             d_carry):
    """Steps [t_base, t_base + T) of the backward scan, in reverse (dh and d_carry as in lstm._lstm_bwd)."""
    T, B, G = gx.shape
    H = G // 3
    dht = np.empty((B, H), gx.dtype)
    d_ah = np.empty((B, H), gx.dtype)
    d_rh = np.empty((B, H), gx.dtype)
    d_zr = np.empty((B, 2 * H), gx.dtype)
    dh_prev = np.empty((B, H), gx.dtype)
    for t in range(T - 1, -1, -1):
        n = batch_sizes[t]
        for b in range(B):
            if b < n and (mask is None or mask[t, b]):
                for j in range(H):
                    dht[b, j] = dh[b, j] + d_out[t, b, j] + d_carry[b, j]
                    d_carry[b, j] = 0
                gru_cell_bwd(gx[t, b], hs[t, b], dht[b], dgx[t, b], H)
                d_ah[b] = dgx[t, b, 2 * H :]
            else:
                dgx[t, b] = 0
                if reset_after:
                    dgr[t, b] = 0
                d_ah[b] = 0
                carry_row_grad(t, b, zero_output, d_out, d_carry, t_base)
        if n == 0:
            continue
        if not reset_after:
            np.dot(d_ah[:n], Uh_t, d_rh[:n])  # gradient of r * h_{t-1}
        for b in range(n):
            if not (mask is None or mask[t, b]):
                d_zr[b] = 0
                continue
            a = gx[t, b]
            for j in range(H):
                r = a[H + j]
                dr = d_rh[b, j] * hs[t, b, j] if not reset_after else d_ah[b, j] * hr[t, b, j]
                dgx[t, b, H + j] = dr * r * (1 - r)
                if not reset_after:
                    dht[b, j] += d_rh[b, j] * r
            if reset_after:
                dgr[t, b, : 2 * H] = dgx[t, b, : 2 * H]
                for j in range(H):
                    dgr[t, b, 2 * H + j] = d_ah[b, j] * a[H + j]
            else:
                d_zr[b] = dgx[t, b, : 2 * H]
        if reset_after:
            np.dot(dgr[t, :n], Ut, dh_prev[:n])
        else:
            np.dot(d_zr[:n], Uzr_t, dh_prev[:n])
        for b in range(n):
            if mask is None or mask[t, b]:
                for j in range(H):
                    dh[b, j] = dht[b, j] + dh_prev[b, j]


def _gru_bwd_chunks(gx, U, mask, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    """The backward scan in chunks of steps, last chunk first: Python regains control (Ctrl-C) between them."""
    T, B, G = gx.shape
    H = G // 3
    Ut, Uzr_t, Uh_t = (np.ascontiguousarray(u.T) for u in (U, U[:, : 2 * H], U[:, 2 * H :]))
    d_carry = np.zeros((B, H), gx.dtype)
    for t0, t1 in reversed(_scan.chunks(T, B, H, G)):
        _gru_bwd(gx[t0:t1], Ut, Uzr_t, Uh_t, None if mask is None else mask[t0:t1], batch_sizes[t0:t1], zero_output,
                 reset_after, t0, hs[t0:t1 + 1], hr[t0:t1], d_out[t0:t1], dh, dgx[t0:t1], dgr[t0:t1], d_carry)


def gru_masked_fwd(gx, U, b_rec, steps, zero_output, reset_after, out, hs, hr):
    mask, sizes = steps
    _gru_fwd(gx, U, b_rec, mask, sizes, zero_output, reset_after, out, hs, hr)


def gru_packed_fwd(gx, U, b_rec, batch_sizes, zero_output, reset_after, out, hs, hr):
    _gru_fwd(gx, U, b_rec, None, batch_sizes, zero_output, reset_after, out, hs, hr)


def gru_masked_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    mask, sizes = steps
    _gru_bwd_chunks(gx, U, mask, sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)


def gru_packed_bwd(gx, U, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    _gru_bwd_chunks(gx, U, None, batch_sizes, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)
