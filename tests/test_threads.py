"""The CPU engine's threaded paths (maskrnn/_cpu/threads.py): scans split into row blocks and GEMMs split over
threads, forced on at small shapes where the split is uneven (B=1, B=3 over 2 threads, all-masked rows, T=1,
long T), against the float64 reference (forward) and finite differences of it (gradients)."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream
from conftest import TOLERANCE, make_mask, rel_err
from test_grad import ARGS, finite_difference, grads

from maskrnn._cpu import blas, threads


@pytest.fixture
def split(monkeypatch):
    """Every scan and GEMM split, over the number of threads the test sets."""
    monkeypatch.setattr(threads, "MIN_SCAN_WORK", 0)
    monkeypatch.setattr(threads, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(blas, "SPLIT_WORK", 0)

    def to(n):
        monkeypatch.setenv("MASKRNN_NUM_THREADS", str(n))

    return to


def _reference(cell, p, **kw):
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    return ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)


def test_row_blocks_balance_the_work_and_cover_every_row(monkeypatch):
    monkeypatch.setenv("MASKRNN_NUM_THREADS", "2")
    sizes = np.array([64] * 25 + [40] * 50 + [10] * 25, np.int32)  # longest rows first, as the plans sort them
    blocks = threads.row_blocks(sizes, 64, 1 << 16)
    assert blocks[0][0] == 0 and blocks[-1][1] == 64 and len(blocks) == 2
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    steps = (sizes[:, None] > np.arange(64)).sum(0)
    work = [steps[r0:r1].sum() for r0, r1 in blocks]
    assert max(work) - min(work) <= steps.max()
    assert threads.row_blocks(sizes, 64, 1) == [(0, 64)]  # too little work to split
    monkeypatch.setenv("MASKRNN_NUM_THREADS", "1")
    assert threads.row_blocks(sizes, 64, 1 << 16) == [(0, 64)]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_count_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("MASKRNN_NUM_THREADS", value)
    with pytest.raises(ValueError, match="MASKRNN_NUM_THREADS"):
        threads.num_threads()


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("mask_kind", ["post", "holes", "post_holes"])
@pytest.mark.parametrize("shape", [(1, 6), (3, 7), (5, 1), (4, 300)])  # (B, T)
@pytest.mark.parametrize("cell", CELLS)
def test_split_forward_matches_reference(rng, split, cell, shape, mask_kind, n_threads):
    split(n_threads)
    B, T = shape
    p = make_problem(rng, cell, B, T, 3, 4, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    op, _, _, extra = cell_fns(cell)
    q = dict(p)
    got = op(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, mask=mask, **extra)
    for g, w in zip(got, _reference(cell, p, mask=mask)):
        assert rel_err(g, w) < TOLERANCE["float64"]


@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("shape", [(1, 4), (3, 5), (3, 1)])
@pytest.mark.parametrize("cell", CELLS)
def test_split_gradients_match_finite_differences(rng, split, cell, shape, mask_kind):
    split(2)
    B, T = shape
    I, H = 2, 3
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T))
    upstream = random_upstream(rng, cell, B, T, H)
    _, g = grads("cpu", cell, p, upstream, **kw)
    for name in ARGS + (["h0", "c0"] if cell == "lstm" else ["h0"]):
        shape_ = (B, H) if name in ("h0", "c0") else p[name].shape
        fd = np.zeros(shape_)
        for index in np.ndindex(*shape_):
            fd[index] = finite_difference(cell, p, upstream, name, index, **kw)
        np.testing.assert_allclose(g[name], fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_split_long_scan_gradients_equal_one_thread(rng, split, monkeypatch, cell):
    """A long scan with chunks, an all-masked row and the weight-gradient GEMMs split by their summed
    dimension: the same gradients as one thread."""
    B, T, I, H = 5, 400, 3, 4
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, "post_holes", B, T)
    upstream = random_upstream(rng, cell, B, T, H)
    split(1)
    one = grads("cpu", cell, p, upstream, mask=mask)
    split(2)
    two = grads("cpu", cell, p, upstream, mask=mask)
    for a, b in zip(one[0], two[0]):
        assert rel_err(b, a) < TOLERANCE["float64"]
    for k in one[1]:
        assert rel_err(two[1][k], one[1][k]) < TOLERANCE["float64"], k


def test_split_matmul_equals_numpy(rng, split):
    split(3)
    a = rng.standard_normal((70, 50))
    b = rng.standard_normal((50, 20))
    with blas.session():
        for x, y in [(a, b), (a.T.copy().T, b), (rng.standard_normal((50, 70)).T, rng.standard_normal((50, 20)))]:
            np.testing.assert_allclose(blas.matmul(x, y), x @ y, rtol=1e-12, atol=1e-12)
        out = np.empty((70, 20))
        assert blas.matmul(a, b, out=out) is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
