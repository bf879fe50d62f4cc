"""The Keras layer tests again on Keras's JAX backend. Keras picks its backend once per process (KERAS_BACKEND at
import), and this suite runs on torch, so tests/test_keras_layers.py runs in a fresh process with
KERAS_BACKEND=jax (JAX on the CPU; the `test` extra installs it).

The fresh process imports the maskrnn this one tests (the installed build in CI, whose kernels this suite has
compiled and cached already, with its native extension), not the source folder that `python -m pytest` in the
repository root would put first on its path. JAX's compilation cache (a temporary folder) lets identical
programs (Keras's scans at the same shapes, rebuilt for every call) compile once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import maskrnn


@pytest.mark.slow
def test_keras_layers_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("this run is on the JAX backend already: tests/test_keras_layers.py ran here")
    tests = Path(__file__).resolve().parent
    package_parent = str(Path(maskrnn.__file__).resolve().parents[1])
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests.parent),
               str(tests / "test_keras_layers.py")]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
