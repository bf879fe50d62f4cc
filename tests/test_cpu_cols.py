"""The CPU engine's unit split for small batches (maskrnn/_cpu/cols.py): inference outputs and final states
against the float64 reference on 2-3 threads with uneven blocks of units, every mask kind, go_backwards, initial
states, zero_output_for_mask, float32 and float64, sequences crossing several kernel calls; the training forward
and backward against the reference and its finite differences; and that a small batch with large steps does take
the split, in inference and in training."""

import numpy as np
import pytest
from cells import make_problem, random_upstream, results_with_transposed_weights
from conftest import TOLERANCE, make_mask, rel_err
from test_cpu_infer import _check
from test_cpu_rows import _reference, _run
from test_grad import finite_difference

from maskrnn import _cpu, _dispatch, _scan
from maskrnn._cpu import blas, cols, gemm, rows

pytestmark = [
    pytest.mark.skipif(_dispatch._engine("cpu")[1] is not _cpu,
                       reason="another engine runs device 'cpu' (CUDA emulation)"),
    pytest.mark.skipif(not gemm.level(), reason="the unit split runs on the native product only"),
]


def _where(name, a):
    """(steps, first unit) of a kernel call's arguments."""
    if name in ("_lstm_steps", "_gru_steps"):
        return (a[5], a[6]), a[8]
    return len(a[0]), a[8 if name == "_lstm_fwd" else 12]


@pytest.fixture
def split(monkeypatch):
    """Records (kernel, t0, t1, first unit) of every unit-split kernel call."""
    seen = []
    for name in ("_lstm_steps", "_gru_steps", "_lstm_fwd", "_lstm_bwd"):
        kernel = getattr(cols, name)
        monkeypatch.setattr(cols, name, lambda *a, k=kernel, n=name: (seen.append((n, *_where(n, a))), k(*a))[1])
    return seen


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unit_split_matches_reference(rng, monkeypatch, split, cell, mask_kind, threads):
    """H = 40 units: blocks of 32 + 8 (float32) or 24 + 16 (float64) on 2 threads, 16 + 16 + 8 on 3."""
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: threads)
    monkeypatch.setattr(_scan, "MAX_CHUNK_STEPS", 4)  # 9 steps: three kernel calls, states carried across
    B = int(rng.integers(1, 6))
    T, I, H = 9, 5, 40
    dtype = ["float64", "float32"][int(rng.integers(2))]
    p = make_problem(rng, cell, B, T, I, H, dtype, bias=bool(rng.integers(2)), initial_state=bool(rng.integers(2)))
    kw = dict(zero_output_for_mask=bool(rng.integers(2)), go_backwards=bool(rng.integers(2)))
    mask = make_mask(rng, mask_kind, B, T)
    _check(cell, p, dtype, mask=mask, **kw)
    blocks = cols.units(H, threads, dtype)
    assert sorted(split) == sorted((f"_{cell}_steps", t, j0) for t in [(0, 4), (4, 8), (8, 9)] for j0, _ in blocks)


def test_gru_without_reset_after_keeps_one_thread(rng, monkeypatch, split):
    """Its candidate's product (r * h_{t-1}) U_h needs every unit's r: no unit split (and still right)."""
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: 2)
    p = make_problem(rng, "gru_v1", 3, 5, 4, 40, "float64", initial_state=True)
    _check("gru_v1", p, "float64", mask=make_mask(rng, "holes", 3, 5))
    assert not split


@pytest.mark.parametrize("shape", [(1, 1, 2, 40), (2, 3, 1, 40)])
def test_unit_split_edge_shapes(rng, monkeypatch, split, shape):
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: 2)
    B, T, I, H = shape
    for cell, dtype in (("lstm", "float32"), ("gru", "float64")):
        p = make_problem(rng, cell, B, T, I, H, dtype, initial_state=True)
        for mask_kind in ("post", "holes"):
            _check(cell, p, dtype, mask=make_mask(rng, mask_kind, B, T), zero_output_for_mask=True)
    assert split


