"""pytest plugin (``-p plugin`` with this folder on PYTHONPATH): the "cpu" device runs maskrnn._cuda, the GPU
engine's Python layer, on NumPy arrays with the host-emulated CUDA kernels built by build.py. The suite's CPU
cases then check the CUDA kernels against the float64 reference without a GPU.

The engine's all-step GEMMs (its ``matmul``, see maskrnn/_scan.py) make their cuBLAS calls to cublas_host.py,
cuBLAS's contract on host memory, and its fallback to cupy.matmul runs np.matmul. Half precision: both run float16
and bfloat16 (ml_dtypes) products in float32 and round once, as cuBLAS does with float32 accumulation;
test_half_precision.py lifts the CPU engine's dtype gate to run them (``allow_half``)."""

import ctypes
import importlib.machinery
import importlib.util
import mmap
import os
import sysconfig
from pathlib import Path

import cublas_host
import ml_dtypes
import numpy as np

import maskrnn._cuda as engine
import maskrnn._dispatch as dispatch
import maskrnn._validate as validate

# EMU_BUILD: another build folder of build.py (the ThreadSanitizer one, a mutant).
BUILD = Path(os.environ.get("EMU_BUILD") or Path(__file__).resolve().parents[2] / "build" / "cuda_emulation")
_path = BUILD / f"_ext{sysconfig.get_config_var('EXT_SUFFIX')}"
_loader = importlib.machinery.ExtensionFileLoader("_ext", str(_path))
_spec = importlib.util.spec_from_file_location("_ext", _path, loader=_loader)
emulated = importlib.util.module_from_spec(_spec)
_loader.exec_module(emulated)

HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def _matmul(a, b, *args, **kwargs):
    if a.dtype in HALF and b.dtype == a.dtype:
        return np.matmul(a.astype(np.float32), b.astype(np.float32), *args, **kwargs).astype(a.dtype)
    return np.matmul(a, b, *args, **kwargs)


def before_unreadable_page(a):
    """A copy of a that ends where a page that may not be read begins: an emulated kernel (host threads) reading
    past the array's end faults, where on a GPU it reads its neighbour's bytes inside one allocation of CuPy's pool,
    which memcheck misses (initcheck reports them as uninitialised). The training path's copies of W and U are
    made so (below); tests place others."""
    page = mmap.PAGESIZE
    n = -(-a.nbytes // page) * page
    buf = mmap.mmap(-1, n + page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    if _libc.mprotect(ctypes.c_void_p(start + n), ctypes.c_size_t(page), 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect")
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=n - a.nbytes).reshape(a.shape)
    out[...] = a
    return out


_libc = ctypes.CDLL(None, use_errno=True)


def allow_half(monkeypatch):
    """Let the dispatcher send float16/bfloat16 problems on device "cpu" (the emulated CUDA engine here)."""
    monkeypatch.setattr(validate, "CPU_DTYPES", validate.CPU_DTYPES + HALF)


engine._addr = lambda a: a.ctypes.data  # the engine's own pointer checks run unchanged
engine._ext = lambda: emulated
engine._stream = lambda: 0
engine._cublas = lambda: (cublas_host.module, 0)
engine._cupy_matmul = lambda a, b, out: _matmul(a, b, out=out)
# NaN-filled scratch: a kernel reading a running gradient before setting it shows up in the results.
engine._scratch = lambda n, dh: np.full((n,) + dh.shape, np.nan, np.float64 if dh.dtype == np.float64 else np.float32)
# Uninitialised buffers filled with bytes of all ones too (NaN in every float type, -1 in every integer one).
engine._empty = lambda shape, dtype: (np.full(int(np.prod(shape)) * np.dtype(dtype).itemsize, 0xFF, np.uint8)
                                      .view(dtype).reshape(shape))
_c_copy = dispatch.c_copy
dispatch.c_copy = lambda xp, a: before_unreadable_page(_c_copy(xp, a)) if xp is np else _c_copy(xp, a)
_engine = dispatch._engine
dispatch._engine = lambda device: (np, engine) if device == "cpu" else _engine(device)
