"""The backward's weight-gradient product (csrc/cpu_gemm_kernel.h gemm_tn through maskrnn/_cpu/blas.py gram):
sum over selected rows of A^T D against a float64 product at every instruction-set level: row counts 0, 1, odd,
fewer than the threads, more than a row block; result heights around the register tile; widths that are not
multiples of the panel; strided rows and column slices; selected rows in any order; columns split over 1-3
threads; nothing written outside the result; and a check that the LSTM and GRU backward use it whenever the
extension provides it."""

import numba
import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream
from conftest import GEMM_LEVELS, TOLERANCE, gemm_level

import maskrnn
from maskrnn._cpu import blas, gemm


def _close(got, a, d, idx, dtype):
    a, d = (v.astype(np.float64) if idx is None else v[idx].astype(np.float64) for v in (a, d))
    want = a.T @ d
    assert got.shape == want.shape and np.all(np.isfinite(got))
    bound = np.abs(a).T @ np.abs(d)
    assert np.all(np.abs(got - want) <= TOLERANCE[dtype] * (bound + 1)), np.max(np.abs(got - want) - bound)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("level", GEMM_LEVELS)
@pytest.mark.parametrize("m", [1, 3, 7, 8, 9, 17, 40])
def test_native_gram_matches_float64(rng, level, dtype, m):
    fn = gemm.gemm_tn_function(dtype, gemm_level(level))
    for rows, n, select in [(0, 33, False), (1, 32, False), (5, 7, True), (257, 75, False), (300, 64, True),
                            (530, 16, True)]:
        N = rows + 11
        m1 = int(rng.integers(m + 1))  # A's columns from two arrays: m1 from the first, m - m1 from the second
        lda, lda2, ldd, ldc = m1 + 3, m - m1 + 1, n + 5, n + 2
        a_buf, a2_buf = (rng.standard_normal((N, ld)).astype(dtype) for ld in (lda, lda2))
        d_buf = rng.standard_normal((N, ldd)).astype(dtype)
        idx = rng.permutation(N)[:rows].astype(np.int64) if select else None
        count = rows if select else N
        c_buf = np.full((m + 1, ldc), np.nan, dtype)  # one row and the columns past n: must stay untouched
        fn(count, m1, m - m1, n, 0 if idx is None else idx.ctypes.data, a_buf.ctypes.data + a_buf.itemsize, lda,
           a2_buf.ctypes.data, lda2, d_buf.ctypes.data + 2 * d_buf.itemsize, ldd, c_buf.ctypes.data, ldc)
        a = np.concatenate([a_buf[:, 1 : 1 + m1], a2_buf[:, : m - m1]], axis=1)
        _close(c_buf[:m, :n], a, d_buf[:, 2 : 2 + n], idx, dtype)
        assert np.isnan(c_buf[:m, n:]).all() and np.isnan(c_buf[m]).all()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("level", ["auto", "portable"])
def test_gram_split_over_threads_matches_float64(rng, monkeypatch, level, dtype, threads):
    """Rows split across threads, each summing its own result (uneven shares, fewer rows than threads), strided
    views, a second left-hand array, selected rows; the split itself forced at small sizes."""
    monkeypatch.setattr(gemm, "_native", gemm_level(level))
    monkeypatch.setattr(blas, "MIN_SPLIT_WORK", 0)
    monkeypatch.setattr(blas, "GRAM_ROWS", 1)
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    for N, m, n, k in [(0, 5, 40, 0), (2, 9, 100, 2), (401, 33, 129, 250), (64, 12, 3, 64), (1, 1, 1, 1)]:
        a = rng.standard_normal((N, m + 4)).astype(dtype)[:, 2 : 2 + m]
        d = rng.standard_normal((N, 2 * n)).astype(dtype)[:, n:]
        a2 = rng.standard_normal((N, 7)).astype(dtype)
        for idx in (None, np.sort(rng.choice(N, k, replace=False)).astype(np.int64)):
            _close(blas.gram(a, d, idx), a, d, idx, dtype)
            _close(blas.gram(a, d, idx, a2), np.concatenate([a, a2], axis=1), d, idx, dtype)