def test_units_cover_every_unit_in_whole_vectors():
    for H in (1, 16, 40, 129, 512):
        for n in (1, 2, 3):
            for dtype, v in (("float32", 16), ("float64", 8)):
                blocks = cols.units(H, n, dtype)
                assert len(blocks) == n and blocks[0][0] == 0 and blocks[-1][1] == H
                assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
                assert all((j0 % v == 0 or j0 == H) and j0 <= j1 for j0, j1 in blocks)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_small_batch_takes_the_unit_split(rng, monkeypatch, split, cell):
    """(4, 20, 256, 512) on two threads: the rows cannot split (4 < 2 rows.MIN_ROWS), the units do; a silent
    fall back to one thread fails here."""
    monkeypatch.setattr(cols.numba, "get_num_threads", lambda: 2)
    B, T, I, H = 4, 20, 256, 512
    assert rows.threads_for(B, I + H, 4 * H) == 1 and cols.threads_for(B, H, 4 * H) == 2
    p = make_problem(rng, cell, B, T, I, H, "float32", scale=H**-0.5)
    _check(cell, p, "float32", mask=make_mask(rng, "post_holes", B, T))
    assert {c[0] for c in split} == {f"_{cell}_steps"} and {c[2] for c in split} == {0, 256}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes", "post_holes"])
def test_unit_split_training_matches_reference(rng, monkeypatch, split, mask_kind, threads):
    """Float64 outputs against the reference and gradients against its finite differences; forward and backward in three
    kernel calls each way (states and carried output gradients crossing them)."""
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: threads)
    monkeypatch.setattr(_scan, "MAX_CHUNK_STEPS", 4)
    B, T, I, H = int(rng.integers(1, 6)), 9, 5, 40
    p = make_problem(rng, "lstm", B, T, I, H, "float64", initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T), zero_output_for_mask=bool(rng.integers(2)),
              go_backwards=bool(rng.integers(2)))
    upstream = random_upstream(rng, "lstm", B, T, H)
    outs, grads = _run("lstm", p, upstream, **kw)
    for got, want in zip(outs, _reference("lstm", p, **kw)):
        assert rel_err(got, want) < TOLERANCE["float64"]
    for name in ("kernel", "recurrent_kernel", "bias", "x", "h0", "c0"):
        g = getattr(grads, name)
        for _ in range(3):
            index = tuple(int(rng.integers(s)) for s in g.shape)
            fd = finite_difference("lstm", p, upstream, name, index, **kw)
            assert abs(g[index] - fd) <= 1e-6 * max(1.0, abs(fd)), (name, index, g[index], fd)
    blocks = [j0 for j0, _ in cols.units(H, threads, "float64")]
    assert sorted(split) == sorted((k, t, j0) for k, ts in (("_lstm_fwd", [4, 4, 1]), ("_lstm_bwd", [4, 4, 1]))
                                   for t in ts for j0 in blocks)


