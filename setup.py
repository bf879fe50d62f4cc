"""Thin CMake driver (pybind/cmake_example style): the extension's build logic lives in CMakeLists.txt.

The native extension (maskrnn._ext) is optional unless MASKRNN_CUDA=ON: without CMake or a C++ compiler the
install goes on without it (one line says so; maskrnn.info() reports native_extension: False) and everything
runs on the CPU engine. The build also compiles the common CPU kernels into the package (maskrnn/_precompile.py).

Environment:
  MASKRNN_CUDA=AUTO|ON|OFF   build the CUDA kernels when nvcc is found (AUTO, default), always, or never.
                             ON makes a missing CMake, C++ compiler or nvcc an error.
  MASKRNN_CUDA_ARCHS="90"    override the CUDA architecture list (CMake CUDA_ARCHITECTURES syntax).
  MASKRNN_BUILD_TYPE         CMake build type, Release by default.
  MASKRNN_PRECOMPILE=0       do not compile the CPU kernels at build time (they compile on first use).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CUDA_MODE = os.environ.get("MASKRNN_CUDA", "AUTO").upper()


def _stop(reason: str):
    """The build's last line: MASKRNN_CUDA=ON makes a missing tool an error, otherwise the extension is skipped."""
    if CUDA_MODE == "ON":
        sys.exit(f"maskrnn: MASKRNN_CUDA=ON but {reason}")
    print(f"maskrnn: {reason}: installing without the native extension (the CPU engine needs none)", flush=True)


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def run(self) -> None:
        super().run()  # with or without the extension (_stop), then the kernels into the built package
        if not (self.inplace or getattr(self, "editable_mode", False)):
            precompile(self.build_lib, self.build_temp)

    def build_extension(self, ext: CMakeExtension) -> None:
        if shutil.which("cmake") is None:
            return _stop("CMake was not found (pip install cmake)")
        try:
            import pybind11
        except ImportError:
            return _stop("pybind11 was not found (pip install pybind11)")
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        ninja = shutil.which("ninja") if os.environ.get("CMAKE_GENERATOR") is None else None
        build_temp = Path(self.build_temp) / ext.name / _toolchain_key(pybind11.__version__, ninja)
        build_temp.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MASKRNN_BUILD_TYPE', 'Release')}",
            f"-DMASKRNN_CUDA={CUDA_MODE}",
            f"-DMASKRNN_CUDA_ARCHS={os.environ.get('MASKRNN_CUDA_ARCHS', '')}",  # also when unset: the folder is kept
        ]
        if ninja:  # its path is pip's temporary one: the cached path of the previous install is gone
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        configured = subprocess.run(["cmake", ext.sourcedir, *args], cwd=build_temp).returncode == 0
        skip = build_temp / "maskrnn_skip.txt"
        if skip.exists():
            return _stop(skip.read_text())
        if not configured:
            sys.exit("maskrnn: configuring the native extension failed (CMake's messages above)")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


def _toolchain_key(pybind11_version: str, ninja: str | None) -> str:
    """The build folder's name: one folder per toolchain, so that a second `pip install .` in the same tree
    (the README's second command) reuses the first one's objects. pip's isolated build environment is a new
    temporary folder each time, so its paths (cmake, ninja, pybind11) are not part of the key, their versions
    are; CMake reads the compiler variables at the first configure only, and a compiler found missing stays
    missing in its cache, so they and the compilers found on PATH are. Options are passed at every configure."""

    def version(tool, where=True):
        path = shutil.which(tool)
        if path is None:
            return "none"
        run = subprocess.run([path, "--version"], capture_output=True, text=True)
        return f"{path if where else ''} {run.stdout.strip()}"

    compilers = {name: os.environ.get(name, "") for name in
                 ("CC", "CXX", "CUDACXX", "CUDAHOSTCXX", "CFLAGS", "CXXFLAGS", "CUDAFLAGS", "LDFLAGS")}
    key = [sys.executable, sys.version, sysconfig.get_config_var("EXT_SUFFIX"), pybind11_version,
           version("cmake", where=False), ninja and version(ninja, where=False), os.environ.get("CMAKE_GENERATOR"),
           sorted(compilers.items()), version(compilers["CXX"] or "c++"), version(compilers["CUDACXX"] or "nvcc")]
    return hashlib.sha1("|".join(map(str, key)).encode()).hexdigest()[:10]


def precompile(build_lib: str, build_temp: str) -> None:
    """Compiles the common CPU kernels into build_lib's kernel cache, which the wheel ships: the first call after
    `pip install` then loads machine code instead of compiling it (seconds). It runs after the native extension
    is built (CMakeBuild.run): the kernels take another variant when its packed GEMM splits the batch across
    threads (maskrnn/_cpu/rows.py), which a build_py-time run, before the extension existed, never compiled.
    The code is for this machine's CPU; elsewhere, or with another Numba, the kernels compile on first use.
    A second build in the same tree (the README's second `pip install .`) loads the first one's entries when
    the package's sources, the extension's presence and the versions are the same (the cache checks its own
    entries too); otherwise the old entries are deleted first, so that the wheel ships none that go unused."""
    if os.environ.get("MASKRNN_PRECOMPILE", "1") == "0":
        return
    build_lib = Path(build_lib).resolve()
    stamp_file, stamp = Path(build_temp) / "precompiled.txt", _precompile_stamp(build_lib)
    if not stamp_file.exists() or stamp_file.read_text() != stamp:
        stamp_file.unlink(missing_ok=True)
        for stale in (build_lib / "maskrnn" / "_cpu" / "__pycache__").glob("*.nb[ic]"):
            stale.unlink()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(build_lib), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-m", "maskrnn._precompile"], cwd=build_lib, env=env,
                         capture_output=True, text=True)
    if run.returncode == 0:
        print(f"maskrnn: {run.stdout.strip()}", flush=True)
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp)
    else:
        why = (run.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"maskrnn: CPU kernels not precompiled ({why}): they compile on first use", flush=True)


def _precompile_stamp(build_lib: Path) -> str:
    """What the kernel cache's entries in build_lib depend on: every source file of the package, which native
    extension is there, Python's and the compiling packages' versions."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"{sys.version}|{version('numba')}|{version('llvmlite')}|{version('numpy')}".encode())
    package = build_lib / "maskrnn"
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package)}\0".encode() + path.read_bytes())
    digest.update(repr(sorted(p.name for p in package.glob("_ext.*"))).encode())
    return digest.hexdigest()


setup(ext_modules=[CMakeExtension("maskrnn._ext")], cmdclass={"build_ext": CMakeBuild})
