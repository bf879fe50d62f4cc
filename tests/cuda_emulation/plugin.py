"""pytest plugin (``-p plugin`` with this folder on PYTHONPATH): the "cpu" device runs maskrnn._cuda, the GPU
engine's Python layer, on NumPy arrays with the host-emulated CUDA kernels built by build.py. The suite's CPU
cases then check the CUDA kernels against the float64 reference without a GPU."""

import importlib.machinery
import importlib.util
import sysconfig
from pathlib import Path

import numpy as np

import maskrnn._cuda as engine
import maskrnn._dispatch as dispatch

_BUILD = Path(__file__).resolve().parents[2] / "build" / "cuda_emulation"
_path = _BUILD / f"_ext{sysconfig.get_config_var('EXT_SUFFIX')}"
_loader = importlib.machinery.ExtensionFileLoader("_ext", str(_path))
_spec = importlib.util.spec_from_file_location("_ext", _path, loader=_loader)
emulated = importlib.util.module_from_spec(_spec)
_loader.exec_module(emulated)


class _Host(np.ndarray):
    """A NumPy view with CuPy's ``.data.ptr``, so the engine's own pointer checks run unchanged."""

    @property
    def data(self):
        return type("Data", (), {"ptr": self.ctypes.data})


_device_ptr = engine._ptr
engine._ptr = lambda a: _device_ptr(a.view(_Host))
engine._ext = lambda: emulated
engine._stream = lambda: 0
# NaN-filled scratch: a kernel reading a running gradient before setting it shows up in the results.
engine._scratch = lambda n, dh: np.full((n,) + dh.shape, np.nan, np.float64 if dh.dtype == np.float64 else np.float32)
_engine = dispatch._engine
dispatch._engine = lambda device: (np, engine) if device == "cpu" else _engine(device)
