"""The per-step products of the CPU kernels: csrc/cpu_gemm.cpp's packed GEMM, called from inside Numba.

OpenBLAS (through Numba's np.dot) repacked the recurrent weights on every step's call and ran the skinny
per-step shapes (64 x 256 @ 256 x 1024) at about half this machine's peak. The native product takes the weights
packed once per kernel call (``operand``), runs on the calling thread only (the kernels split the batch across
threads themselves, kernels.py) and reads rows at any stride (a thread's rows of the batch).

The kernels get the product's address as a plain integer argument and call it through ``_call`` (an inttoptr):
an address baked into the machine code as a constant would be wrong in the next process that loads the kernel
cache. Address 0 (no native extension, or ``MASKRNN_CPU_GEMM=off``) selects np.dot at run time: a build without
a compiler keeps working, on OpenBLAS.

``MASKRNN_CPU_GEMM``: auto (default: the best instruction set this CPU runs), avx512, avx2, portable, off.
"""

import ctypes
import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cache import njit
from .cells import INLINE

PANEL_BYTES = 128  # the packed panels' width (csrc/cpu_gemm.h)
LEVELS = ("auto", "avx512", "avx2", "portable", "off")
_PACK = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_void_p)
_GEMM = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_GEMM_TN = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 4, ctypes.c_void_p, *[ctypes.c_void_p, ctypes.c_int64] * 4)


def addresses(level=None):
    """{'level', 'gemm_float32', 'gemm_float64', 'pack_float32', 'pack_float64', 'gemm_tn_float32',
    'gemm_tn_float64'} of the native products at level
    (default: MASKRNN_CPU_GEMM, else auto); level '' and addresses 0 where it cannot run (no extension, a level
    this CPU or build lacks, 'off')."""
    level = (level or os.environ.get("MASKRNN_CPU_GEMM") or "auto").lower()
    if level not in LEVELS:
        raise ValueError(f"MASKRNN_CPU_GEMM: expected one of {', '.join(LEVELS)}, got {level!r}")
    none = dict(level="", gemm_float32=0, gemm_float64=0, pack_float32=0, pack_float64=0, gemm_tn_float32=0,
                gemm_tn_float64=0)
    if level == "off":
        return none
    try:
        from .. import _ext
    except ImportError:
        return none
    if not hasattr(_ext, "cpu_gemm_addresses"):  # an extension built without it (the CUDA emulation's)
        return none
    return dict(_ext.cpu_gemm_addresses(level))


_native = addresses()


def level():
    """The instruction set the kernels' products run on ('' when they run on np.dot)."""
    return _native["level"]


def use(level_name=None):
    """Selects the products' level for the next kernel calls (tests; default: MASKRNN_CPU_GEMM). Returns it."""
    global _native
    _native = addresses(level_name)
    return _native["level"]


def gemm_function(dtype, where=None):
    """The native product for dtype as a ctypes function (m, k, n, A, lda, P, C, ldc), or None (tests)."""
    address = (where or _native)[f"gemm_{np.dtype(dtype).name}"]
    return _GEMM(address) if address else None


def gemm_tn_function(dtype, where=None):
    """The native sum over rows of A^T D for dtype as a ctypes function (rows, m1, m2, n, idx, A1, lda1, A2,
    lda2, D, ldd, C, ldc), or None: C (m1 + m2 x n) = sum over r < rows of the outer products of row idx[r] (r
    when idx is 0) of A = [A1 | A2] (m1 and m2 columns) and of D (n columns)."""
    address = (where or _native).get(f"gemm_tn_{np.dtype(dtype).name}", 0)
    return _GEMM_TN(address) if address else None