def test_gram_refuses_what_it_cannot_read(rng, monkeypatch):
    """None (the caller gathers and uses OpenBLAS) for column-strided views, mixed dtypes, or no native code."""
    monkeypatch.setattr(gemm, "_native", gemm.addresses("auto"))
    if not gemm.level():
        pytest.skip("no native product")
    a, d = rng.standard_normal((10, 6)), rng.standard_normal((10, 8))
    assert blas.gram(a, d) is not None
    assert blas.gram(a[:, ::2], d) is None and blas.gram(a, d.astype(np.float32)) is None
    monkeypatch.setattr(gemm, "_native", gemm.addresses("off"))
    assert blas.gram(a, d) is None and not blas.gram_runs(a.dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_gradients_run_the_native_gram_when_the_extension_has_it(rng, monkeypatch, cell):
    """Fails if the backward's weight gradients silently go to OpenBLAS while the native product is there: every
    weight gradient comes from gram, and no GEMM takes a transposed left operand (PyTorch's GEMM switched off:
    with PyTorch loaded it takes these products instead, test_torch_gemm_takes_the_all_step_products)."""
    monkeypatch.setattr(blas, "TORCH_GEMM", False)
    monkeypatch.setattr(gemm, "_native", gemm.addresses("auto"))
    if not gemm.level():
        pytest.skip("no native product")
    made, transposed = [], []
    gram, matmul = blas.gram, maskrnn._cpu.matmul

    def spy(a, d, idx=None, a2=None):
        g = gram(a, d, idx, a2)
        made.extend([a.shape, getattr(a2, "shape", None)] if g is not None else ["refused"])
        return g

    monkeypatch.setattr(maskrnn._cpu, "gram", spy)
    monkeypatch.setattr(maskrnn._cpu, "matmul",
                        lambda a, b, out=None: transposed.append(not a.flags.c_contiguous) or matmul(a, b, out))
    B, T, I, H = 32, 7, 5, 16
    p = make_problem(rng, cell, B, T, I, H, "float32")
    _, vjp, _, extra = cell_fns(cell)
    q = dict(p)
    lengths = rng.integers(1, T + 1, B)
    _, pullback = vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q,
                      lengths=lengths, **extra)
    pullback(*random_upstream(rng, cell, B, T, H, "float32"))
    assert (B * T, I + 1) in made and (B * T, H) in made and "refused" not in made, made
    assert not any(transposed)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, T, kind", [(1, 1, "post"), (5, 1, "holes"), (1, 40, "post"), (16, 23, "post"),
                                        (16, 23, "holes"), (9, 7, "all_masked_row"), (6, 5, "empty"),
                                        (64, 30, "post")])
def test_torch_gemm_takes_the_all_step_products(rng, monkeypatch, cell, B, T, kind):
    """With PyTorch loaded, the projection and every gradient GEMM run on torch.mm (no native gram), and every
    result agrees with the native product's at float32 rounding, and with the float64 run; read-only weights
    fall back to the native product without a warning."""
    torch = pytest.importorskip("torch")
    import warnings

    from conftest import make_mask

    I, H = 5, 16
    p = make_problem(rng, cell, B, T, I, H, "float32", initial_state=True)
    if kind == "all_masked_row":
        mask = make_mask(rng, "holes", B, T)
        mask[2] = False
    elif kind == "empty":
        mask = np.zeros((B, T), bool)
    else:
        mask = make_mask(rng, kind, B, T)
    ups = random_upstream(rng, cell, B, T, H, "float32")
    _, vjp, _, extra = cell_fns(cell)

    def run(torch_gemm, q):
        monkeypatch.setattr(blas, "TORCH_GEMM", torch_gemm)
        q = dict(q)
        outs, pullback = vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, mask=mask,
                             **extra)
        return [np.asarray(o, np.float64) for o in outs] + [np.asarray(g, np.float64) for g in
                                                            pullback(*ups) if g is not None]

    calls, mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(a[0].shape) or mm(*a, **k))
    monkeypatch.setattr(maskrnn._cpu, "gram", lambda *a, **k: pytest.fail("gram ran beside torch's GEMM"))
    on = run(True, p)
    if mask.any():  # the projection ([x | 1] W[; b]) and the gradient of W[; b] (its left operand transposed)
        assert any(s[1] == I + 1 for s in calls) and any(s[0] in (I + 1, I + 1 + H) for s in calls), calls
    monkeypatch.undo()
    off = run(False, p)
    wide = run(False, {k: (tuple(s.astype(np.float64) for s in v) if isinstance(v, tuple) else v.astype(np.float64))
                       for k, v in p.items()})
    for a, b, c in zip(on, off, wide):
        scale = np.max(np.abs(c)) + 1
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)
        np.testing.assert_allclose(a, c, rtol=0, atol=2e-5 * scale)
    frozen = dict(p)
    frozen["kernel"] = p["kernel"].copy()
    frozen["kernel"].flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_only = run(True, frozen)
    for a, b in zip(read_only, off):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * (np.max(np.abs(b)) + 1))
