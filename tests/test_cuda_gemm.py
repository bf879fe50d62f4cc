"""The GPU engine's GEMM (maskrnn._cuda.matmul: one cublasGemmEx call on operands read in place, else
cupy.matmul) against a float64 product, in every layout the drivers hand it (C order, transposed, row and column
slices, vectors) and in each dtype. On the emulation (``-p plugin``) its cuBLAS calls run on
tests/cuda_emulation/cublas_host.py, cuBLAS's column-major contract on host memory; on a GPU on cuBLAS itself
("cuda" in the names: gpu_verify.sh selects the GPU cases with -k cuda). Skipped otherwise."""

import sys

import numpy as np
import pytest
from conftest import to_host

from maskrnn import _cuda


def _calls():
    """The emulated cuBLAS's call log (None on a GPU)."""
    return sys.modules["cublas_host"].calls if "cublas_host" in sys.modules else None


def _layout(xp, m, how, rng):
    """m (r,c) on xp's device in a layout the drivers use: "c" C order, "t" a transposed C-order array, "rows" a
    row slice of a wider array (row stride > c), "cols" a column slice (a transposed one's: column stride > r)."""
    r, c = m.shape
    if how == "c":
        return xp.asarray(m)
    if how == "t":
        return xp.asarray(np.ascontiguousarray(m.T)).T
    if how == "rows":
        wide = rng.standard_normal((r, c + 3)).astype(m.dtype)
        wide[:, 1 : c + 1] = m
        return xp.asarray(wide)[:, 1 : c + 1]
    tall = rng.standard_normal((c, r + 5)).astype(m.dtype)
    tall[:, 2 : r + 2] = m.T
    return xp.asarray(tall)[:, 2 : r + 2].T


LAYOUTS = ["c", "t", "rows", "cols"]


@pytest.mark.parametrize("M,K,N", [(7, 5, 3), (1, 9, 4), (6, 1, 5), (8, 3, 1), (1, 1, 1), (33, 70, 129)])
@pytest.mark.parametrize("a_how", LAYOUTS)
@pytest.mark.parametrize("b_how", LAYOUTS)
def test_cuda_gemm_reads_every_layout_in_place(xp, rng, M, K, N, a_how, b_how):
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    calls = _calls()
    before = None if calls is None else len(calls)
    got = _cuda.matmul(_layout(xp, a, a_how, rng), _layout(xp, b, b_how, rng))
    np.testing.assert_allclose(to_host(got), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    if calls is not None:
        assert len(calls) == before + 1, "the product did not go to cuBLAS"


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 1e-1)])
def test_cuda_gemm_into_a_row_slice_of_out(xp, rng, dtype, tol):
    """out= a view whose rows are wider apart than N (a block of the projection), in each dtype; the columns
    around it are untouched."""
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    a = rng.standard_normal((12, 20)).astype(dtype)
    b = rng.standard_normal((20, 9)).astype(dtype)
    host = rng.standard_normal((12, 15)).astype(dtype)
    whole = xp.asarray(host)
    res = _cuda.matmul(xp.asarray(a), xp.asarray(b), out=whole[:, 4:13])
    got = to_host(whole)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got[:, 4:13].astype(np.float64), want, rtol=tol, atol=tol * 4)
    np.testing.assert_array_equal(got[:, :4], host[:, :4])
    np.testing.assert_array_equal(got[:, 13:], host[:, 13:])
    assert res.shape == (12, 9)


@pytest.mark.parametrize("case", ["strided", "empty", "3-D", "dtypes", "out-transposed"])
def test_cuda_gemm_falls_back_to_cupy_matmul(xp, rng, case):
    """Layouts cuBLAS cannot read in place, empty products and mixed dtypes: cupy.matmul's result (NumPy's on
    the emulation), and no cuBLAS call of maskrnn's own."""
    a = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal((8, 5)).astype(np.float32)
    out = None
    if case == "strided":
        a2, b2 = xp.asarray(np.repeat(a, 2, axis=1))[:, ::2], xp.asarray(b)
    elif case == "empty":
        a, b = a[:, :0], b[:0]
        a2, b2 = xp.asarray(a), xp.asarray(b)
    elif case == "3-D":
        a = np.stack([a, a[::-1]])
        a2, b2 = xp.asarray(a), xp.asarray(b)
    elif case == "dtypes":
        b = b.astype(np.float64)
        a2, b2 = xp.asarray(a), xp.asarray(b)
    else:
        a2, b2 = xp.asarray(a), xp.asarray(b)
        out = xp.zeros((5, 6), np.float32).T
    calls = _calls()
    before = None if calls is None else len(calls)
    got = _cuda.matmul(a2, b2, out=out) if out is not None else _cuda.matmul(a2, b2)
    np.testing.assert_allclose(to_host(got), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    if calls is not None:
        assert len(calls) == before