def pack(b, where=None, out=None):
    """b (k, n), any strides -> its panels (n_panels, k, W), zero-padded past column n (into out when given)."""
    where = where or _native
    k, n = b.shape
    W = PANEL_BYTES // b.itemsize
    P = np.empty((-(-n // W), k, W), b.dtype) if out is None else out
    stride = [s // b.itemsize for s in b.strides]
    _PACK(where[f"pack_{b.dtype.name}"])(k, n, b.ctypes.data, stride[0], stride[1], P.ctypes.data)
    return P


_held = 0  # maskrnn calls running (blas.session): while one is, operands are kept for the next kernel calls
_kept = {}


def hold():
    global _held
    _held += 1


def release():
    """The end of a maskrnn call: the last one forgets the kept operands (the caller may change the weights)."""
    global _held
    _held -= 1
    if _held == 0:
        _kept.clear()


def operand(b, packed=True):
    """The right-hand side of a per-step product, as the kernels take it: (address, panels, matrix), either
    the native product with b packed (matrix empty) or address 0 and b C-contiguous for np.dot (panels empty).
    Within a maskrnn call the same weights are packed once: inference calls the kernels on chunks of a few
    steps (packing 1 MB took ~0.3 ms per chunk). The entry holds b, so no other array takes its address.
    packed=False: np.dot's form even where the native product runs, for weights that one product reads (a
    single step: packing them is a pass over them that no later step pays back)."""
    address = _native.get(f"gemm_{b.dtype.name}", 0) if packed else 0
    key = (id(b.base if b.base is not None else b), b.ctypes.data, b.shape, b.strides, b.dtype.str, address)
    if key in _kept:
        return _kept[key][1]
    if address:
        op = address, pack(b), np.empty((0, 0), b.dtype)
    else:
        op = 0, np.empty((0, 0, 0), b.dtype), np.ascontiguousarray(b)
    if _held:
        _kept[key] = (b, op)
    return op


def row_operand(b, row):
    """np.dot's operand of [b; row] (row: one more row of b's width) without building it: b C-contiguous (itself
    when it is) and row as the panels, (1, 1, n), which ``product`` adds for a's last column. For a product that
    reads the weights once (infer._unpacked), where the concatenation was a copy of all of b."""
    return 0, np.ascontiguousarray(row).reshape(1, 1, -1), np.ascontiguousarray(b)


def operand_columns(a, spans):
    """``operand`` of the column spans [(s0, s1), ...] of a (k, n) side by side (a thread's gate columns, cols.py),
    packed from a's own memory (any strides) where every span is whole panels wide: packing their concatenated copy
    was a second pass over the weights on every call (4 MB at H = 512), and over a transposed matrix (torch.nn's
    weights) a slow one. Otherwise the operand of that copy."""
    W = PANEL_BYTES // a.itemsize
    address = _native.get(f"gemm_{a.dtype.name}", 0)
    if not address or any((s1 - s0) % W for s0, s1 in spans):
        return operand(np.concatenate([a[:, s0:s1] for s0, s1 in spans], axis=1))
    P = np.empty((sum(s1 - s0 for s0, s1 in spans) // W, a.shape[0], W), a.dtype)
    at = 0
    for s0, s1 in spans:
        pack(a[:, s0:s1], out=P[at : at + (s1 - s0) // W])
        at += (s1 - s0) // W
    return address, P, np.empty((0, 0), a.dtype)


@intrinsic
def _call(typingctx, address, m, k, n, a, lda, p, c, ldc):
    """address(m, k, n, a, lda, p, c, ldc): the C function at a run-time address (pointers as integers)."""

    def codegen(context, builder, signature, args):
        i64, ptr = ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64, i64, ptr, i64, ptr, ptr, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [builder.inttoptr(v, t) if t == ptr else v for v, t in zip(args[1:], fnty.args)])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64, types.uintp, types.int64, types.uintp,
                      types.uintp, types.int64), codegen


@njit(**INLINE)
def product(op, a, out):
    """out = a @ b for op = operand(b) or row_operand(b); a (m, k) and out (m, n) may have any row stride (unit
    column stride)."""
    address, panels, matrix = op
    if address == 0:  # rows split across threads never come here (rows.threads_for): no copy of a
        if panels.shape[0] == 0:
            np.dot(np.ascontiguousarray(a), matrix, out)
            return
        # row_operand: b = [matrix; row], a = [a1 | a2] with a2 its last column: a1 matrix + a2 row
        k = matrix.shape[0]
        np.dot(np.ascontiguousarray(a[:, :k]), matrix, out)
        row = panels[0, 0]
        for i in range(a.shape[0]):
            s = a[i, k]
            for j in range(out.shape[1]):
                out[i, j] += s * row[j]
        return
    m, k = a.shape
    _call(address, m, k, out.shape[1], a.ctypes.data, a.strides[0] // a.itemsize, panels.ctypes.data,
          out.ctypes.data, out.strides[0] // out.itemsize)
