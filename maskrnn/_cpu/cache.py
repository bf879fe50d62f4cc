"""Where the CPU kernels cache their machine code, and what happens when that is impossible or damaged.

``njit(cache=True, ...)`` here is Numba's ``njit`` with maskrnn's own cache in place of Numba's:

- Location, first that is writable: ``NUMBA_CACHE_DIR``; the package's ``__pycache__``; Numba's per-user cache
  directory; a private directory under the system temporary directory. A read-only install with no writable
  home (a container, a service user) therefore still caches, and when nothing is writable the kernels load
  what the build shipped and compile the rest uncached instead of failing (Numba raises "no locator
  available" at import).
- Kernels compiled when the package was built ship in the package's ``__pycache__`` (setup.py). They are read
  even when that directory is read-only and another location takes the new entries.
- Freshness: an entry is valid for one exact content of every source file of this package folder. Numba's own
  stamp covers only the file defining a kernel, so an edit to the inlined gate math in cells.py went unseen.
- A cache entry that cannot be loaded (a truncated or corrupt index or data file) is reported once, deleted
  and recompiled: a damaged cache is never fatal.
"""

import contextlib
import functools
import glob
import hashlib
import os
import stat
import tempfile
import warnings
from pathlib import Path

from numba import njit as _numba_njit
from numba.core import caching
from numba.core.errors import NumbaIRAssumptionWarning

from .cells import INLINED_SELECT_WARNING

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _PackageStamp:
    """Locator mixin: the source stamp is the content of the whole kernel package."""

    def get_source_stamp(self):
        return ("maskrnn", _sources_digest())


class _EnvDirLocator(_PackageStamp, caching.UserProvidedCacheLocator):
    pass


class _InTreeLocator(_PackageStamp, caching.InTreeCacheLocator):
    pass


class _UserWideLocator(_PackageStamp, caching.UserWideCacheLocator):
    pass


class _TempDirLocator(_PackageStamp, caching.InTreeCacheLocator):
    """A per-user directory under the temporary directory. Cache files are unpickled, so the directory must be
    ours and closed to other users: one planted by someone else in a shared /tmp is refused."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self._root = os.path.join(tempfile.gettempdir(), f"maskrnn-numba-cache-{uid}")
        self._cache_path = os.path.join(self._root, self.get_suitable_cache_subpath(py_file))

    def ensure_cache_path(self):
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        st = os.lstat(self._root)
        owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        if not stat.S_ISDIR(st.st_mode) or not owner_ok or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(f"{self._root} is not a private directory of this user")
        super().ensure_cache_path()

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            return super().from_function(py_func, py_file)
        except FileNotFoundError:  # tempfile.gettempdir(): no usable temporary directory at all
            return None


class _ShippedLocator(_InTreeLocator):
    """Last resort: the package's own (read-only) __pycache__, for loading what the build shipped; saving there
    fails and is skipped (KernelCache.save_overload)."""

    @classmethod
    def from_function(cls, py_func, py_file):
        self = cls(py_func, py_file)
        return self if os.path.isdir(self.get_cache_path()) else None


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_EnvDirLocator, _InTreeLocator, _UserWideLocator, _TempDirLocator, _ShippedLocator]


class KernelCache(caching.FunctionCache):
    """Numba's per-function cache with the locations, the shipped read-only layer and the damage recovery above."""

    _impl_class = _Impl

    def __init__(self, py_func):
        super().__init__(py_func)
        shipped = os.path.join(os.path.dirname(os.path.abspath(self._impl.locator._py_file)), "__pycache__")
        self._files = [self._cache_file]
        if os.path.abspath(shipped) != os.path.abspath(self._cache_path) and os.path.isdir(shipped):
            self._files.append(
                caching.IndexDataCacheFile(shipped, self._impl.filename_base, self._impl.locator.get_source_stamp())
            )

    def load_overload(self, sig, target_context):
        target_context.refresh()
        if not self._enabled:
            return None
        key = self._index_key(sig, target_context.codegen())
        for cache_file in list(self._files):
            try:
                data = cache_file.load(key)
                if data is not None:
                    return self._impl.rebuild(target_context, data)
            except Exception as exc:  # noqa: BLE001 - any unreadable entry is recompiled, whatever broke it
                warnings.warn(
                    f"maskrnn: discarding an unreadable kernel cache entry {cache_file._index_path} "
                    f"({type(exc).__name__}: {exc}); recompiling",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _discard(cache_file)
                if cache_file is not self._cache_file:
                    self._files.remove(cache_file)
        return None

    def save_overload(self, sig, data):
        # A location that stopped being writable (disk full, permissions changed) costs a recompile next
        # time, not this call.
        with contextlib.suppress(OSError):
            self._save_overload(sig, data)


def _discard(cache_file) -> None:
    base = cache_file._index_name[: -len(".nbi")]
    data = glob.glob(os.path.join(glob.escape(cache_file._cache_path), glob.escape(base) + ".*.nbc"))
    for path in [cache_file._index_path, *data]:
        with contextlib.suppress(OSError):
            os.remove(path)


def _cache_for(py_func):
    try:
        return KernelCache(py_func)
    except RuntimeError:  # no writable location at all: run uncached
        return caching.NullCache()


def _quiet_compile(dispatcher):
    """The dispatcher's compile without the warning cells.INLINED_SELECT_WARNING explains."""
    compile_ = dispatcher.compile

    def compile(sig):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", INLINED_SELECT_WARNING, NumbaIRAssumptionWarning)
            return compile_(sig)

    dispatcher.compile = compile


def njit(*, cache=False, **options):
    """``numba.njit(**options)``; ``cache=True`` caches with :class:`KernelCache` (never fails on caching)."""

    def decorate(func):
        dispatcher = _numba_njit(**options)(func)
        if cache:
            dispatcher._cache = _cache_for(dispatcher.py_func)
        _quiet_compile(dispatcher)
        return dispatcher

    return decorate
