"""The CPU kernels' cache (maskrnn/_cpu/cache.py): damaged entries are recompiled, never fatal; no writable
location means uncached kernels, not an error; the temporary-directory fallback is private to its user.
The read-only install as a non-root user is checked for real in CI (.ci/install_checks.sh)."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import TOLERANCE
from numba.core import caching
from numba.core import config as numba_config

import maskrnn
from maskrnn import _cpu
from maskrnn._cpu import cache

ROOT = Path(maskrnn.__file__).resolve().parent.parent

# One fresh process: a float32 LSTM forward (masked and packed kernels) against the float64 reference, with
# the warnings it raised and whether the kernels came from the cache.
_RUN = """
import json, warnings
import numpy as np
import maskrnn
from maskrnn import reference
from maskrnn._cpu import infer
rng = np.random.default_rng(int(__import__("sys").argv[1]))
B, T, I, H = 3, 5, 4, 6
x = rng.standard_normal((B, T, I), dtype=np.float32)
w = [rng.standard_normal(s, dtype=np.float32) * 0.5 for s in ((I, 4 * H), (H, 4 * H), (4 * H,))]
mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ours = maskrnn.lstm(x, *w, mask=mask)
ref = reference.lstm(x.astype(np.float64), *[a.astype(np.float64) for a in w], mask=mask)
err = max(float(np.max(np.abs(o - r)) / np.max(np.abs(r))) for o, r in zip(ours, ref))
kernel = infer._lstm_steps  # the inference kernel (maskrnn/_cpu/infer.py)
print(json.dumps(dict(err=err, warnings=[str(w.message) for w in caught],
                      hits=sum(kernel._cache_hits.values()), misses=sum(kernel._cache_misses.values()))))
"""


def _run(tmp_path, seed):
    """In a copy of the package without caches, so that only tmp_path/cache holds its kernels."""
    source = tmp_path / "src"
    if not source.exists():
        shutil.copytree(ROOT / "maskrnn", source / "maskrnn", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(source))
    out = subprocess.run([sys.executable, "-c", _RUN, str(seed)], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _truncate(paths):
    assert paths
    for path in paths:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_damaged_cache_files_are_recompiled(tmp_path):
    first = _run(tmp_path, 0)
    assert first["err"] < TOLERANCE["float32"] and first["misses"] == 1 and not first["warnings"]
    cached = tmp_path / "cache"
    index = sorted(cached.rglob("infer._lstm_steps-*.nbi"))
    data = sorted(cached.rglob("infer._lstm_steps-*.nbc"))
    assert len(index) == 1 and data

    _truncate(index)  # EOFError / UnpicklingError inside Numba's index reader
    second = _run(tmp_path, 1)
    assert second["err"] < TOLERANCE["float32"] and second["misses"] == 1
    assert any("discarding an unreadable kernel cache entry" in w for w in second["warnings"]), second

    _truncate(sorted(cached.rglob("infer._lstm_steps-*.nbc")))  # the index is sound, the machine code is not
    third = _run(tmp_path, 2)
    assert third["err"] < TOLERANCE["float32"] and third["misses"] == 1
    assert any("discarding an unreadable kernel cache entry" in w for w in third["warnings"]), third

    fourth = _run(tmp_path, 3)  # the rewritten entries load cleanly
    assert fourth["err"] < TOLERANCE["float32"] and fourth["hits"] == 1 and fourth["misses"] == 0
    assert not fourth["warnings"]


def _double(a):
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        out[i] = 2 * a[i]
    return out


def test_no_writable_location_runs_uncached(monkeypatch):
    monkeypatch.setattr(cache._Impl, "_locator_classes", [])
    kernel = cache.njit(cache=True)(_double)
    assert isinstance(kernel._cache, caching.NullCache)
    a = np.random.default_rng(0).standard_normal(7)
    np.testing.assert_array_equal(kernel(a), 2 * a)


def test_cache_location_order(monkeypatch, tmp_path):
    """NUMBA_CACHE_DIR first, then the package's __pycache__, the user cache, the temporary directory, and the
    package's read-only __pycache__ (load only)."""
    monkeypatch.setattr(numba_config, "CACHE_DIR", str(tmp_path / "env"))
    kernel = cache.njit(cache=True)(_double)
    assert Path(kernel._cache.cache_path).is_relative_to(tmp_path / "env")
    expected = [caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator,
                cache._TempDirLocator, cache._ShippedLocator]
    assert all(issubclass(c, e) for c, e in zip(cache._Impl._locator_classes, expected, strict=True))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_temporary_directory_must_be_private(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root = tmp_path / f"maskrnn-numba-cache-{os.getuid()}"
    locator = cache._TempDirLocator.from_function(_double, __file__)
    assert locator is not None and Path(locator.get_cache_path()).is_relative_to(root)
    assert root.stat().st_mode & 0o777 == 0o700
    root.chmod(0o777)  # as if another user had planted it open for writing
    assert cache._TempDirLocator.from_function(_double, __file__) is None


def test_every_cached_kernel_uses_the_kernel_cache():
    """A kernel declared with numba's own njit(cache=True) would bring back 'no locator available'; the gate
    math is inlined into the kernels and cached with them."""
    dispatchers = [obj for mod in vars(_cpu).values() if isinstance(mod, types.ModuleType)
                   for obj in vars(mod).values() if hasattr(obj, "_cache") and hasattr(obj, "py_func")]
    kernels = [d for d in dispatchers if d.targetoptions.get("inline") != "always"]
    assert len(kernels) >= 5
    for d in kernels:
        assert isinstance(d._cache, cache.KernelCache), d.py_func


def test_stamp_covers_every_source_file_of_the_engine(monkeypatch, tmp_path):
    """An edit to cells.py (inlined into every kernel) invalidates the cached kernels of lstm.py and gru.py."""
    for path in cache._PACKAGE_DIR.glob("*.py"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(cache, "_PACKAGE_DIR", tmp_path)
    cache._sources_digest.cache_clear()
    before = cache._sources_digest()
    with open(tmp_path / "cells.py", "a") as f:
        f.write("# edited\n")
    cache._sources_digest.cache_clear()
    assert cache._sources_digest() != before
    cache._sources_digest.cache_clear()
