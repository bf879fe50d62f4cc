"""Cell drivers shared by every device: the GEMMs over all steps run on the array module (NumPy or CuPy),
the recurrence runs in the device's scan kernels.

Glossary (used everywhere in maskrnn): B batch, T time, I input features, H hidden units, G gates per cell
(LSTM 4 in Keras order i, f, c, o; GRU 3 in order z, r, h). Here every array is time-major, C-contiguous,
with batch rows in the plan's order (sorted by length, longest first, for the packed kernels).

Scan-kernel contract: the CPU (``maskrnn._cpu``) and GPU (``maskrnn._cuda``) engines export the same names
with the same arguments. ``batch_sizes`` is a ``(T,)`` int32 array: at step t only rows ``[0, batch_sizes[t])``
are computed. It is a NumPy array for the CPU engine; for an engine with ``DEVICE_PLAN`` (the GPU) it is on the
device or None (every row at every step), and non-increasing: rows past it are past their last real step. For the
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
- ``matmul(a, b, out=None)`` (optional; default ``xp.matmul``): the engine's GEMM for the all-step
  products.
- ``empty(shape, dtype)`` (optional; default ``xp.empty``): an uninitialised C-contiguous array for the large
  ones (the tape, dgx, dgr, dx), which the CPU engine puts on memory it reuses once no array views it
  (maskrnn/_cpu/pool.py).
- ``session()`` (optional): a context manager around each driver call below (the CPU engine stops its BLAS
  threads when the last call ends, so they do not spin on the cores the caller's next operations need).
- ``gru_{masked,packed}_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)``
  dh (B,H): in the gradient of h_T, out that of h0. dgx (T,B,3H) written: gradient of the input
  pre-activations. dgr (T,B,3H) written when reset_after: gradient of the recurrent pre-activations
  ``h_{t-1} U + b_rec`` (not written otherwise). Both zero at padded steps.

The training drivers call the forward kernels on chunks of steps (views of the time-major arrays, ``steps``
sliced to match): between chunks Python notices Ctrl-C. A kernel sees a chunk's first step as ``t == 0``;
``_carry_outputs`` restores Keras's carried outputs there.

Inference keeps no tape and has no driver here: each engine fuses it (``lstm_infer``, ``gru_infer``: the CPU's
maskrnn/_cpu/infer.py, the GPU's maskrnn/_cuda.py, same contract), reading the caller's inputs and writing its
outputs in place, in chunks of its own.
"""

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Plan:
    """Which kernel variant runs and in which row order (see ``_dispatch.make_plan``).

    mask: (T,B) bool in scan order and row order, always present (it also zeroes padded inputs).
    batch_sizes: (T,) int32: rows [0, batch_sizes[t]) are computed at step t (None: all rows); on the device when
    on_device (built there, never read by the host: the drivers then run their GEMMs over every row).
    packed: the mask is exactly that prefix (post- or pre-padding); otherwise the masked kernels also
    select by the mask within the prefix.
    order: (B,) row permutation applied before the scan (None: identity); inverse: its inverse.
    """

    mask: Any
    batch_sizes: Any = None
    packed: bool = False
    order: Any = None
    inverse: Any = None
    on_device: bool = False

    @property
    def steps(self):
        sizes = self.batch_sizes
        if sizes is None and not self.on_device:
            sizes = np.full(self.mask.shape[0], self.mask.shape[1], np.int32)
        return sizes if self.packed else (self.mask, sizes)

    @property
    def sizes(self):
        """(T,) rows computed at each step (batch_sizes, or every row)."""
        return self.steps if self.packed else self.steps[1]

    def chunk(self, t0, t1):
        """``steps`` for the steps [t0, t1): views, C-contiguous like the whole."""
        sizes = None if self.sizes is None else self.sizes[t0:t1]
        return sizes if self.packed else (self.mask[t0:t1], sizes)

    def host_sizes(self, t0=0, t1=None):
        """sizes[t0:t1] on the host, for the GEMMs that skip rows; None when they live on the device."""
        return None if self.on_device else self.sizes[t0:t1]

    @property
    def variant(self) -> str:
        return "packed" if self.packed else "masked"


def _engine_call(driver):
    """Runs a driver (xp, K, ...) inside its engine's optional ``session()``."""

    @functools.wraps(driver)
    def run(xp, K, *args):
        with getattr(K, "session", contextlib.nullcontext)():
            return driver(xp, K, *args)

    return run


def _matmul(xp, K):
    return getattr(K, "matmul", xp.matmul)


