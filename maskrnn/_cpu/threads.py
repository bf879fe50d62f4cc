"""The CPU engine's threads: row blocks of a scan and halves of the all-step GEMMs, each on its own core.

Rows of a batch are independent for the whole sequence, so each thread runs the whole scan of its own block of
rows (per step a GEMM over its rows that are computed, then their gate math) with no synchronisation between
steps. The all-step GEMMs are split the same way, by rows of the long dimension. Inside a maskrnn call every
BLAS call is single-threaded (``openblas_set_num_threads_local``): OpenBLAS's own pool would busy-wait after
each GEMM on the cores the scan threads need. The pool's threads are Python threads that sleep on a queue
between calls (the kernels release the GIL), so nothing spins on the caller's cores between maskrnn calls.

``MASKRNN_NUM_THREADS`` sets the number of threads (default: the CPUs this process may run on).
"""

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_BLOCK_ROWS = 4  # a block with fewer rows runs its per-step products too far below the GEMM's speed
MIN_SCAN_WORK = 1 << 21  # multiply-adds of a scan below which one thread beats the hand-off (~30 us)


def num_threads() -> int:
    env = os.environ.get("MASKRNN_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"MASKRNN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"MASKRNN_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _local_threads_setter():
    """OpenBLAS's per-thread thread count in the BLAS Numba uses (returns the previous value), or None."""
    try:
        from scipy.linalg import cython_blas

        fn = ctypes.CDLL(cython_blas.__file__).openblas_set_num_threads_local
    except (ImportError, OSError, AttributeError):
        return None  # another BLAS, or an OpenBLAS before 0.3.27: its own threading stays
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


set_local_blas_threads = _local_threads_setter()

_pool = None
_pool_lock = threading.Lock()


def _single_threaded_blas():
    if set_local_blas_threads is not None:
        set_local_blas_threads(1)


def _executor(workers):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            old, _pool = _pool, ThreadPoolExecutor(workers, "maskrnn", initializer=_single_threaded_blas)
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget_pool():
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run(tasks):
    """Runs the callables tasks at once, the first on this thread; returns their results once all have ended
    (also when one raised or this thread was interrupted: they write into the caller's arrays)."""
    if len(tasks) == 1:
        return [tasks[0]()]
    futures = [_executor(len(tasks) - 1).submit(task) for task in tasks[1:]]
    try:
        first = tasks[0]()
    finally:
        for f in futures:
            f.exception()  # waits; an exception of its own is raised by result() below
    return [first] + [f.result() for f in futures]


def row_blocks(sizes, B, cost_per_row_step):
    """[(r0, r1), ...]: rows [0, B) in contiguous blocks of about equal work for a scan computing rows
    [0, sizes[t]) at step t; one block when a split does not pay."""
    k = min(num_threads(), B // MIN_BLOCK_ROWS)
    steps = len(sizes) - np.searchsorted(np.sort(sizes), np.arange(B), side="right")  # computed steps per row
    work = np.cumsum(steps)
    if k < 2 or work[-1] * cost_per_row_step < MIN_SCAN_WORK:
        return [(0, B)]
    cuts = np.searchsorted(work, work[-1] * np.arange(1, k) / k, side="left") + 1
    edges = [0, *sorted({int(c) for c in cuts if 0 < c < B}), B]
    return list(zip(edges[:-1], edges[1:]))


def scan(kernel, args, sizes, cost_per_row_step):
    """Runs kernel(*args, r0, r1) on the row blocks of ``row_blocks`` at once; args[0] is (T,B,...)."""
    blocks = row_blocks(sizes, args[0].shape[1], cost_per_row_step)
    run([lambda r0=r0, r1=r1: kernel(*args, r0, r1) for r0, r1 in blocks])
