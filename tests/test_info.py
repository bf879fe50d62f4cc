"""maskrnn.info() and `python -m maskrnn info`."""

import json
import os
import shutil
import subprocess
import sys

import maskrnn


def test_info_keys():
    info = maskrnn.info()
    assert set(info) >= {"version", "cpu_backend", "cuda_extension", "cuda_archs", "gpus"}
    assert info["version"] == maskrnn.__version__
    assert info["cpu_backend"].startswith("numba")
    assert isinstance(info["cuda_extension"], bool) and isinstance(info["gpus"], list)


def test_cli_prints_info():
    out = subprocess.run([sys.executable, "-m", "maskrnn", "info"], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["version"] == maskrnn.__version__


def test_ci_builds_the_cuda_extension():
    """CI has nvcc and no GPU: the installed package must still carry the CUDA kernels."""
    if not (os.environ.get("CI") and shutil.which("nvcc")):
        import pytest

        pytest.skip("only checked in CI, where nvcc is on PATH at install time")
    info = maskrnn.info()
    assert info["cuda_extension"], info
    assert "90" in " ".join(info["cuda_archs"])