def _with_bias(xp, K, x, W, b):
    """x (T,B,I) -> (T*B, I[+1]) input matrix and W[+b]. The bias rides in the GEMM as a column of ones appended
    to x (a separate pass over gx measured 2 ms of ~35 on the CPU), which also makes its gradient fall out of
    the weight-gradient GEMM."""
    T, B, In = x.shape
    x2 = x.reshape(T * B, In)
    if b is not None:
        x2 = _empty(xp, K, (T * B, In + 1), x.dtype)
        x2[:, :In] = x.reshape(T * B, In)
        x2[:, In] = 1
    return x2, _bias_row(xp, W, b)


def _bias_row(xp, W, b):
    return W if b is None else xp.concatenate([W, b.reshape(1, -1)])


ROW_BLOCKS = 8  # time blocks of an all-step GEMM that skips rows
# ... each of at least this many rows: an inference chunk of 6 steps was otherwise projected one step (<= 64
# rows) per GEMM once its rows started finishing.
MIN_BLOCK_ROWS = 512
SKIP_ROWS_BELOW = 0.9  # the all-step GEMMs skip finished rows only when fewer than this share of rows is computed
# ... and the input projection only below this share: its row blocks are copies in and out (a block's rows are not
# evenly strided), and with torch's OpenMP team running the GEMM (maskrnn/_cpu/omp.py) the projection of every row
# took 1.39 ms against 2.15 in blocks at (16,200,64,128) and as long at (64,100,128,256), lengths uniform in [T/4,
# T] (62% of the rows); at 28-30% of the rows the blocks took 1.02 / 6.2 ms against 1.22 / 11.6.
PROJECT_EVERY_ROW_ABOVE = 0.6


def _every_row(sizes, T, B, share=None):
    """Whether the all-step GEMMs run over every row: sizes ((T,) rows computed per step) on the device (None),
    or nearly every row computed (at least ``share``, default SKIP_ROWS_BELOW)."""
    return sizes is None or sizes.sum() >= (SKIP_ROWS_BELOW if share is None else share) * T * B


