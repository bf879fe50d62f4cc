"""Build and device information: ``maskrnn.info()`` and ``python -m maskrnn info``."""

__version__ = "0.1.0"


def _extension():
    try:
        from . import _ext
    except ImportError:
        return None
    return _ext


def info() -> dict:
    """version, cpu_backend, cuda_extension (bool: built with CUDA), cuda_archs, gpus (device names)."""
    import numba

    ext = _extension()
    built = bool(ext is not None and ext.cuda_built)
    return {
        "version": __version__,
        "cpu_backend": f"numba {numba.__version__}",
        "native_extension": ext is not None,
        "cuda_extension": built,
        "cuda_archs": ext.cuda_archs.split(",") if built else [],
        "gpus": list(ext.gpu_names()) if built else [],
    }


def cuda_ready():
    """(True, "") when the CUDA engine can run here, else (False, why and how to fix)."""
    ext = _extension()
    if ext is None or not ext.cuda_built:
        return False, "maskrnn was built without CUDA: reinstall with nvcc on PATH (MASKRNN_CUDA=ON pip install .)"
    if not list(ext.gpu_names()):
        return False, "no CUDA GPU is visible"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "CuPy is not installed: pip install 'maskrnn[gpu]' (cupy-cuda13x with its CUDA libraries)"
    return True, ""
