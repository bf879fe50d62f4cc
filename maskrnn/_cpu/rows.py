"""Both cores on one scan without a per-step barrier: the batch's rows split across threads.

Rows are independent in the recurrence, so each of N threads runs the whole chunk of steps on its own rows, a
nogil Numba kernel whose per-step products run on that thread only (gemm.py). The plans sort rows longest first,
so thread p takes the ranks p, p + N, ... (strided views): every thread gets a share of the long rows and the
rows it computes at step t are still a prefix of its own, of length ceil((n_t - p) / N).

The helper threads (``parallel``) are kept and block on a queue between calls: nothing spins on the cores the
caller's next operation needs (the problem OpenBLAS's idle threads caused, blas.py), and inference, which runs
the kernels on chunks of ~6 steps, starts no thread per chunk.
"""

import os
import queue
import threading

import numba
import numpy as np

from . import gemm, omp

MIN_ROWS = 8  # rows per thread at least: the native product's register tile (8 rows on AVX-512)
# Per-step multiply-adds (rows x recurrent weights) below which one thread runs the call: a thread start and join
# (~50 us) outweighs the halved step time of small problems.
MIN_STEP_WORK = 1 << 18
# Multiply-adds of a whole call's step products below which one thread runs it: handing a call to a second thread
# costs 0.1-0.2 ms (waking the worker, and each task's way into Python and the Numba dispatcher, which holds the
# GIL). One step of the LSTM forward at (32,1,64,128) took 0.64 ms on two threads against 0.42 ms on one.
MIN_CALL_WORK = 1 << 24


def small_call(sizes, H, GH):
    """Whether a call computing sizes[t] rows at each step (None: unknown) with weights (H, GH) is too small to
    share (MIN_CALL_WORK)."""
    return sizes is not None and int(np.sum(sizes, dtype=np.int64)) * H * GH < MIN_CALL_WORK


def threads_for(B, H, GH, sizes=None):
    """How many threads run a scan of B rows with recurrent weights (H, GH): the engine's thread count
    (numba.get_num_threads(), NUMBA_NUM_THREADS), at most B // MIN_ROWS, and 1 for small steps, small calls
    (sizes: the rows computed per step, ``small_call``) or without the native product (np.dot runs OpenBLAS's
    own threads)."""
    if not gemm.level() or B * H * GH < MIN_STEP_WORK or small_call(sizes, H, GH):
        return 1
    return max(1, min(numba.get_num_threads(), B // MIN_ROWS))


def share(sizes, p, n):
    """Thread p of n's rows computed per step, given sizes (T,) for all rows (a prefix in plan order)."""
    return (np.maximum(sizes - p + n - 1, 0) // n).astype(np.int32)


_helpers = []  # one task queue per helper thread
_helpers_lock = threading.Lock()


def _helper(tasks):
    while True:
        task, done = tasks.get()
        task()
        done.put(None)


def _forget_helpers():
    _helpers.clear()  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_helpers)


def parallel(tasks):
    """Runs the callables: on PyTorch's OpenMP team when there is one (omp.py), else the first on this thread and
    the others on helper threads; returns when all have finished and re-raises the first failure."""
    errors = []

    def guarded(task):
        def run():
            try:
                task()
            except BaseException as exc:  # noqa: BLE001 - re-raised by the calling thread
                errors.append(exc)

        return run

    runs = [guarded(task) for task in tasks]
    if not omp.run(runs):
        _on_helpers(runs)
    if errors:
        raise errors[0]


def _on_helpers(runs):
    """The callables (which must not raise): the first on this thread, the others on helper threads."""
    with _helpers_lock:
        while len(_helpers) < len(runs) - 1:
            q = queue.SimpleQueue()
            threading.Thread(target=_helper, args=(q,), daemon=True, name="maskrnn-cpu").start()
            _helpers.append(q)
        helpers = _helpers[: len(runs) - 1]
    done = queue.SimpleQueue()
    for q, run in zip(helpers, runs[1:]):
        q.put((run, done))
    try:
        runs[0]()
    finally:
        for _ in helpers:
            done.get()


def split(run, sizes, n):
    """run(rows, sizes_p) on n threads, rows the slice p::n of the batch."""
    parallel([lambda p=p: run(slice(p, None, n), share(sizes, p, n) if n > 1 else sizes) for p in range(n)])
