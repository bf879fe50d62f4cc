"""Shared fixtures: one tolerance table, the device fixture (CPU always, CUDA when present), random data."""

import sys
import zlib

import numpy as np
import pytest

from maskrnn._info import cuda_ready

# Relative error bound (max |ours - reference| / max |reference|) per dtype.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-2, "bfloat16": 5e-2}


def cuda_skip_reason():
    ok, why = cuda_ready()
    return None if ok else why


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@pytest.fixture(params=["emulated", "cuda"])
def xp(request):
    """The array module of the GPU engine's arrays (maskrnn._cuda called directly): NumPy on the emulated kernels
    (``-p plugin`` after tests/cuda_emulation/build.py), CuPy on a GPU."""
    if request.param == "emulated":
        if "plugin" not in sys.modules:
            pytest.skip("the emulated kernels run with -p plugin after tests/cuda_emulation/build.py")
        return np
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    return cupy


def to_device(a, device):
    if a is None or device == "cpu":
        return a
    import cupy

    return cupy.asarray(a)


def to_host(a):
    if a is None:
        return None
    return a.get() if hasattr(a, "get") else np.asarray(a)


# The native product's instruction-set levels (maskrnn/_cpu/gemm.py), best first.
GEMM_LEVELS = ["avx512", "avx2", "portable"]


def gemm_level(name):
    """The native product's addresses at level name, or a skip where that level does not run here."""
    from maskrnn._cpu import gemm

    where = gemm.addresses(name)
    if not where["level"]:
        pytest.skip(f"the native product at level {name} does not run here (no extension, or not this CPU)")
    return where


def rel_err(ours, ref):
    ours, ref = to_host(ours).astype(np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-30))


def make_mask(rng, kind, B, T):
    """(B,T) bool masks of each kind the kernels must handle."""
    lengths = rng.integers(0, T + 1, B)
    if kind == "none":
        return None
    if kind == "post":
        return np.arange(T)[None, :] < lengths[:, None]
    if kind == "pre":
        return np.arange(T)[None, :] >= (T - lengths)[:, None]
    if kind == "holes":
        m = rng.random((B, T)) > 0.3
        m[0] = False  # one all-masked row
        return m
    if kind == "post_holes":  # post-padded rows with holes: masked kernels, rows stop after their last real step
        m = (np.arange(T)[None, :] < lengths[:, None]) & (rng.random((B, T)) > 0.2)
        m[0] = False
        return m
    if kind == "empty":
        return np.zeros((B, T), bool)
    raise ValueError(kind)


@pytest.fixture
def rng(request):
    # Fresh data per test, reproducible from the test id: crc32, not hash(), which Python salts per process
    # (a failure seen once could not be replayed).
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
