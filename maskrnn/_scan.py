"""Cell drivers shared by every device: the GEMMs over all steps run on the array module (NumPy or CuPy),
the recurrence runs in the device's scan kernels.

Glossary (used everywhere in maskrnn): B batch, T time, I input features, H hidden units, G gates per cell
(LSTM 4 in Keras order i, f, c, o; GRU 3 in order z, r, h). Here every array is time-major, C-contiguous,
with batch rows in the plan's order (sorted by length, longest first, for the packed kernels).

Scan-kernel contract: the CPU (``maskrnn._cpu``) and GPU (``maskrnn._cuda``) engines export the same names
with the same arguments. ``batch_sizes`` is a ``(T,)`` int32 NumPy array on the host for every engine: at
step t only rows ``[0, batch_sizes[t])`` are computed (a GPU engine sizes each step's grid from it). For the
``*_packed_*`` kernels ``steps = batch_sizes`` and those rows are exactly the real ones; for ``*_masked_*``
``steps = (mask, batch_sizes)`` with a ``(T, B)`` bool mask on the engine's device selecting the real ones
within the prefix (rows past their last real step need no work: their states are carried). At a padded
step (b, t) every state is carried and ``out[t, b] = 0 if zero_output or t == 0 else out[t - 1, b]``.

- ``lstm_{masked,packed}_fwd(gx, U, steps, zero_output, out, hs, cs)``
  gx (T,B,4H): in ``x_t W + b``; out the gate activations (i, f, c~, o) at real steps.
  U (H,4H). out (T,B,H) written. hs, cs (T+1,B,H): ``[0]`` holds h0, c0 on entry, ``[t+1]`` the state
  after step t.
- ``lstm_{masked,packed}_bwd(gx, U, steps, zero_output, hs, cs, d_out, dh, dc, dgx)``
  gx: activations from fwd. d_out (T,B,H): upstream gradient of out, read only. dh, dc (B,H): in the
  gradients of h_T, c_T, out those of h0, c0. dgx (T,B,4H) written: gradient of the gate pre-activations,
  zero at padded steps.
- ``gru_{masked,packed}_fwd(gx, U, b_rec, steps, zero_output, reset_after, out, hs, hr)``
  gx (T,B,3H): in ``x_t W + b_in``; out the activations (z, r, h~). b_rec (3H,): recurrent bias (zeros when
  there is none; unused when not reset_after, where the whole bias is in gx). hr (T,B,H) written:
  ``h_{t-1} U_h + b_rec_h`` (reset_after) or ``r * h_{t-1}`` (not reset_after); 0 at padded steps (the
  weight-gradient GEMMs read every entry).
- ``matmul(a, b)`` (optional; default ``xp.matmul``): the engine's GEMM for the all-step products.
- ``gru_{masked,packed}_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)``
  dh (B,H): in the gradient of h_T, out that of h0. dgx (T,B,3H) written: gradient of the input
  pre-activations. dgr (T,B,3H) written when reset_after: gradient of the recurrent pre-activations
  ``h_{t-1} U + b_rec`` (not written otherwise). Both zero at padded steps.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Plan:
    """Which kernel variant runs and in which row order (see ``_dispatch.make_plan``).

    mask: (T,B) bool in scan order and row order, always present (it also zeroes padded inputs).
    batch_sizes: (T,) int32 on the host: rows [0, batch_sizes[t]) are computed at step t (None: all rows).
    packed: the mask is exactly that prefix (post- or pre-padding); otherwise the masked kernels also
    select by the mask within the prefix.
    order: (B,) row permutation applied before the scan (None: identity); inverse: its inverse.
    """

    mask: Any
    batch_sizes: Any = None
    packed: bool = False
    order: Any = None
    inverse: Any = None

    @property
    def steps(self):
        sizes = self.batch_sizes
        if sizes is None:
            sizes = np.full(self.mask.shape[0], self.mask.shape[1], np.int32)
        return sizes if self.packed else (self.mask, sizes)

    @property
    def variant(self) -> str:
        return "packed" if self.packed else "masked"


def _matmul(xp, K):
    return getattr(K, "matmul", xp.matmul)


def _project(xp, K, x, W, b):
    """One GEMM for all steps: (T,B,I) @ (I,GH) + b -> gx (T,B,GH). The bias rides in the GEMM as a column of
    ones appended to x (a separate pass over gx measured 2 ms of ~35 on the CPU), which also makes its gradient
    fall out of the weight-gradient GEMM. Returns gx and the (T*B, I[+1]) input matrix for backward."""
    T, B, In = x.shape
    x2 = x.reshape(T * B, In)
    if b is not None:
        x2 = xp.concatenate([x2, xp.ones((T * B, 1), x.dtype)], axis=1)
        W = xp.concatenate([W, b.reshape(1, -1)])
    return _matmul(xp, K)(x2, W).reshape(T, B, W.shape[1]), x2


def _input_grads(xp, K, x2, W, dgx):
    """Gradients of x (T,B,I), W and the input bias (None without one) from dgx (T,B,GH)."""
    T, B, GH = dgx.shape
    d2 = dgx.reshape(T * B, GH)
    mm = _matmul(xp, K)
    dx = mm(d2, W.T).reshape(T, B, W.shape[0])
    dWb = mm(x2.T, d2)
    if x2.shape[1] == W.shape[0]:
        return dx, dWb, None
    return dx, dWb[:-1], dWb[-1]


def _states(xp, T, B, H, dtype, init):
    s = xp.empty((T + 1, B, H), dtype=dtype)
    s[0] = init
    return s


def _upstream(xp, tape, *grads):
    """Upstream gradients for the backward kernels: d_out (T,B,H) and state gradients (B,H), zeros for None;
    state gradients are copied since the kernels update them in place."""
    T, B, _ = tape["gx"].shape
    H, dtype = tape["U"].shape[0], tape["gx"].dtype
    d_out, *states = grads
    d_out = xp.zeros((T, B, H), dtype) if d_out is None else d_out
    return [d_out] + [xp.zeros((B, H), dtype) if d is None else d.copy() for d in states]


def lstm_forward(xp, K, x, W, U, b, h0, c0, plan, zero_output):
    """x (T,B,I) with padded steps zeroed; h0, c0 (B,H). Returns out (T,B,H), h_T, c_T and the tape."""
    T, B, _ = x.shape
    H = U.shape[0]
    gx, x2 = _project(xp, K, x, W, b)
    out = xp.empty((T, B, H), dtype=x.dtype)
    hs = _states(xp, T, B, H, x.dtype, h0)
    cs = _states(xp, T, B, H, x.dtype, c0)
    getattr(K, f"lstm_{plan.variant}_fwd")(gx, U, plan.steps, zero_output, out, hs, cs)
    tape = dict(x2=x2, W=W, U=U, gx=gx, hs=hs, cs=cs)
    # Copies: the backward reads the tape, and a caller may change the returned states in place.
    return out, hs[T].copy(), cs[T].copy(), tape


def lstm_backward(xp, K, plan, zero_output, tape, d_out, d_h, d_c):
    """Upstream gradients in scan layout (None = zero). Returns dx, dW, dU, db, dh0, dc0."""
    W, U, hs, cs = tape["W"], tape["U"], tape["hs"], tape["cs"]
    T, B, H = tape["gx"].shape[0], tape["gx"].shape[1], U.shape[0]
    d_out, dh, dc = _upstream(xp, tape, d_out, d_h, d_c)
    dgx = xp.empty_like(tape["gx"])
    getattr(K, f"lstm_{plan.variant}_bwd")(tape["gx"], U, plan.steps, zero_output, hs, cs, d_out, dh, dc, dgx)
    dx, dW, db = _input_grads(xp, K, tape["x2"], W, dgx)
    dU = _matmul(xp, K)(hs[:T].reshape(T * B, H).T, dgx.reshape(T * B, 4 * H))
    return dx, dW, dU, db, dh, dc


def gru_forward(xp, K, x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output):
    """x (T,B,I) with padded steps zeroed; b_in (3H,) or None; b_rec (3H,) (zeros when there is none).

    Returns out (T,B,H), h_T and the tape."""
    T, B, _ = x.shape
    H = U.shape[0]
    gx, x2 = _project(xp, K, x, W, b_in)
    out = xp.empty((T, B, H), dtype=x.dtype)
    hs = _states(xp, T, B, H, x.dtype, h0)
    hr = xp.empty((T, B, H), dtype=x.dtype)
    kernel = getattr(K, f"gru_{plan.variant}_fwd")
    kernel(gx, U, b_rec, plan.steps, zero_output, reset_after, out, hs, hr)
    tape = dict(x2=x2, W=W, U=U, gx=gx, hs=hs, hr=hr)
    return out, hs[T].copy(), tape  # a copy, as in lstm_forward


def gru_backward(xp, K, plan, zero_output, reset_after, tape, d_out, d_h):
    """Returns dx, dW, dU, db_in, db_rec (None when not reset_after), dh0."""
    W, U, hs, hr = tape["W"], tape["U"], tape["hs"], tape["hr"]
    T, B, H = tape["gx"].shape[0], tape["gx"].shape[1], U.shape[0]
    d_out, dh = _upstream(xp, tape, d_out, d_h)
    dgx = xp.empty_like(tape["gx"])
    dgr = xp.empty_like(tape["gx"]) if reset_after else dgx
    kernel = getattr(K, f"gru_{plan.variant}_bwd")
    kernel(tape["gx"], U, plan.steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)
    dx, dW, db_in = _input_grads(xp, K, tape["x2"], W, dgx)
    h_prev = hs[:T].reshape(T * B, H)
    if reset_after:
        d2 = dgr.reshape(T * B, 3 * H)
        return dx, dW, _matmul(xp, K)(h_prev.T, d2), db_in, d2.sum(axis=0), dh
    d2 = dgx.reshape(T * B, 3 * H)
    dU = xp.empty_like(U)
    mm = _matmul(xp, K)
    dU[:, : 2 * H] = mm(h_prev.T, xp.ascontiguousarray(d2[:, : 2 * H]))
    dU[:, 2 * H :] = mm(hr.reshape(T * B, H).T, xp.ascontiguousarray(d2[:, 2 * H :]))
    return dx, dW, dU, db_in, None, dh
