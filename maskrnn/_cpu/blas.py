"""The CPU engine's GEMMs and its BLAS thread pool.

The GEMMs go through the same BLAS as the per-step products inside the kernels (Numba calls SciPy's OpenBLAS,
NumPy ships another): alternating two OpenBLAS thread pools made each one spin on the cores the other needed,
and measured 2-3x slower end to end. For the same reason ``session`` stops that pool's threads when the last
maskrnn call returns: idle OpenBLAS threads busy-wait for about 0.1 s, taking the cores from the PyTorch (or
any other) work that runs next (dense torch LSTM: 54-98 ms right after a maskrnn call, 26 ms after a pause).
The next call starts them again (a thread start, microseconds).
"""

import ctypes
import threading
from contextlib import contextmanager

import numba
import numpy as np

from . import gemm, rows
from .cache import njit
from .cells import JIT


@njit(**JIT)
def _dot(a, b):
    return np.dot(a, b)


@njit(**JIT)
def _dot_into(a, b, out):
    np.dot(a, b, out)


def _native(a, b, out):
    """a @ b on gemm.py's native product, its rows split in blocks across the engine's threads (each a
    GIL-free ctypes call), for a whose rows are contiguous (the projection, the input gradient); None where it
    does not apply. OpenBLAS here idled its threads spinning between the chunks' kernel calls, on the core the
    kernels' second thread needed: inference at (64,100,128,256) took 74 ms instead of 40."""
    fn = gemm.gemm_function(a.dtype) if a.dtype == b.dtype else None
    if fn is None or a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        return None
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), a.dtype) if out is None else out
    panels = gemm.operand(b)[1]
    lda, ldc = a.strides[0] // a.itemsize, out.strides[0] // out.itemsize
    parts = rows.threads_for(m, k, n) if m * k * n >= MIN_SPLIT_WORK else 1
    step = max(1, -(-m // parts))

    def block(r0):
        r1 = min(m, r0 + step)
        fn(r1 - r0, k, n, a.ctypes.data + r0 * a.strides[0], lda, panels.ctypes.data,
           out.ctypes.data + r0 * out.strides[0], ldc)

    rows.parallel([lambda r0=r0: block(r0) for r0 in range(0, max(m, 1), step)])
    return out


MIN_SPLIT_WORK = 1 << 22  # multiply-adds of an all-step product below which one thread runs it


def gram_runs(dtype):
    """Whether ``gram`` runs for dtype (the native product is there and not switched off)."""
    return gemm.gemm_tn_function(dtype) is not None


def gram(a, d, idx=None):
    """a[idx]^T @ d[idx] (every row when idx is None) for a (N, m) and d (N, n) with unit column stride (d may
    be a column slice), on the native product reading the rows in place: the weight gradients, where OpenBLAS
    needed a gathered copy of every real row of x, h and dgx. idx: int64 row numbers. None where the native
    product does not run (no extension, MASKRNN_CPU_GEMM=off, other dtypes or strides). The engine's threads
    take whole panels of d's columns each: no partial sums to add, and each reads all of a (the narrower)."""
    fn = gemm.gemm_tn_function(a.dtype) if a.dtype == d.dtype else None
    if fn is None or a.ndim != 2 or d.ndim != 2 or a.shape[0] != d.shape[0]:
        return None
    if not a.size or not d.size:  # an empty array's strides may be anything
        return np.zeros((a.shape[1], d.shape[1]), a.dtype)
    if any(x.strides[1] != x.itemsize or x.strides[0] % x.itemsize for x in (a, d)):
        return None
    m, n = a.shape[1], d.shape[1]
    out = np.empty((m, n), a.dtype)
    if idx is not None:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
    rows_ = a.shape[0] if idx is None else len(idx)
    W = gemm.PANEL_BYTES // a.itemsize
    panels = -(-n // W)
    parts = min(numba.get_num_threads(), panels) if rows_ * m * n >= MIN_SPLIT_WORK else 1
    per = -(-panels // max(parts, 1)) * W
    lda, ldd = a.strides[0] // a.itemsize, d.strides[0] // d.itemsize
    where = 0 if idx is None else idx.ctypes.data

    def block(c0):
        c1 = min(n, c0 + per)
        fn(rows_, m, c1 - c0, where, a.ctypes.data, lda, d.ctypes.data + c0 * d.itemsize, ldd,
           out.ctypes.data + c0 * out.itemsize, n)

    rows.parallel([lambda c0=c0: block(c0) for c0 in range(0, max(n, 1), per)])
    return out


def matmul(a, b, out=None):
    """(m,k) @ (k,n) for float32/float64 matrices; out: a C-contiguous (m,n) result. The native product where a's
    rows are contiguous (``_native``), else OpenBLAS; there a strided view is copied first (Numba's np.dot would
    copy it too, after a performance warning at compile time)."""
    done = _native(a, b, out)
    if done is not None:
        return done
    a, b = (m if m.flags.c_contiguous or m.flags.f_contiguous else np.ascontiguousarray(m) for m in (a, b))
    if out is None:
        return _dot(a, b)
    _dot_into(a, b, out)
    return out


def _blas_shutdown():
    """OpenBLAS's own pool shutdown (the one it runs before fork) in the BLAS Numba uses, or None."""
    try:
        from scipy.linalg import cython_blas

        return ctypes.CDLL(cython_blas.__file__).blas_thread_shutdown_  # found in its OpenBLAS dependency
    except (ImportError, OSError, AttributeError):
        return None  # another BLAS (MKL, Accelerate) or a build without the symbol: nothing to stop


_shutdown = _blas_shutdown()
_lock = threading.Lock()
_active = 0


@contextmanager
def session():
    """Wraps one maskrnn call; the BLAS threads stop when no call is left running (threads of this process
    running maskrnn at once keep the pool until the last one returns), and the packed weights (gemm.operand)
    are forgotten."""
    global _active
    with _lock:
        _active += 1
        gemm.hold()
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            gemm.release()
            if _active == 0 and _shutdown is not None:
                _shutdown()
