"""The CPU engine's GEMMs and its BLAS thread pool.

The GEMMs go through the same BLAS as the per-step products inside the kernels (Numba calls SciPy's OpenBLAS,
NumPy ships another): alternating two OpenBLAS thread pools made each one spin on the cores the other needed,
and measured 2-3x slower end to end. For the same reason ``session`` stops that pool's threads when the last
maskrnn call returns: idle OpenBLAS threads busy-wait for about 0.1 s, taking the cores from the PyTorch (or
any other) work that runs next (dense torch LSTM: 54-98 ms right after a maskrnn call, 26 ms after a pause).
The next call starts them again (a thread start, microseconds).
"""

import ctypes
import os
import sys
import threading
from contextlib import contextmanager

import numba
import numpy as np

from . import gemm, omp, pool, rows
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
    piece = max(8, A_BLOCK_BYTES // (max(k, 1) * a.itemsize) // 8 * 8)

    def block(r0):
        for p0 in range(r0, min(m, r0 + step), piece):
            p1 = min(m, r0 + step, p0 + piece)
            fn(p1 - p0, k, n, a.ctypes.data + p0 * a.strides[0], lda, panels.ctypes.data,
               out.ctypes.data + p0 * out.strides[0], ldc)

    rows.parallel([lambda r0=r0: block(r0) for r0 in range(0, max(m, 1), step)])
    return out


MIN_SPLIT_WORK = 1 << 22  # multiply-adds of an all-step product below which one thread runs it
# Bytes of a's rows per native call (a multiple of the 8-row register tile): the product passes over all of a
# once per panel of b, so it gets a's rows a block that stays in L2 (2 MiB here) at a time. All 6400 rows at
# once streamed a from L3 for every panel, which hurt float64 most (twice the bytes, twice the panels): the
# LSTM projection at (64,100,128,256) (6400 x 129 by 129 x 1024) took 51-53 ms in float64, 43-46 in blocks
# (one thread; float32 20-23 ms either way).
A_BLOCK_BYTES = 1 << 20


def gram_runs(dtype):
    """Whether ``gram`` runs for dtype (the native product is there and not switched off, and PyTorch's GEMM
    does not take the weight gradients: ``_torch``)."""
    return gemm.gemm_tn_function(dtype) is not None and _torch() is None


def gram(a, d, idx=None, a2=None):
    """a[idx]^T @ d[idx] (every row when idx is None) for a (N, m) and d (N, n) with unit column stride (column
    slices welcome), on the native product reading the rows in place: the weight gradients, where OpenBLAS
    needed a gathered copy of every real row of x, h and dgx. a2 (N, m2): the result of [a | a2] instead,
    without concatenating them (the LSTM's [x | h_{t-1}]: one pass over d). idx: int64 row numbers. None where
    the native product does not run (no extension, MASKRNN_CPU_GEMM=off, other dtypes or strides). The
    engine's threads split the rows, each summing into its own result: a split of the columns had each thread
    pack all of a."""
    fn = gemm.gemm_tn_function(a.dtype) if a.dtype == d.dtype else None
    both = (a, d) if a2 is None else (a, d, a2)
    if fn is None or any(v.ndim != 2 or v.shape[0] != a.shape[0] or v.dtype != a.dtype for v in both):
        return None
    m1, m2, n = a.shape[1], 0 if a2 is None else a2.shape[1], d.shape[1]
    N = a.shape[0] if idx is None else len(idx)
    if not N or not d.size or not m1 + m2:  # an empty array's strides may be anything
        return np.zeros((m1 + m2, n), a.dtype)
    if any(v.strides[1] != v.itemsize and v.shape[1] > 1 or v.strides[0] % v.itemsize for v in both):
        return None
    if idx is not None:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
    a2 = a[:, :0] if a2 is None else a2
    ld = [v.strides[0] // v.itemsize for v in (a, a2, d)]
    big = N * (m1 + m2) * n >= MIN_SPLIT_WORK
    parts = max(1, min(numba.get_num_threads(), N // GRAM_ROWS)) if big else 1
    if big and parts < numba.get_num_threads():
        cols = _column_blocks(n, numba.get_num_threads(), gemm.PANEL_BYTES // a.itemsize)
        if len(cols) > parts:
            return _gram_columns(fn, N, m1, m2, idx, a, a2, d, ld, cols)
    outs = [pool.take((m1 + m2, n), a.dtype) for _ in range(parts)]
    step = -(-N // parts)

    def block(p):
        r0, r1 = p * step, min(N, (p + 1) * step)
        at, base = (0, r0) if idx is None else (idx.ctypes.data + r0 * 8, 0)
        fn(r1 - r0, m1, m2, n, at, a.ctypes.data + base * a.strides[0], ld[0], a2.ctypes.data + base * a2.strides[0],
           ld[1], d.ctypes.data + base * d.strides[0], ld[2], outs[p].ctypes.data, n)

    rows.parallel([lambda p=p: block(p) for p in range(parts)])
    for o in outs[1:]:
        np.add(outs[0], o, out=outs[0])
    return outs[0]


GRAM_ROWS = 256  # rows per thread at least (csrc/cpu_gemm_kernel.h's row block)


def _column_blocks(n, parts, width):
    """[(c0, c1)] of at most parts blocks of n columns, in whole panels of width columns."""
    panels = -(-n // width)
    edges = sorted({min(n, panels * p // parts * width) for p in range(parts + 1)})
    return list(zip(edges[:-1], edges[1:]))


def _gram_columns(fn, N, m1, m2, idx, a, a2, d, ld, cols):
    """gram with the columns of d (and of the result) split across threads, each over every row: where the rows
    are too few to split (a small batch's ~500 real rows at (4,200,256,512)), one thread ran the whole product.
    Each thread packs all of a (N (m1 + m2), against its N (m1 + m2) n / parts multiply-adds)."""
    out = pool.take((m1 + m2, d.shape[1]), a.dtype)
    at = 0 if idx is None else idx.ctypes.data
    item = a.itemsize

    def block(c0, c1):
        fn(N, m1, m2, c1 - c0, at, a.ctypes.data, ld[0], a2.ctypes.data, ld[1], d.ctypes.data + c0 * item, ld[2],
           out.ctypes.data + c0 * item, out.shape[1])

    rows.parallel([lambda c=c: block(*c) for c in cols])
    return out


TORCH_GEMM = os.environ.get("MASKRNN_TORCH_GEMM", "1") != "0"


def _torch():
    """PyTorch, when it is imported and its GEMM should run the all-step products (else None). Its BLAS (MKL or
    OpenBLAS with its own kernels, on the same OpenMP team as the engine's tasks: omp.py) ran them 1.4-1.6x
    faster than the native product here: (N, 193) x (N, 512) weight gradient at N = 2000 in 2.0 ms against 3.3,
    its input gradient 1.1 against 1.6, the projection 0.7 against 1.1 (2 threads). Never in a forked child
    (omp.py); ``MASKRNN_TORCH_GEMM=0`` turns it off."""
    if not TORCH_GEMM or "torch" not in sys.modules or omp.forked():
        return None
    return sys.modules["torch"]


def _torch_mm(torch, a, b, out):
    """a @ b on torch.mm over the arrays' memory (no copies), or None where it does not apply: read-only or empty
    arrays, negative strides, an out that is not C-contiguous."""
    arrays = (a, b) if out is None else (a, b, out)
    if any(m.size == 0 or not m.flags.writeable or any(s < 0 for s in m.strides) for m in arrays):
        return None
    if out is not None and not out.flags.c_contiguous:
        return None
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if out is None:
        return torch.mm(ta, tb).numpy()
    torch.mm(ta, tb, out=torch.from_numpy(out))
    return out


def matmul(a, b, out=None):
    """(m,k) @ (k,n) for float32/float64 matrices; out: a C-contiguous (m,n) result. PyTorch's GEMM when it is
    loaded (``_torch``), else the native product where a's rows are contiguous (``_native``), else OpenBLAS;
    there a strided view is copied first (Numba's np.dot would copy it too, after a performance warning at
    compile time)."""
    torch = _torch()
    done = None if torch is None or a.dtype != b.dtype else _torch_mm(torch, a, b, out)
    if done is not None:
        return done
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
    running maskrnn at once keep the pool until the last one returns) and the packed weights (gemm.operand)
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
