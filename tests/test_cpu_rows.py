"""The CPU kernels' per-step products (native, maskrnn/_cpu/gemm.py) and batch split across threads
(maskrnn/_cpu/rows.py): outputs against the float64 reference and gradients against its finite differences at
every instruction-set level and on the np.dot fallback (address 0), with the batch split over 1, 2 and 3 threads
(uneven shares, threads whose rows all finish early, all-masked rows); and a check that the kernels do run the
native product whenever the extension provides it."""

import numba
import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream
from conftest import TOLERANCE, make_mask, rel_err
from test_grad import finite_difference

import maskrnn
from maskrnn._cpu import gemm, rows

NATIVE = ["auto", "avx2", "portable"]


@pytest.fixture
def level(request, monkeypatch):
    """Runs the test with the kernels' products at request.param (restored afterwards)."""
    monkeypatch.setattr(gemm, "_native", gemm.addresses(request.param))
    if request.param != "off" and not gemm.level():
        pytest.skip(f"the native product at level {request.param} does not run here")
    return request.param


def _run(cell, p, upstream, **kw):
    _, vjp, _, extra = cell_fns(cell)
    q = dict(p)
    outs, pullback = vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)
    return outs, pullback(*upstream)


def _reference(cell, p, **kw):
    _, _, ref, extra = cell_fns(cell)
    q = {k: (tuple(s.astype(np.float64) for s in v) if isinstance(v, tuple) else v.astype(np.float64))
         for k, v in p.items()}
    return ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes", "post_holes"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("level", [*NATIVE, "off"], indirect=True)
def test_split_scan_matches_reference(rng, monkeypatch, level, cell, mask_kind, threads):
    monkeypatch.setattr(rows, "threads_for", lambda B, H, GH, sizes=None: threads)
    B, T, I, H = 7, 9, 5, 11  # 7 rows over 3 threads: shares of 3, 2 and 2 rows
    p = make_problem(rng, cell, B, T, I, H, "float64", initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T), zero_output_for_mask=bool(rng.integers(2)))
    upstream = random_upstream(rng, cell, B, T, H)
    outs, grads = _run(cell, p, upstream, **kw)
    for got, want in zip(outs, _reference(cell, p, **kw)):
        assert rel_err(got, want) < TOLERANCE["float64"]
    for name in ("kernel", "recurrent_kernel", "bias", "x"):
        g = getattr(grads, name)
        for _ in range(3):
            index = tuple(int(rng.integers(s)) for s in g.shape)
            fd = finite_difference(cell, p, upstream, name, index, **kw)
            assert abs(g[index] - fd) <= 1e-6 * max(1.0, abs(fd)), (name, index, g[index], fd)
    h0 = grads.h0
    index = (int(rng.integers(B)), int(rng.integers(H)))
    assert abs(h0[index] - finite_difference(cell, p, upstream, "h0", index, **kw)) <= 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("level", NATIVE, indirect=True)
def test_engine_split_at_a_benchmark_like_shape_matches_reference(rng, level, cell, dtype):
    """The split as the engine chooses it (rows.threads_for), lengths uniform in [T/4, T] with 10% holes: a call
    large enough to be shared (rows.small_call) on as many threads as the engine has, up to B // MIN_ROWS."""
    B, T, I, H = 40, 16, 16, 128
    p = make_problem(rng, cell, B, T, I, H, dtype, scale=H**-0.5)
    lengths = rng.integers(T // 4, T + 1, B)
    mask = (np.arange(T)[None, :] < lengths[:, None]) & (rng.random((B, T)) > 0.1)
    G = 4 if cell == "lstm" else 3
    sizes = (np.arange(T)[:, None] < lengths[None, :]).sum(axis=1)
    assert rows.threads_for(B, H, G * H, sizes) == min(B // rows.MIN_ROWS, numba.get_num_threads())
    for kw in (dict(lengths=lengths), dict(mask=mask)):
        op, _, _, extra = cell_fns(cell)
        got = op(p["x"], p["kernel"], p["recurrent_kernel"], p["bias"], **kw, **extra)
        for g, want in zip(got, _reference(cell, p, **kw)):
            assert rel_err(g, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_run_the_native_product_when_the_extension_has_it(rng, monkeypatch, cell):
    """Fails if the kernels silently fall back to np.dot while the extension provides the native product."""
    try:
        from maskrnn import _ext
    except ImportError:
        pytest.skip("no native extension")
    if not hasattr(_ext, "cpu_gemm_addresses") or gemm.addresses("auto")["level"] == "":
        pytest.skip("this extension has no native product")
    monkeypatch.setattr(gemm, "_native", gemm.addresses("auto"))
    made = []
    operand = gemm.operand
    monkeypatch.setattr(gemm, "operand", lambda b: made.append(operand(b)) or made[-1])
    B, T, I, H = 32, 6, 4, 64
    p = make_problem(rng, cell, B, T, I, H, "float32")
    _run(cell, p, random_upstream(rng, cell, B, T, H, "float32"), lengths=rng.integers(1, T + 1, B))
    assert made and all(address != 0 and panels.size for address, panels, _ in made if panels.shape[1])
    assert rows.threads_for(B, H, 4 * H) == min(2, numba.get_num_threads())


def test_weights_are_packed_once_per_call_and_forgotten_after_it(rng, monkeypatch):
    """Inference runs the kernels (and the projection's GEMM) on chunks of a few steps: one packing of each
    weight matrix per call. The caller may change the
    weights in place between calls: the next call sees the new ones."""
    monkeypatch.setattr(gemm, "_native", gemm.addresses("auto"))
    if not gemm.level():
        pytest.skip("no native product")
    packed = []
    pack = gemm.pack
    monkeypatch.setattr(gemm, "pack", lambda b, where=None: packed.append(b.shape) or pack(b, where))
    B, T, I, H = 16, 40, 8, 32
    p = make_problem(rng, "lstm", B, T, I, H, "float64")
    args = [p["x"], p["kernel"], p["recurrent_kernel"], p["bias"]]
    lengths = rng.integers(1, T + 1, B)
    monkeypatch.setattr(maskrnn._scan, "CHUNK_WORK", 1)  # one step per chunk
    for _ in range(2):
        packed.clear()
        got = maskrnn.lstm(*args, lengths=lengths)
        assert (H, 4 * H) in packed and len(packed) == len(set(packed)), packed  # U (and W[+b]) once
        for g, want in zip(got, _reference("lstm", p, lengths=lengths)):
            assert rel_err(g, want) < TOLERANCE["float64"]
        args[2] *= 0.5  # in place: the caller's recurrent kernel
        assert p["recurrent_kernel"] is args[2]


def test_small_calls_keep_one_thread():
    """A call whose step products sum to less than MIN_CALL_WORK multiply-adds runs on one thread (handing it to a
    second one costs more than it saves), whatever its steps' size; the same batch over more steps is shared."""
    B, H, GH = 32, 128, 512  # each step's product is big enough to share (rows.MIN_STEP_WORK)
    assert B * H * GH >= rows.MIN_STEP_WORK
    one_step = np.array([B], np.int32)
    assert rows.small_call(one_step, H, GH) and rows.threads_for(B, H, GH, one_step) == 1
    many = np.full(-(-rows.MIN_CALL_WORK // (B * H * GH)), B, np.int32)
    assert not rows.small_call(many, H, GH)
    assert rows.threads_for(B, H, GH, many) == rows.threads_for(B, H, GH) == min(B // rows.MIN_ROWS,
                                                                                 numba.get_num_threads())
    assert not rows.small_call(None, H, GH)
