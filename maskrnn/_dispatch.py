"""The one dispatcher: validates every argument once, picks the device from the inputs, puts the problem in
scan layout (time-major, go_backwards applied, rows sorted for the packed kernels, padded inputs zeroed),
runs the shared driver (``_scan``) with that device's kernels and returns results in the caller's layout.
"""

import contextlib
from collections import namedtuple

import numpy as np

from . import _scan
from ._validate import Problem, validate

LSTMGrads = namedtuple("LSTMGrads", "x kernel recurrent_kernel bias h0 c0")
LSTMGrads.__doc__ = "Gradients from ``lstm_vjp``'s pullback, each shaped like its argument (bias: None if absent)."
GRUGrads = namedtuple("GRUGrads", "x kernel recurrent_kernel bias h0")
GRUGrads.__doc__ = "Gradients from ``gru_vjp``'s pullback, each shaped like its argument (bias: None if absent)."


def _engine(device):
    if device == "cpu":
        from . import _cpu

        return np, _cpu
    try:
        from . import _cuda
    except ImportError as e:
        raise RuntimeError(f"maskrnn: the CUDA engine cannot be loaded ({e})") from e
    ok, why = _cuda.available()
    if not ok:
        raise RuntimeError(f"maskrnn: device 'cuda' requested but {why}")
    import cupy

    return cupy, _cuda


def _last_steps(mask):
    """Each row's last real step + 1 (0 for a row with none) of a (T,B) host mask."""
    return np.where(mask.any(axis=0), mask.shape[0] - np.argmax(mask[::-1], axis=0), 0)


def make_plan(xp, mask, source="mask"):
    """mask (T,B) bool in scan order, on the host -> Plan (the CPU engine's). Rows are sorted by how many leading
    steps need computing, so that each step computes a prefix of rows. Post-padded masks (each row real, then
    padded) and pre-padded ones take the packed kernels; any other mask the masked kernels, whose rows stop after
    their last real step (from there on their states are only carried). No mask (source "none": the mask is
    all True, the dispatcher's own): every row at every step in the caller's order, known without reading it
    (~15-30 us less per call, most of a small call's planning)."""
    T, B = mask.shape
    if source == "none":
        return _scan.Plan(mask=np.ascontiguousarray(mask), batch_sizes=np.full(T, B, np.int32), packed=True)
    # A copy: the pullback reads it, and the caller's mask may change.
    mask = mask.copy()
    post = not (mask[1:] & ~mask[:-1]).any()
    pre = not post and not (mask[:-1] & ~mask[1:]).any()
    steps = np.arange(T)[:, None]
    if pre:
        span = mask.sum(axis=0)
        active = span[None, :] >= T - steps
    else:
        span = _last_steps(mask)
        active = span[None, :] > steps
    plan = _scan.Plan(mask=mask, batch_sizes=active.sum(axis=1).astype(np.int32), packed=post or pre)
    order = np.argsort(-span, kind="stable")
    if np.any(order != np.arange(B)):
        plan.order = xp.asarray(order)
        plan.inverse = xp.asarray(np.argsort(order))
        plan.mask = xp.ascontiguousarray(mask[:, plan.order])
    return plan


def device_plan(xp, K, mask, source):
    """make_plan for an engine with DEVICE_PLAN: built on the mask's device by the engine's ``row_plan`` (one
    kernel), nothing read back, so the call never waits for the device. Without classifying the mask (that would
    mean reading it): rows are sorted by their last real step, longest first (stable, as make_plan's), and
    batch_sizes[t] (a device array, non-increasing) counts the rows with a real step at t or later; the masked
    kernels skip the rest, and select by the mask within. Lengths (source "lengths") make a post-padded mask: the
    packed kernels, same order and counts. No mask ("none"): every row at every step, no reordering. mask: (T,B)
    bool in scan order."""
    mask = mask if mask.flags.c_contiguous else mask.copy(order="C")
    if source == "none":
        return _scan.Plan(mask=mask, packed=True, on_device=True)
    order, inverse, counts = K.row_plan(xp, mask)
    # The plan's own mask (a gather makes it a copy): the pullback reads it, and the caller's may change.
    return _scan.Plan(mask=xp.take(mask, order, axis=1), batch_sizes=counts[: mask.shape[0]],
                      packed=source == "lengths", order=order, inverse=inverse, on_device=True)


