"""Thin CMake driver (pybind/cmake_example style): all build logic lives in CMakeLists.txt.

Environment:
  MASKRNN_CUDA=AUTO|ON|OFF   build the CUDA kernels when nvcc is found (AUTO, default), always, or never.
  MASKRNN_CUDA_ARCHS="90"    override the CUDA architecture list (CMake CUDA_ARCHITECTURES syntax).
  MASKRNN_BUILD_TYPE         CMake build type, Release by default.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # One build folder per toolchain: pip's isolated build environments live in fresh temporary paths,
        # and a CMake cache pointing at a deleted one fails the next `pip install .` in the same tree.
        tools = f"{sys.executable}|{shutil.which('cmake')}|{shutil.which('ninja')}"
        build_temp = Path(self.build_temp) / ext.name / hashlib.sha1(tools.encode()).hexdigest()[:10]
        build_temp.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MASKRNN_BUILD_TYPE', 'Release')}",
            f"-DMASKRNN_CUDA={os.environ.get('MASKRNN_CUDA', 'AUTO')}",
        ]
        if os.environ.get("MASKRNN_CUDA_ARCHS"):
            args.append(f"-DMASKRNN_CUDA_ARCHS={os.environ['MASKRNN_CUDA_ARCHS']}")
        if os.environ.get("CMAKE_GENERATOR") is None:
            args.append("-GNinja")
        subprocess.run(["cmake", ext.sourcedir, *args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("maskrnn._ext")], cmdclass={"build_ext": CMakeBuild})