def test_small_batch_trains_on_the_unit_split(rng, monkeypatch, split):
    """Float32 at (3, 64, 64, 256) on two threads: gradients as the one-thread kernels' (tested against finite
    differences in test_cpu_rows.py), and the split kernels ran."""
    monkeypatch.setattr(cols.numba, "get_num_threads", lambda: 2)
    B, T, I, H = 3, 64, 64, 256
    p = make_problem(rng, "lstm", B, T, I, H, "float32", initial_state=True, scale=H**-0.5)
    kw = dict(mask=make_mask(rng, "holes", B, T))
    last = T - np.argmax(kw["mask"][:, ::-1], axis=1) * kw["mask"].any(axis=1)  # rows with steps left, per step
    assert cols.threads_for(B, H, 4 * H, (np.arange(T)[:, None] < last[None, :]).sum(axis=1)) == 2
    upstream = random_upstream(rng, "lstm", B, T, H, "float32")
    outs, grads = _run("lstm", p, upstream, **kw)
    assert {c[0] for c in split} == {"_lstm_fwd", "_lstm_bwd"}
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: 1)
    outs1, grads1 = _run("lstm", p, upstream, **kw)
    for got, want in zip(outs, outs1):
        assert rel_err(got, want) < TOLERANCE["float32"]
    for name in ("kernel", "recurrent_kernel", "bias", "x", "h0", "c0"):
        assert rel_err(getattr(grads, name), getattr(grads1, name)) < TOLERANCE["float32"], name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weight_gradients_of_few_rows_split_the_columns(rng, monkeypatch, dtype):
    """blas.gram on fewer rows than two threads' blocks: the columns split (2 and 3 threads, a last block of a
    partial panel), rows gathered by idx or all, with and without a second left operand; against float64 NumPy."""
    taken = []
    columns = blas._gram_columns
    monkeypatch.setattr(blas, "_gram_columns", lambda *a: (taken.append(a[-1]), columns(*a))[1])
    monkeypatch.setattr(blas, "MIN_SPLIT_WORK", 0)
    N, m1, m2, n = 40, 7, 5, 75
    a, a2, d = (rng.standard_normal((N, k)).astype(dtype) for k in (m1, m2, n + 3))
    d = d[:, 2 : n + 2]  # a column slice: its rows' stride is not n
    idx = rng.choice(N, 25, replace=False)
    for threads in (2, 3):
        monkeypatch.setattr(blas.numba, "get_num_threads", lambda t=threads: t)
        for rows_, second in ((None, None), (idx, a2)):
            got = blas.gram(a, d, rows_, second)
            sel = slice(None) if rows_ is None else rows_
            left = a[sel] if second is None else np.concatenate([a[sel], second[sel]], axis=1)
            want = left.astype(np.float64).T @ d[sel].astype(np.float64)
            assert got.shape == want.shape and rel_err(got, want) < TOLERANCE[dtype]
    assert [len(c) for c in taken] == [2, 2, 3, 3] and taken[-1][-1][1] == n


def test_small_calls_keep_one_thread(monkeypatch):
    """A small batch's unit split needs a barrier per step: a call too small to share (rows.small_call) runs on
    one thread however large its steps."""
    monkeypatch.setattr(cols.numba, "get_num_threads", lambda: 2)
    B, H = 4, 512
    assert cols.threads_for(B, H, 4 * H) == 2
    assert cols.threads_for(B, H, 4 * H, np.array([B, B], np.int32)) == 1  # two steps
    assert cols.threads_for(B, H, 4 * H, np.full(20, B, np.int32)) == 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gate_columns_packed_in_place_as_from_their_copy(rng, dtype):
    """gemm.operand_columns: the panels of a thread's gate columns packed straight from the weights (C order,
    transposed, strided) are those of their concatenated copy; spans that are not whole panels take the copy."""
    H, G = 96, 4
    W = 128 // np.dtype(dtype).itemsize
    base = rng.standard_normal((2 * G * H, 70)).astype(dtype)
    for a in (np.ascontiguousarray(base[: G * H].T), base[: G * H].T, base[::2].T):
        for j0, j1 in ((0, W), (W, 3 * W), (1, 1 + W)):
            spans = cols.gate_spans(H, G, j0, j1)
            got = gemm.operand_columns(a, spans)
            want = gemm.operand(cols.gate_columns(a, H, G, j0, j1))
            assert got[0] == want[0] and got[1].shape == want[1].shape
            np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unit_split_takes_transposed_weights(rng, monkeypatch, split, cell):
    """H = 64 on two threads: blocks of whole panels, packed from the weights in place; transposed weights
    (torch.nn's in Keras's layout) give the outputs, final states and gradients of C-order ones bit for bit."""
    monkeypatch.setattr(cols, "threads_for", lambda B, H, GH, sizes=None: 2)
    p = make_problem(rng, cell, 3, 7, 5, 64, "float32", initial_state=True)
    for a, b in zip(*results_with_transposed_weights(cell, p, mask=make_mask(rng, "holes", 3, 7))):
        np.testing.assert_array_equal(a, b)
    assert {c[0] for c in split} >= {f"_{cell}_steps"}
