"""The CPU engine's GEMMs and its BLAS thread pool.

The GEMMs go through the same BLAS as the per-step products inside the kernels (Numba calls SciPy's OpenBLAS,
NumPy ships another): alternating two OpenBLAS thread pools made each one spin on the cores the other needed,
and measured 2-3x slower end to end. For the same reason ``session`` stops that pool's threads when the last
maskrnn call returns: idle OpenBLAS threads busy-wait for about 0.1 s, taking the cores from the PyTorch (or
any other) work that runs next (dense torch LSTM: 54-98 ms right after a maskrnn call, 26 ms after a pause).
The next call starts them again (a thread start, microseconds). Inside a call maskrnn's BLAS is single-threaded
and its large GEMMs are split over its own threads (``threads``).
"""

import ctypes
import threading
from contextlib import contextmanager

import numpy as np

from . import threads
from .cache import njit
from .cells import JIT

SPLIT_WORK = 1 << 22  # multiply-adds of a GEMM below which one thread beats the hand-off


@njit(**JIT)
def _dot(a, b):
    return np.dot(a, b)


@njit(**JIT)
def _dot_into(a, b, out):
    np.dot(a, b, out)


def matmul(a, b, out=None):
    """(m,k) @ (k,n) for float32/float64 matrices; out: a C-contiguous (m,n) result. A strided view is copied
    first (Numba's np.dot would copy it too, after a performance warning at compile time). Inside a maskrnn
    call a large product is split over the threads: by rows of a C-contiguous a, else (a transposed, as in
    the weight gradients) by the summed dimension, adding the parts."""
    a, b = (m if m.flags.c_contiguous or m.flags.f_contiguous else np.ascontiguousarray(m) for m in (a, b))
    (m, k), n = a.shape, b.shape[1]
    by_rows = a.flags.c_contiguous  # else a is a transposed matrix: split the summed dimension
    parts = min(threads.num_threads() if getattr(_in_call, "active", False) else 1, (m if by_rows else k) // 64)
    if parts < 2 or m * n * k < SPLIT_WORK:
        if out is None:
            return _dot(a, b)
        _dot_into(a, b, out)
        return out
    if out is None:
        out = np.empty((m, n), np.result_type(a, b))
    if by_rows:
        edges = np.linspace(0, m, parts + 1).astype(int)
        threads.run([lambda r0=r0, r1=r1: _dot_into(a[r0:r1], b, out[r0:r1])
                     for r0, r1 in zip(edges[:-1], edges[1:])])
        return out
    edges = np.linspace(0, k, parts + 1).astype(int)
    bufs = [out] + [np.empty_like(out) for _ in range(parts - 1)]
    threads.run([lambda i=i, r0=r0, r1=r1: _dot_into(a[:, r0:r1], b[r0:r1], bufs[i])
                 for i, (r0, r1) in enumerate(zip(edges[:-1], edges[1:]))])
    for buf in bufs[1:]:
        np.add(out, buf, out=out)
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
_in_call = threading.local()


@contextmanager
def session():
    """Wraps one maskrnn call; the BLAS threads stop when no call is left running (threads of this process
    running maskrnn at once keep the pool until the last one returns)."""
    global _active
    with _lock:
        _active += 1
    outer = getattr(_in_call, "active", False)
    _in_call.active = True
    prev = threads.set_local_blas_threads(1) if threads.set_local_blas_threads is not None else None
    try:
        yield
    finally:
        if prev is not None:
            threads.set_local_blas_threads(prev)
        _in_call.active = outer
        with _lock:
            _active -= 1
            if _active == 0 and _shutdown is not None:
                _shutdown()
