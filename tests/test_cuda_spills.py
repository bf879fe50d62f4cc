"""The CUDA kernels compile for sm_90 with no register spills, no stack frame and no compiler warnings (issue 13):
every per-dtype translation unit of csrc/, the row plan's and the inference entry's through `nvcc -Xptxas -v`, in
parallel. A stack frame is local memory every thread writes: e.g. a kernel that indexes an array in a by-value
struct argument with a runtime index copies the whole struct there first (infer.cu's copies ran 4x slower so on an
H100, bench/results/gpu-H100-20261127e). Skipped where nvcc is missing."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")
                                     if os.access(p, os.X_OK)), None)
SPILLS = re.compile(r"Function properties for (\w+)\s+(\d+) bytes stack frame, "
                    r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_sm90_kernels_do_not_spill(tmp_path):
    units = sorted(CSRC.glob("scan_*.cu")) + [CSRC / "plan.cu", CSRC / "infer.cu"]
    assert len(units) == 6  # one per dtype (float32, float64, float16, bfloat16), the row plan, inference
    jobs = {u.name: subprocess.Popen(
        [NVCC, "-arch=sm_90", "-O3", "-Xptxas", "-v", "--expt-relaxed-constexpr", "-lineinfo", f"-I{CSRC}", "-c",
         str(u), "-o", str(tmp_path / f"{u.stem}.o")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for u in units}
    for name, job in jobs.items():
        log = job.communicate(timeout=600)[0]
        assert job.returncode == 0, f"{name}:\n{log}"
        assert "warning" not in log.lower(), f"{name}:\n{log}"
        kernels = set(re.findall(r"Compiling entry function '(\w+)'", log))
        reports = {f: (frame, stores, loads) for f, frame, stores, loads in SPILLS.findall(log)}
        assert kernels and kernels <= set(reports), f"{name}: no ptxas report\n{log}"
        spilled = [f for f, counts in reports.items() if counts != ("0", "0", "0")]
        assert not spilled, f"{name}: a stack frame or register spills in {spilled}\n{log}"