def host_plan(xp, K, mask, source):
    """device_plan's plan (the same order, counts and mask) from a host mask: host lengths of a GPU problem, as
    torch's pack_padded_sequence takes them. Worked out on the host by the engine's ``host_plan`` (one native call,
    csrc/bindings.cpp) and copied over in one transfer, queued: no kernel, no gather and nothing read back (the
    forward's wall time waits for this host work before the scan's launch)."""
    T, B = mask.shape
    return UploadedPlan(K.host_plan(mask), T, B, packed=source == "lengths")


class UploadedPlan(_scan.Plan):
    """host_plan's Plan: one device buffer in the layout of csrc/bindings.cpp's host_plan (order (B), inverse (B)
    and counts (T) as int32, then the (T,B) mask in plan order), whose arrays are views made when first read. An
    engine may read their addresses instead (``buffer`` and the byte ``offsets``), as the GPU's inference does:
    making the four views cost eight CuPy operations, ~3 us of host time each, before the scan's launch."""

    def __init__(self, buffer, T, B, packed):
        self.buffer, self.shape, self.packed, self.on_device = buffer, (T, B), packed, True
        self.offsets = dict(order=0, inverse=4 * B, batch_sizes=8 * B, mask=4 * (2 * B + T))
        self._views = {}

    def _view(self, name):
        if name not in self._views:
            T, B = self.shape
            start = self.offsets[name]
            if name == "mask":
                view = self.buffer[start:].view(np.bool_).reshape(T, B)
            else:
                view = self.buffer[start : start + 4 * (T if name == "batch_sizes" else B)].view(np.int32)
            self._views[name] = view
        return self._views[name]

    mask = property(lambda self: self._view("mask"))
    batch_sizes = property(lambda self: self._view("batch_sizes"))
    order = property(lambda self: self._view("order"))
    inverse = property(lambda self: self._view("inverse"))


def _take(xp, a, index, axis):
    """xp.take(a, index, axis), C-contiguous. NumPy's take first copies a strided array (here the transposed view
    of a batch-major array) whole to C order before gathering: one row (a (T,F) slice) at a time instead, one pass
    (fwd+bwd at (64,100,128,256) spent 8 ms of ~110 in take)."""
    if xp is not np or a.flags.c_contiguous or a.ndim != 3 or axis > 1 or a.size < 256 * len(index):
        return xp.take(a, index, axis=axis)
    out = np.empty(a.shape[:axis] + (len(index),) + a.shape[axis + 1 :], a.dtype)
    src, dst = (a, out) if axis == 0 else (a.transpose(1, 0, 2), out.transpose(1, 0, 2))
    for j, i in enumerate(index):
        dst[j] = src[i]
    return out


TILE = 128  # rows and columns of the tiles that c_copy copies a transposed host matrix in


def c_copy(xp, a):
    """A copy of a in C order (the training path's own copies of the weights). As _take, a NumPy copy done in an
    order the cache likes: a 2-D host array that is not C-contiguous (a transposed matrix: torch.nn's weights in
    Keras's layout) is copied tile by tile, each tile's rows and columns in L1, where NumPy's own copy walked the
    source one strided column at a time (4 MB in 5.0 ms, 1.9 ms in tiles; 8 MB in 10.5 ms, 3.0 ms in tiles)."""
    if xp is not np or a.ndim != 2 or a.flags.c_contiguous:
        return a.copy()
    out = np.empty(a.shape, a.dtype)
    for i in range(0, a.shape[0], TILE):
        for j in range(0, a.shape[1], TILE):
            out[i : i + TILE, j : j + TILE] = a[i : i + TILE, j : j + TILE]
    return out


