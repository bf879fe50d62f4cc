"""Scratch arrays of a maskrnn call (the engine's ``scratch``, _scan.py), kept for the next call instead of freed.

glibc's malloc maps every block over 32 MiB afresh (its mmap threshold stops adapting there) and unmaps it when
freed, so the backward's dgx (and the GRU's dgr), (T,B,GH) arrays that live only inside one call, had each page
faulted in and zeroed by the kernel on every call: ~0.13 ms per MB on this machine. At (64,100,128,256) the
float64 ones are 39-52 MB and the float32 ones half that, under the threshold, reused from the heap: the
float64 backward alone paid those faults (fwd+bwd 2.2x float32 instead of 2.0x). Blocks under the threshold
are left to malloc.

``take`` is called inside ``blas.session``: the arrays go back to the pool when the session that took them ends
(the drivers use them only within the call, nothing returned aliases them). The pool keeps the ``KEEP`` blocks
released last: memory a later call of the same shapes takes again, held between calls.
"""

import threading

import numpy as np

MIN_BYTES = 32 << 20  # glibc's largest mmap threshold: smaller blocks come back from malloc's heap
KEEP = 2  # blocks kept (the GRU's backward takes two)

_lock = threading.Lock()
_free = []  # uint8 blocks, most recently released last
_local = threading.local()  # .taken: a stack, one list of blocks per open session of this thread


def enter():
    """A session starts on this thread (blas.session)."""
    if not hasattr(_local, "taken"):
        _local.taken = []
    _local.taken.append([])


def leave():
    """The session ends: the blocks it took go back to the pool, which keeps the last KEEP."""
    blocks = _local.taken.pop()
    with _lock:
        _free.extend(blocks)
        del _free[: max(0, len(_free) - KEEP)]


def take(shape, dtype):
    """An uninitialised C-contiguous array, from the pool when it is large enough to be worth it and a call's
    session is open on this thread (else np.empty)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    stack = getattr(_local, "taken", None)
    if n < MIN_BYTES or not stack:
        return np.empty(shape, dtype)
    with _lock:
        fits = [i for i, b in enumerate(_free) if b.size >= n]
        block = _free.pop(min(fits, key=lambda i: _free[i].size)) if fits else None
    if block is None:
        block = np.empty(n, np.uint8)
    stack[-1].append(block)
    return block[:n].view(dtype).reshape(shape)


def clear():
    """Frees the kept blocks (tests; a caller short of memory)."""
    with _lock:
        _free.clear()
