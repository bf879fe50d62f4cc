"""MASKRNN_CUDA_SYNC=1 (csrc/check.h): every launch waits for its kernel, so a kernel that faults raises at its own
launch, and the error names that launch (file and line), where a GPU reports the fault at some later call. The
emulation reports faults that later way with EMU_ASYNC_ERRORS=1 (include/emu_core.h). check.h reads the variable
once per process: each case runs in a fresh one. Runs with the CUDA-emulation suite (``-p plugin``)."""

import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SELFTEST = sys.modules["plugin"].BUILD / f"_emu_selftest{importlib.machinery.EXTENSION_SUFFIXES[0]}"

# A kernel that faults (lanes shuffle with lanes that exited), then a healthy launch, then a launch over the block
# size limit; prints how each ended.
CHILD = """
import importlib.machinery, importlib.util, sys
import numpy as np
loader = importlib.machinery.ExtensionFileLoader("_emu_selftest", sys.argv[1])
st = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_emu_selftest", sys.argv[1],
                                                                            loader=loader))
loader.exec_module(st)
out = np.zeros(32, np.int32)
for name, call in [("fault", lambda: st.shuffle_with_exited_lanes(1, 32, 0, out.ctypes.data)),
                   ("healthy", lambda: st.launch(1, 1, 32, 1, 1, 0, 0)),
                   ("too_big", lambda: st.launch(1, 1, 1025, 1, 1, 0, 0))]:
    try:
        call()
        print(name, "| ok")
    except RuntimeError as e:
        print(name, "|", e)
"""


def child_env(sync):
    env = dict(os.environ, EMU_ASYNC_ERRORS="1", PYTHONPATH=str(ROOT / "tests" / "cuda_emulation"))
    env.pop("MASKRNN_CUDA_SYNC", None)
    if sync:
        env["MASKRNN_CUDA_SYNC"] = "1"
    return env


def launches(sync):
    done = subprocess.run([sys.executable, "-c", CHILD, str(SELFTEST)], env=child_env(sync), capture_output=True,
                          text=True, timeout=120, check=True)
    return dict(line.split(" | ", 1) for line in done.stdout.splitlines())


def test_a_fault_raises_at_its_own_launch():
    got = launches(sync=True)
    assert "kernel run (MASKRNN_CUDA_SYNC=1)" in got["fault"]
    assert "selftest.cu:" in got["fault"] and "cudaErrorLaunchFailure" in got["fault"]
    assert "exited" in got["fault"]  # the emulation's account of the fault
    assert got["healthy"] == "ok"
    assert "kernel launch" in got["too_big"] and "cudaErrorInvalidConfiguration" in got["too_big"]


def test_without_it_the_fault_surfaces_at_a_later_launch():
    got = launches(sync=False)
    assert got["fault"] == "ok"
    assert "an earlier kernel faulted" in got["healthy"] and "exited" in got["healthy"]
    assert "cudaErrorInvalidConfiguration" in got["too_big"]


def test_scans_pass_with_it():
    subset = ["tests/test_scan.py", "tests/test_grad.py", "-k",
              "(test_matches_reference and float32 and False-False-False) or test_packed_gradients_equal_masked"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "plugin", "-q", "-p", "no:cacheprovider", *subset],
                          cwd=ROOT, env=child_env(sync=True), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert int(re.search(r"(\d+) passed", done.stdout)[1]) == 3 * 6 + 3 * 2  # every cell x mask kind; x post, pre
