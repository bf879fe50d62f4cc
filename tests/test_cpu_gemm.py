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