class _Layout:
    """Moves arrays between the caller's layout and the scan layout for one call."""

    def __init__(self, xp, K, p: Problem):
        self.xp, self.K, self.p = xp, K, p
        mask = self._to_scan_time(p.mask_tm)
        if getattr(K, "DEVICE_PLAN", False):
            # Lengths post-pad in the caller's time order: scanned backwards, the padding comes first.
            source = "mask" if p.mask_source == "lengths" and p.go_backwards else p.mask_source
            if xp is not np and isinstance(mask, np.ndarray):  # host lengths of a GPU problem
                self.plan = host_plan(xp, K, mask, source)
            else:
                self.plan = device_plan(xp, K, mask, source)
        else:
            self.plan = make_plan(xp, mask, p.mask_source)

    def _to_scan_time(self, a):
        return a[::-1] if self.p.go_backwards else a

    def rows(self, a, axis=0):
        """Permute batch rows into plan order (a copy, C-contiguous)."""
        if self.plan.order is not None:
            a = _take(self.xp, a, self.plan.order, axis)
        return self.xp.ascontiguousarray(a)

    def states(self, a):
        """Initial states (B,H) in plan order; zeros (no initial_state, a None) are that already, with no gather:
        None for an engine whose scans zero their state buffers in place (ZERO_STATES: the GPU's, where a zeros
        array and its copy were two more operations queued before the scan), else zeros."""
        if a is not None:
            return self.rows(a)
        if getattr(self.K, "ZERO_STATES", False):
            return None
        return self.xp.zeros((self.p.batch, self.p.units), self.p.dtype)

    def unrows(self, a, axis=0):
        if self.plan.order is not None:
            a = _take(self.xp, a, self.plan.inverse, axis)
        return a

    def final(self, a):
        """A final state (B,H) from a view of the scan's buffers: in the caller's row order, always a copy (the
        backward reads the tape, and a caller may change the result in place); the reorder is that copy."""
        return self.unrows(a) if self.plan.order is not None else a.copy()

    def seq_in(self, a, time_major, flip):
        """Caller's (B,T,F) or (T,B,F) -> scan (T,B,F)."""
        a = a if time_major else a.transpose(1, 0, 2)
        return self.rows(a[::-1] if flip else a, axis=1)

    def seq_out(self, a, flip):
        """Scan (T,B,F) -> caller's layout, in one copy."""
        a = a[::-1] if flip else a
        if not self.p.time_major:
            a = a.transpose(1, 0, 2)
        a = self.xp.ascontiguousarray(self.unrows(a, axis=0 if not self.p.time_major else 1))
        # NumPy calls an array with a flipped axis of length <= 1 (T == 1, B == 0, ...) contiguous and keeps
        # its negative stride, which torch.from_numpy refuses.
        return a.copy() if any(s < 0 for s in a.strides) else a

    def inputs(self):
        """The training inputs in scan layout, one copy. Padded steps are zeroed so NaN/Inf there reach no
        weight-gradient GEMM."""
        x = self.seq_in(self.p.x, self.p.time_major, self.p.go_backwards)
        if x is self.p.x or x.base is not None:  # seq_in made no copy: x is (a view of) the caller's array
            x = x.copy()
        if self.plan.on_device:  # not x[~mask] = 0: CuPy's boolean-mask assignment reads the True count back
            self.xp.copyto(x, self.xp.zeros((), x.dtype), where=~self.plan.mask[:, :, None])
        else:
            x[~self.plan.mask] = 0
        return x


