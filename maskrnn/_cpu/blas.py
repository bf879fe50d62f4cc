"""The CPU engine's GEMMs. They go through the same BLAS as the per-step products inside the kernels
(Numba calls SciPy's OpenBLAS, NumPy ships another): alternating two OpenBLAS thread pools made each one
spin on the cores the other needed, and measured 2-3x slower end to end."""

import numpy as np

from .cache import njit
from .cells import JIT


@njit(**JIT)
def matmul(a, b):
    """(m,k) @ (k,n) for C- or F-ordered float32/float64 matrices."""
    return np.dot(a, b)
