"""cublasGemmEx on host memory, for the emulation (plugin.py): the GPU engine's ``matmul`` (maskrnn/_cuda.py) calls
cuBLAS through cupy_backends' binding with raw addresses; here the same call runs on the emulated device's memory
(the host's), by cuBLAS's own contract (cuBLAS documentation, cublasGemmEx), not by maskrnn's reading of it:
column-major matrices, C = alpha op(A) op(B) + beta C with op(A) m x k, op(B) k x n, C m x n, each stored
matrix's columns ld elements apart, op 0 (N) or 1 (T); alpha and beta host scalars of the compute type.
Float16 and bfloat16 products are taken in float32 and rounded once (float32 accumulation, as cuBLAS's
CUBLAS_COMPUTE_32F)."""

import ctypes

import ml_dtypes
import numpy as np

DATA_TYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64), 2: np.dtype(np.float16),
              14: np.dtype(ml_dtypes.bfloat16)}  # cudaDataType_t: CUDA_R_32F, _64F, _16F, _16BF
COMPUTE_TYPES = {68: np.float32, 70: np.float64}  # cublasComputeType_t: CUBLAS_COMPUTE_32F, _64F
calls = []  # (m, n, k, transa, transb) of every call, for tests that check the GEMMs ran here


def _stored(ptr, dtype, rows, cols, ld):
    """The column-major rows x cols matrix at ptr, columns ld elements apart, as a NumPy view."""
    if ld < max(rows, 1):
        raise ValueError(f"cuBLAS: ld {ld} below the stored matrix's {rows} rows (CUBLAS_STATUS_INVALID_VALUE)")
    n = (cols - 1) * ld + rows
    flat = np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(ptr), dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))


def _op(ptr, dtype, trans, rows, cols, ld):
    """op(X) (rows x cols) of the matrix stored at ptr: X itself (trans 0) or the transpose of a cols x rows X."""
    if trans not in (0, 1):
        raise ValueError(f"cuBLAS: operation {trans} is neither N nor T")
    return _stored(ptr, dtype, rows, cols, ld) if trans == 0 else _stored(ptr, dtype, cols, rows, ld).T


class _Module:
    """The part of cupy_backends.cuda.libs.cublas that maskrnn calls."""

    @staticmethod
    def gemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
               computeType, algo):
        dtype = DATA_TYPES[Ctype]
        if not Atype == Btype == Ctype:
            raise ValueError(f"cuBLAS (as maskrnn uses it): one data type, got {Atype}, {Btype}, {Ctype}")
        acc = COMPUTE_TYPES[computeType]
        if (acc == np.float64) != (dtype == np.float64):
            raise ValueError(f"compute type {computeType} for data type {Ctype}")
        scalar = ctypes.c_double if acc == np.float64 else ctypes.c_float
        a_val, b_val = scalar.from_address(alpha).value, scalar.from_address(beta).value
        calls.append((m, n, k, transa, transb))
        op_a = _op(A, dtype, transa, m, k, lda).astype(acc)
        op_b = _op(B, dtype, transb, k, n, ldb).astype(acc)
        c = _stored(C, dtype, m, n, ldc)
        with np.errstate(all="ignore"):  # Inf and NaN propagate silently, as on a GPU (NaN inputs at padded steps)
            result = a_val * (op_a @ op_b)
            if b_val != 0:  # beta 0: C is written, never read (it may hold NaN)
                result = result + b_val * c.astype(acc)
            c[...] = result.astype(dtype)


module = _Module()
