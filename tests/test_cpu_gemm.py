"""The CPU engine's native per-step product (csrc/cpu_gemm.cpp through maskrnn/_cpu/gemm.py) against a float64
product, at every instruction-set level this machine runs: row counts around the register tile (1..9, 17, 64),
sizes that are not multiples of the vector width or panel, strided rows, the transposed weights the backward
packs, and nothing written outside the result."""

import numpy as np
import pytest
from conftest import GEMM_LEVELS, TOLERANCE, gemm_level

from maskrnn._cpu import gemm


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("level", GEMM_LEVELS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64])
def test_native_product_matches_float64(rng, level, dtype, m):
    where = gemm_level(level)
    fn = gemm.gemm_function(dtype, where)
    for k, n, transposed in [(37, 75, False), (130, 33, True), (5, 3, False), (256, 1024, False), (1, 40, True)]:
        b = rng.standard_normal((n, k) if transposed else (k, n)).astype(dtype)
        b = b.T if transposed else b
        panels = gemm.pack(b, where)
        lda, ldc = k + 3, n + 5
        a_buf = rng.standard_normal((m, lda)).astype(dtype)
        c_buf = np.full((m + 1, ldc), np.nan, dtype)  # one row and the columns past n: must stay untouched
        fn(m, k, n, a_buf.ctypes.data, lda, panels.ctypes.data, c_buf.ctypes.data, ldc)
        want = a_buf[:, :k].astype(np.float64) @ b.astype(np.float64)
        got = c_buf[:m, :n]
        assert np.all(np.isfinite(got)), (k, n)
        assert np.max(np.abs(got - want)) <= TOLERANCE[dtype] * np.max(np.abs(a_buf[:, :k])) * np.abs(b).sum(0).max()
        assert np.isnan(c_buf[:m, n:]).all() and np.isnan(c_buf[m]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packing_zero_pads_the_last_panel(rng, dtype):
    where = gemm_level("portable")
    b = rng.standard_normal((7, 45)).astype(dtype)
    panels = gemm.pack(b, where)
    W = gemm.PANEL_BYTES // b.itemsize
    assert panels.shape == (-(-45 // W), 7, W)
    np.testing.assert_array_equal(panels.transpose(1, 0, 2).reshape(7, -1)[:, :45], b)
    assert not panels.transpose(1, 0, 2).reshape(7, -1)[:, 45:].any()


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="MASKRNN_CPU_GEMM"):
        gemm.addresses("sse9")


def test_auto_level_is_the_best_listed_one():
    """auto picks the first of avx512, avx2, portable that runs here."""
    auto = gemm.addresses("auto")["level"]
    if not auto:
        pytest.skip("no native extension")
    assert auto == next(name for name in GEMM_LEVELS if gemm.addresses(name)["level"])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_step_product_in_row_blocks_matches_float64(rng, monkeypatch, dtype, threads):
    """blas.matmul's native path gives the product a's rows a block at a time (A_BLOCK_BYTES): blocks of 8 and
    16 rows with rows left over, fewer rows than a block, one row and none, rows split over 1-3 threads, strided
    rows and a result with a row stride; nothing written outside the result."""
    import numba

    from maskrnn._cpu import blas

    monkeypatch.setattr(gemm, "_native", gemm.addresses("auto"))
    if not gemm.level():
        pytest.skip("no native product")
    monkeypatch.setattr(blas, "MIN_SPLIT_WORK", 0)
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    for m, k, n, rows_per_block in [(45, 33, 70, 8), (130, 17, 40, 16), (5, 9, 33, 8), (1, 4, 3, 8), (0, 6, 5, 8),
                                    (77, 129, 20, 1)]:
        monkeypatch.setattr(blas, "A_BLOCK_BYTES", rows_per_block * k * np.dtype(dtype).itemsize)
        a = rng.standard_normal((m, k + 3)).astype(dtype)[:, 1 : 1 + k]
        b = rng.standard_normal((k, n)).astype(dtype)
        out = np.full((m + 1, n + 4), np.nan, dtype)
        got = blas.matmul(a, b, out[:m, :n])
        want = a.astype(np.float64) @ b.astype(np.float64)
        assert got.shape == (m, n) and np.shares_memory(got, out) or m == 0
        assert np.all(np.abs(got - want) <= TOLERANCE[dtype] * (np.abs(a).astype(np.float64) @ np.abs(b) + 1))
        assert np.isnan(out[:m, n:]).all() and np.isnan(out[m]).all()