def _infer(cell, p, xp, K, lay):
    """The inference path: no tape, the engine's fused ``{cell}_infer`` (the CPU's maskrnn/_cpu/infer.py, the GPU's
    maskrnn/_cuda.py) reads the caller's inputs and writes its outputs in place, on views in scan time order."""
    out = xp.empty((p.steps, p.batch, p.units) if p.time_major else (p.batch, p.steps, p.units), p.dtype)
    x = p.x if p.time_major else p.x.transpose(1, 0, 2)
    x = x[::-1] if p.go_backwards else x
    o = out if p.time_major else out.transpose(1, 0, 2)  # outputs in processing order, as Keras returns them
    h0 = lay.states(p.h0)
    with getattr(K, "session", contextlib.nullcontext)():
        if cell == "lstm":
            h, c = K.lstm_infer(x, p.kernel, p.recurrent_kernel, p.bias, h0, lay.states(p.c0), lay.plan,
                                p.zero_output_for_mask, o)
            return out, h, c
        b_in, b_rec = p.bias_in_rec(xp)
        h = K.gru_infer(x, p.kernel, p.recurrent_kernel, b_in, b_rec, h0, p.reset_after, lay.plan,
                        p.zero_output_for_mask, o)
    return out, h


def _run(cell, args, kwargs, training):
    p = validate(cell, args, kwargs)
    xp, K = _engine(p.device)
    lay = _Layout(xp, K, p)
    plan, H = lay.plan, p.units
    if not training:
        return _infer(cell, p, xp, K, lay)
    x = lay.inputs()
    h0 = lay.states(p.h0)
    # The pullback reads the weights: copies (small next to the tape) keep a caller's in-place update between
    # forward and pullback from changing the gradients. A checksum would cost a pass over them at each call.
    W, U = (c_copy(xp, p.kernel), c_copy(xp, p.recurrent_kernel)) if training else (p.kernel, p.recurrent_kernel)
    if cell == "lstm":
        c0 = lay.states(p.c0)
        out, h, c, tape = _scan.lstm_forward(xp, K, x, W, U, p.bias, h0, c0, plan, p.zero_output_for_mask)
        results = (lay.seq_out(out, False), lay.final(h), lay.final(c))
    else:
        b_in, b_rec = p.bias_in_rec(xp)
        out, h, tape = _scan.gru_forward(xp, K, x, W, U, b_in, b_rec, h0, p.reset_after, plan,
                                         p.zero_output_for_mask)
        results = (lay.seq_out(out, False), lay.final(h))

    def grad_in(d, name, shape):
        if d is None:
            return None
        d = xp.asarray(d, dtype=p.dtype)
        if d.shape != shape:
            raise ValueError(f"{name}: upstream gradient has shape {tuple(d.shape)}, expected {shape} (the shape "
                             f"of the forward's {'outputs' if name == 'd_outputs' else name[2:] + '_T'})")
        return d

    def x_grad(dx):
        return None if dx is None else lay.seq_out(dx, p.go_backwards)

    def pullback(d_outputs=None, d_h=None, d_c=None, *, need_x=True):
        d_out = grad_in(d_outputs, "d_outputs", results[0].shape)
        d_out = None if d_out is None else lay.seq_in(d_out, p.time_major, False)
        d_h = grad_in(d_h, "d_h", (p.batch, H))
        d_h = None if d_h is None else lay.rows(d_h)
        if cell == "lstm":
            d_c = grad_in(d_c, "d_c", (p.batch, H))
            d_c = None if d_c is None else lay.rows(d_c)
            dx, dW, dU, db, dh0, dc0 = _scan.lstm_backward(xp, K, plan, p.zero_output_for_mask, tape, d_out,
                                                           d_h, d_c, need_x)
            return LSTMGrads(x_grad(dx), dW, dU, db if p.has_bias else None,
                             lay.unrows(dh0), lay.unrows(dc0))
        dx, dW, dU, db_in, db_rec, dh0 = _scan.gru_backward(xp, K, plan, p.zero_output_for_mask,
                                                            p.reset_after, tape, d_out, d_h, need_x)
        db = None
        if p.has_bias:
            db = xp.stack([db_in, db_rec]) if p.reset_after else db_in
        return GRUGrads(x_grad(dx), dW, dU, db, lay.unrows(dh0))

    if cell == "gru":
        return results, lambda d_outputs=None, d_h=None, *, need_x=True: pullback(d_outputs, d_h, need_x=need_x)
    return results, pullback


