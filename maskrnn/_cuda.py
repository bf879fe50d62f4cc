"""The GPU engine: the scan-kernel contract of maskrnn/_scan.py on CuPy arrays, through the CUDA kernels of
the native extension (csrc/scan.h). Raw device pointers and CuPy's current stream go to C++; nothing is copied.
The all-step GEMMs run on CuPy (cuBLAS): the driver's default ``xp.matmul``.
"""

import numpy as np

from ._info import _extension, cuda_ready


def available():
    """(True, "") when the CUDA engine can run, else (False, why and how to fix it)."""
    return cuda_ready()


def _ext():
    return _extension()


def _stream():
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _steps(steps):
    """(host batch sizes, device mask pointer or 0 for the packed kernels)."""
    if isinstance(steps, np.ndarray):
        return [int(n) for n in steps], 0
    mask, sizes = steps
    return [int(n) for n in sizes], mask.data.ptr


def _sizes(gx, U):
    T, B, _ = gx.shape
    return T, B, U.shape[0]


def _ptr(a):
    return a.data.ptr


def _scratch(n, dh):
    import cupy

    return cupy.empty((n,) + dh.shape, np.float64 if dh.dtype == np.float64 else np.float32)


def lstm_masked_fwd(gx, U, steps, zero_output, out, hs, cs):
    sizes, mask = _steps(steps)
    _ext().lstm_fwd(gx.dtype.name, *_sizes(gx, U), sizes, mask, bool(zero_output), _ptr(gx), _ptr(U), _ptr(out),
                    _ptr(hs), _ptr(cs), _stream())


def lstm_masked_bwd(gx, U, steps, zero_output, hs, cs, d_out, dh, dc, dgx):
    sizes, mask = _steps(steps)
    scratch = _scratch(3, dh)
    _ext().lstm_bwd(gx.dtype.name, *_sizes(gx, U), sizes, mask, bool(zero_output), _ptr(gx), _ptr(U), _ptr(cs),
                    _ptr(d_out), _ptr(dh), _ptr(dc), _ptr(dgx), _ptr(scratch), _stream())


def gru_masked_fwd(gx, U, b_rec, steps, zero_output, reset_after, out, hs, hr):
    sizes, mask = _steps(steps)
    _ext().gru_fwd(gx.dtype.name, *_sizes(gx, U), sizes, mask, bool(zero_output), bool(reset_after), _ptr(gx),
                   _ptr(U), _ptr(b_rec), _ptr(out), _ptr(hs), _ptr(hr), _stream())


def gru_masked_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    sizes, mask = _steps(steps)
    scratch = _scratch(2, dh)
    _ext().gru_bwd(gx.dtype.name, *_sizes(gx, U), sizes, mask, bool(zero_output), bool(reset_after), _ptr(gx),
                   _ptr(U), _ptr(hs), _ptr(hr), _ptr(d_out), _ptr(dh), _ptr(dgx), _ptr(dgr), _ptr(scratch),
                   _stream())


# The packed and masked kernels are the same C++ entry points; `steps` tells them apart.
lstm_packed_fwd, lstm_packed_bwd = lstm_masked_fwd, lstm_masked_bwd
gru_packed_fwd, gru_packed_bwd = gru_masked_fwd, gru_masked_bwd
