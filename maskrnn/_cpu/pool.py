"""The large arrays of a maskrnn call (the engine's ``empty``, _scan.py: the training tape, the backward's dgx
and dgr, dx), on blocks of memory reused from call to call instead of freed.

glibc's malloc maps every block over 32 MiB afresh (its mmap threshold stops adapting there) and unmaps it when
freed, so these arrays had each page faulted in and zeroed by the kernel on every call (NumPy asks for huge
pages, whose faults also compact memory): at (128,50,256,512) the float64 LSTM's forward+backward spent ~0.3 s
of its ~1.4 s in the kernel (system CPU time, 4500 page faults), the float32 one ~0.03 s of ~0.55 s (its gx, half
the bytes, is still over the threshold). Smaller blocks are left to malloc, which reuses its heap.

Ownership: ``take`` hands out a view of an array over a block (``np.frombuffer``): every view of it, a
torch.from_numpy tensor included, keeps that base alive), and the block comes back to the pool only when the
last array viewing it is gone (a finalizer on the base). A tape that autograd holds for a later backward, or a
result the caller keeps, therefore never shares memory with a later call's arrays. The pool keeps at most
``KEEP_BYTES`` of blocks that no array uses (the ones freed last); the rest go back to malloc at once.
"""

import threading
import weakref

import numpy as np

# Smaller arrays are left to malloc (their pages cost little next to the work on them).
MIN_BYTES = 4 << 20
# Bytes of unused blocks kept for the next calls: a float64 LSTM training step at (128,50,256,512) takes ~330 MB
# in blocks of 4 MiB or more (gx and dgx 105 MB each, hs, cs and out 27 MB each, x2, dx and dW 13 MB each).
KEEP_BYTES = 512 << 20

_lock = threading.RLock()  # a finalizer may run on any thread, also inside take's allocations (the GC)
_free = []  # uint8 blocks no array uses, the most recently freed last


def _release(block):
    """The last array over block is gone: keep it, dropping the blocks freed longest ago past KEEP_BYTES."""
    with _lock:
        _free.append(block)
        kept = 0
        for i in range(len(_free) - 1, -1, -1):
            kept += _free[i].size
            if kept > KEEP_BYTES:
                del _free[: i + 1]
                break


def _reuse(n):
    """The smallest kept block of n to 2n bytes, taken out of the pool, or None."""
    with _lock:
        best = -1
        for i in range(len(_free)):
            size = _free[i].size
            if n <= size < 2 * n and (best < 0 or size < _free[best].size):
                best = i
        return _free.pop(best) if best >= 0 else None


def take(shape, dtype):
    """An uninitialised C-contiguous array: over a block of the pool when it is large enough to be worth it
    (MIN_BYTES), else np.empty."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    n = count * dtype.itemsize
    if n < MIN_BYTES or n == 0:
        return np.empty(shape, dtype)
    block = _reuse(n)
    if block is None:
        block = np.empty(n, np.uint8)
    base = np.frombuffer(memoryview(block), dtype, count)  # from an ndarray its views would keep block instead
    weakref.finalize(base, _release, block).atexit = False
    return base.reshape(shape)


def kept_bytes():
    """Bytes of the blocks kept for later calls."""
    with _lock:
        return sum(b.size for b in _free)


def clear():
    """Frees the kept blocks (tests; a caller short of memory)."""
    with _lock:
        _free.clear()