_DOC_ARGS = """
    x: (B,T,I) (or (T,B,I) with time_major) float array; NumPy runs on the CPU, CuPy (or any
        __cuda_array_interface__ / CUDA __dlpack__ object) on the GPU.
    kernel: (I,GH); recurrent_kernel: (H,GH); bias: Keras layout (docs/semantics.md) or None.
    mask: (B,T) bool ((T,B) with time_major), True = real step; or lengths: (B,) ints in [0, T]
        (post-padding). Not both.
    initial_state: zeros when None.
    go_backwards: scan from the last step; outputs come back in processing (reversed) order, as Keras.
    zero_output_for_mask: outputs at masked steps are 0 instead of the previous step's output.
    device: "cpu" or "cuda" to override the inputs' device (also MASKRNN_DEVICE).
"""


def lstm(x, kernel, recurrent_kernel, bias=None, *, mask=None, lengths=None, initial_state=None,
         go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    return _run("lstm", (x, kernel, recurrent_kernel, bias), dict(
        mask=mask, lengths=lengths, initial_state=initial_state, go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask, time_major=time_major, device=device), training=False)


def lstm_vjp(x, kernel, recurrent_kernel, bias=None, *, mask=None, lengths=None, initial_state=None,
             go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    return _run("lstm", (x, kernel, recurrent_kernel, bias), dict(
        mask=mask, lengths=lengths, initial_state=initial_state, go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask, time_major=time_major, device=device), training=True)


def gru(x, kernel, recurrent_kernel, bias=None, *, reset_after=True, mask=None, lengths=None,
        initial_state=None, go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    return _run("gru", (x, kernel, recurrent_kernel, bias), dict(
        reset_after=reset_after, mask=mask, lengths=lengths, initial_state=initial_state,
        go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask, time_major=time_major,
        device=device), training=False)


def gru_vjp(x, kernel, recurrent_kernel, bias=None, *, reset_after=True, mask=None, lengths=None,
            initial_state=None, go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    return _run("gru", (x, kernel, recurrent_kernel, bias), dict(
        reset_after=reset_after, mask=mask, lengths=lengths, initial_state=initial_state,
        go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask, time_major=time_major,
        device=device), training=True)


lstm.__doc__ = f"""LSTM over a masked batch (Keras semantics). Returns (outputs (B,T,H), h_T (B,H), c_T (B,H)).

    initial_state: (h0, c0), each (B,H). G = 4 (gates i, f, c, o).{_DOC_ARGS}"""
lstm_vjp.__doc__ = """``lstm`` that keeps what backward needs. Returns ((outputs, h_T, c_T), pullback);
    ``pullback(d_outputs=None, d_h=None, d_c=None, *, need_x=True)`` -> LSTMGrads (None upstream = zero;
    callable again). need_x=False skips the input gradient (its GEMM, ~10% of the backward): LSTMGrads.x is None.
    The pullback keeps its own copies of the weights and mask: changing the caller's afterwards has no effect."""
gru.__doc__ = f"""GRU over a masked batch (Keras semantics). Returns (outputs (B,T,H), h_T (B,H)).

    reset_after: Keras's variant switch (True = PyTorch/cuDNN style, bias (2,3H)); bias (3H,) when False.
    initial_state: h0 (B,H) (or [h0]). G = 3 (gates z, r, h).{_DOC_ARGS}"""
gru_vjp.__doc__ = """``gru`` that keeps what backward needs. Returns ((outputs, h_T), pullback);
    ``pullback(d_outputs=None, d_h=None, *, need_x=True)`` -> GRUGrads (None upstream = zero; callable again;
    own copies of the weights and mask, as in ``lstm_vjp``; need_x as in ``lstm_vjp``)."""
