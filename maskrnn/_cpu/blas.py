"""The CPU engine's GEMMs. They go through the same BLAS as the per-step products inside the kernels
(Numba calls SciPy's OpenBLAS, NumPy ships another): alternating two OpenBLAS thread pools made each one
spin on the cores the other needed, and measured 2-3x slower end to end."""

import numpy as np
from numba import njit

from .cells import JIT


@njit(**JIT)
def _dot(a, b):
    return np.dot(a, b)


@njit(**JIT)
def _dot_into(a, b, out):
    np.dot(a, b, out)


def matmul(a, b, out=None):
    """(m,k) @ (k,n) for C- or F-ordered float32/float64 matrices; out: a C-contiguous (m,n) result."""
    if out is None:
        return _dot(a, b)
    _dot_into(a, b, out)
    return out