def _row_blocks(sizes, T, B):
    """[(t0, t1, n)] over the T steps of sizes ((T,) rows computed per step, on the host): the input projection
    needs rows [0, n) of steps [t0, t1) only; the other rows are past every real step (no kernel reads their
    projection). Blocks only where fewer than PROJECT_EVERY_ROW_ABOVE of the rows are computed (the backward:
    ``_backward_rows``). sizes None (on the device, where reading them would wait for the device): every row."""
    if _every_row(sizes, T, B, PROJECT_EVERY_ROW_ABOVE):
        return [(0, T, B)]
    k = max(-(-T // ROW_BLOCKS), -(-MIN_BLOCK_ROWS // B))
    return [(t0, min(T, t0 + k), int(sizes[t0 : t0 + k].max())) for t0 in range(0, T, k)]


def _project_rows(xp, K, x3, Wb, gx, sizes):
    """gx (k,B,GH) = x3 (k,B,F) @ Wb on the rows ``_row_blocks`` keeps; the rest of gx is left unwritten."""
    mm = _matmul(xp, K)
    k, B, F = x3.shape
    GH = Wb.shape[1]
    for t0, t1, n in _row_blocks(sizes, k, B):
        if n == B:
            mm(x3[t0:t1].reshape((t1 - t0) * B, F), Wb, out=gx[t0:t1].reshape((t1 - t0) * B, GH))
        elif n:
            gx[t0:t1, :n] = mm(_block_rows(x3, t0, t1, n), Wb).reshape(t1 - t0, n, GH)


def _block_rows(a, t0, t1, n):
    """Rows [0, n) of steps [t0, t1) of a (T,B,F) as a (k*n, F) matrix (a copy unless n == B)."""
    return a[t0:t1, :n].reshape((t1 - t0) * n, a.shape[2])


def _backward_rows(xp, sizes, T, B):
    """The rows the backward GEMMs need, as (tf, idx): every row of the steps [0, tf), and the flat rows
    ``t * B + r`` (r < sizes[t]) of the later steps, gathered by idx: one copy per array of exactly the computed
    rows, where row blocks (``_row_blocks``) copied each block as wide as its widest step and ran 8 GEMMs per
    product. sizes None (on the device) or nearly every row computed: (T, None), every row, no copies."""
    if _every_row(sizes, T, B):
        return T, None
    tf = int(np.argmax(sizes < B))
    idx = np.flatnonzero(np.arange(B)[None] < sizes[tf:, None]) + tf * B
    return tf, idx if xp is np else xp.asarray(idx)


def _backward_gemms(xp, K, rows, dgx, W, terms, need_dx=True):
    """dx = dgx W^T (T,B,I) (None unless need_dx) and, for each (a, d, cols) in terms ((T,B,F) arrays, cols a
    column slice of d or None), the weight gradient a^T d[..., cols] summed over steps, each over ``rows``
    (``_backward_rows``) only. The engine's ``gram`` (the CPU's native product) reads the rows in place;
    elsewhere the gathered rows of the terms (a, dgx, None) (at least the input's) go side by side into one GEMM
    (LSTM: [x | h_{t-1}]^T dgx, ~12% faster than two; the gather copies them anyway)."""
    mm = _matmul(xp, K)
    T, B, _ = dgx.shape
    tf, idx = rows
    n = tf * B

    def flat(a):
        return a.reshape(T * B, a.shape[2])

    sums = _gram_sums(K, flat, n, idx, terms)
    dx = _empty(xp, K, (T, B, W.shape[0]), dgx.dtype) if need_dx else None
    if n and need_dx:
        mm(flat(dgx)[:n], W.T, out=flat(dx)[:n])
    if idx is not None and need_dx:
        dx[tf:] = 0
    if sums is not None:  # dx's later steps only: their rows gathered a piece at a time (GATHER_BYTES)
        rows_ = max(1, GATHER_BYTES // (dgx.shape[2] * dgx.itemsize))
        for r0 in range(0, len(idx) if need_dx and idx is not None else 0, rows_):
            part = idx[r0 : r0 + rows_]
            flat(dx)[part] = mm(flat(dgx)[part], W.T)
        return dx, sums
    # The gathered rows of dgx: for dx's later steps and for the weight gradients.
    d2 = flat(dgx)[idx] if idx is not None and len(idx) else None
    if need_dx and d2 is not None:
        flat(dx)[idx] = mm(d2, W.T)
    sums = [xp.zeros((a.shape[2], len(range(d.shape[2])[cols or slice(None)])), dgx.dtype) for a, d, cols in terms]

    def cut(d, cols):
        return d if cols is None else xp.ascontiguousarray(d[:, cols])

    for (a, d, cols), g in zip(terms, sums):
        if n:
            mm(flat(a)[:n].T, cut(flat(d)[:n], cols), out=g)
    if d2 is None:
        return dx, sums
    shared = [i for i, (_, d, cols) in enumerate(terms) if d is dgx and cols is None]
    stack = [flat(terms[i][0])[idx] for i in shared]
    g = mm((stack[0] if len(stack) == 1 else xp.concatenate(stack, axis=1)).T, d2)
    ends = np.cumsum([terms[i][0].shape[2] for i in shared])
    parts = {i: g[e - terms[i][0].shape[2] : e] for i, e in zip(shared, ends)}
    gathered = {id(dgx): d2}
    for i, (a, d, cols) in enumerate(terms):
        if i not in parts:
            if id(d) not in gathered:
                gathered[id(d)] = flat(d)[idx]
            parts[i] = mm(flat(a)[idx].T, cut(gathered[id(d)], cols))
        xp.add(sums[i], parts[i], out=sums[i])
    return dx, sums


# Bytes of dgx's rows gathered at once for dx: all of them at once were a new block of up to 0.6 T B 4H
# scalars (33 MB in float64 at (64,100,128,256)), which glibc maps afresh, page faults and all, on every call.
GATHER_BYTES = 8 << 20


def _gram_sums(K, flat, n, idx, terms):
    """The weight gradients of ``_backward_gemms`` on the engine's ``gram`` (rows read in place, no gather):
    a list, or None where the engine has none or it does not run (then the GEMMs gather the rows). Two terms
    with the same d and cols go into one call (the LSTM's [x | h_{t-1}]^T dgx: one pass over dgx)."""
    gram = getattr(K, "gram", None)
    if gram is None or not K.gram_runs(terms[0][0].dtype):
        return None
    sel = None if idx is None else np.concatenate([np.arange(n, dtype=np.int64), np.asarray(idx, np.int64)])
    sums = [None] * len(terms)
    for i, (a, d, cols) in enumerate(terms):
        if sums[i] is not None:
            continue
        pair = next((j for j in range(i + 1, len(terms)) if terms[j][1] is d and terms[j][2] == cols), None)
        a2 = None if pair is None else flat(terms[pair][0])
        g = gram(flat(a), flat(d)[:, cols or slice(None)], sel, a2)
        if g is None:
            return None
        sums[i] = g[: a.shape[2]]
        if pair is not None:
            sums[pair] = g[a.shape[2] :]
    return sums


def _split_bias(dWb, W):
    """The gradient of W[+b] -> (dW, db or None)."""
    return (dWb, None) if dWb.shape[0] == W.shape[0] else (dWb[:-1], dWb[-1])


def _empty(xp, K, shape, dtype):
    """An uninitialised array (the engine's ``empty``)."""
    return getattr(K, "empty", xp.empty)(shape, dtype)


def _states(xp, K, T, B, H, dtype, inits):
    """[(T+1,B,H) states, one per init in inits], from one allocation: s[0] = init, zeros for None (the GPU's zero
    initial states; when every one is None, one fill for them all: each operation costs a GPU forward host time
    before its scan's launch)."""
    s = _empty(xp, K, (len(inits), T + 1, B, H), dtype)
    if all(init is None for init in inits):
        s[:, 0].fill(0)
    else:
        for buf, init in zip(s, inits):
            if init is None:
                buf[0].fill(0)
            else:
                buf[0] = init
    return list(s)


def _upstream(xp, tape, *grads):
    """Upstream gradients for the backward kernels: d_out (T,B,H) and state gradients (B,H), zeros for None;
    state gradients are copied since the kernels update them in place."""
    T, B, _ = tape["gx"].shape
    H, dtype = tape["U"].shape[0], tape["gx"].dtype
    d_out, *states = grads
    d_out = xp.zeros((T, B, H), dtype) if d_out is None else d_out
    return [d_out] + [xp.zeros((B, H), dtype) if d is None else d.copy() for d in states]


MAX_CHUNK_STEPS = 1024  # tiny steps run ~20 us each on the CPU: a chunk stays well under Ctrl-C's 0.5 s
CHUNK_WORK = 1 << 30  # multiply-adds per chunk of step products (~10 ms on the CPU)


def chunks(T, B, H, GH, workspace=None, whole=False):
    """[(t0, t1), ...] covering [0, T). workspace: (elements per step, elements allowed) bounds a chunk's
    buffers as well as its work. whole: no bound on a chunk's work, only the workspace's (an engine with
    WHOLE_SCAN, the GPU's: its persistent kernels keep U on chip across every step of a launch, and each chunk costs
    a launch, a reload of U, a projection GEMM and the carried outputs; on an H100 at (256,100,512,1024), chunks
    of one step made the forward 11x cuDNN's time)."""
    n = T if whole else min(MAX_CHUNK_STEPS, CHUNK_WORK // max(B * GH * (H + 16), 1))  # + 16: the gate math
    if workspace is not None:
        n = min(n, workspace[1] // max(workspace[0], 1))
    n = max(1, min(T, n))
    return [(t0, min(T, t0 + n)) for t0 in range(0, T, n)]


def _carry_outputs(xp, mask, out, prev):
    """out (k,B,H): a chunk's outputs from a kernel that took its first step for t == 0. Padded steps before a
    row's first real step in the chunk carry prev (B,H), the output of the step before the chunk."""
    lead = xp.cumsum(mask, axis=0) == 0
    xp.copyto(out, prev[None], where=lead[:, :, None])


def _forward(xp, K, x, W, b, plan, zero_output, out, spans, call):
    """Training forward, chunk by chunk: each chunk's projection, then call(gx, t0, t1) runs the kernel on views
    of the tape's arrays. Returns gx (T,B,GH) and the input matrix for the weight gradients."""
    T, B, _ = x.shape
    x2, Wb = _with_bias(xp, K, x, W, b)
    x3 = x2.reshape(T, B, Wb.shape[0])
    gx = _empty(xp, K, (T, B, Wb.shape[1]), x.dtype)
    for t0, t1 in spans:
        _project_rows(xp, K, x3[t0:t1], Wb, gx[t0:t1], plan.host_sizes(t0, t1))
        call(gx, t0, t1)
        if t0 and not zero_output:
            _carry_outputs(xp, plan.mask[t0:t1], out[t0:t1], out[t0 - 1])
    return gx, x2


@_engine_call
def lstm_forward(xp, K, x, W, U, b, h0, c0, plan, zero_output):
    """x (T,B,I) with padded steps zeroed; h0, c0 (B,H) or None (zeros). Returns out (T,B,H), h_T, c_T (views of
    the tape) and the tape."""
    T, B, _ = x.shape
    H = U.shape[0]
    out = _empty(xp, K, (T, B, H), x.dtype)
    hs, cs = _states(xp, K, T, B, H, x.dtype, [h0, c0])
    kernel = getattr(K, f"lstm_{plan.variant}_fwd")

    def call(gx, t0, t1):
        kernel(gx[t0:t1], U, plan.chunk(t0, t1), zero_output, out[t0:t1], hs[t0 : t1 + 1], cs[t0 : t1 + 1])

    spans = chunks(T, B, H, 4 * H, whole=getattr(K, "WHOLE_SCAN", False))
    gx, x2 = _forward(xp, K, x, W, b, plan, zero_output, out, spans, call)
    tape = dict(x2=x2, W=W, U=U, gx=gx, hs=hs, cs=cs)
    # Views of the tape: the dispatcher copies them (_Layout.final), as the backward reads the tape and a caller may
    # change the returned states in place.
    return out, hs[T], cs[T], tape


@_engine_call
def lstm_backward(xp, K, plan, zero_output, tape, d_out, d_h, d_c, need_dx=True):
    """Upstream gradients in scan layout (None = zero). Returns dx (None unless need_dx), dW, dU, db, dh0, dc0."""
    W, U, hs, cs = tape["W"], tape["U"], tape["hs"], tape["cs"]
    T, B = tape["gx"].shape[:2]
    d_out, dh, dc = _upstream(xp, tape, d_out, d_h, d_c)
    dgx = _empty(xp, K, tape["gx"].shape, tape["gx"].dtype)
    getattr(K, f"lstm_{plan.variant}_bwd")(tape["gx"], U, plan.steps, zero_output, hs, cs, d_out, dh, dc, dgx)
    x3 = tape["x2"].reshape(T, B, tape["x2"].shape[1])
    dx, (dWb, dU) = _backward_gemms(xp, K, _backward_rows(xp, plan.host_sizes(), T, B), dgx, W,
                                    [(x3, dgx, None), (hs[:T], dgx, None)], need_dx)
    dW, db = _split_bias(dWb, W)
    return dx, dW, dU, db, dh, dc


@_engine_call
def gru_forward(xp, K, x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output):
    """x (T,B,I) with padded steps zeroed; b_in (3H,) or None; b_rec (3H,) (zeros when there is none).

    Returns out (T,B,H), h_T and the tape."""
    T, B, _ = x.shape
    H = U.shape[0]
    out = _empty(xp, K, (T, B, H), x.dtype)
    (hs,) = _states(xp, K, T, B, H, x.dtype, [h0])
    hr = _empty(xp, K, (T, B, H), x.dtype)
    kernel = getattr(K, f"gru_{plan.variant}_fwd")

    def call(gx, t0, t1):
        kernel(gx[t0:t1], U, b_rec, plan.chunk(t0, t1), zero_output, reset_after, out[t0:t1], hs[t0 : t1 + 1],
               hr[t0:t1])

    spans = chunks(T, B, H, 3 * H, whole=getattr(K, "WHOLE_SCAN", False))
    gx, x2 = _forward(xp, K, x, W, b_in, plan, zero_output, out, spans, call)
    tape = dict(x2=x2, W=W, U=U, gx=gx, hs=hs, hr=hr)
    return out, hs[T], tape  # a view, as in lstm_forward


@_engine_call
def gru_backward(xp, K, plan, zero_output, reset_after, tape, d_out, d_h, need_dx=True):
    """Returns dx (None unless need_dx), dW, dU, db_in, db_rec (None when not reset_after), dh0."""
    W, U, hs, hr = tape["W"], tape["U"], tape["hs"], tape["hr"]
    T, B, H = tape["gx"].shape[0], tape["gx"].shape[1], U.shape[0]
    d_out, dh = _upstream(xp, tape, d_out, d_h)
    dgx = _empty(xp, K, tape["gx"].shape, tape["gx"].dtype)
    dgr = _empty(xp, K, tape["gx"].shape, tape["gx"].dtype) if reset_after else dgx
    kernel = getattr(K, f"gru_{plan.variant}_bwd")
    kernel(tape["gx"], U, plan.steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr)
    x3 = tape["x2"].reshape(T, B, tape["x2"].shape[1])
    if reset_after:
        terms = [(x3, dgx, None), (hs[:T], dgr, None)]
    else:
        terms = [(x3, dgx, None), (hs[:T], dgx, slice(0, 2 * H)), (hr, dgx, slice(2 * H, 3 * H))]
    dx, (dWb, *dUs) = _backward_gemms(xp, K, _backward_rows(xp, plan.host_sizes(), T, B), dgx, W, terms, need_dx)
    dW, db_in = _split_bias(dWb, W)
    if reset_after:
        return dx, dW, dUs[0], db_in, dgr.reshape(T * B, 3 * H).sum(axis=0), dh
    return dx, dW, xp.concatenate(dUs, axis=1), db_in, None, dh
