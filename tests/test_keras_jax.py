"""The Keras layer tests again on Keras's JAX backend. Keras picks its backend once per process (KERAS_BACKEND at
import), and this suite runs on torch, so tests/test_keras_layers.py runs in a fresh process with
KERAS_BACKEND=jax (JAX on the CPU; the `test` extra installs it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_keras_layers_on_jax_backend():
    pytest.importorskip("jax")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("this run is on the JAX backend already: tests/test_keras_layers.py ran here")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_keras_layers.py"],
                         cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
