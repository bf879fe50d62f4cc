"""Build the host emulation of the CUDA kernels: csrc's kernel headers with every ``k<<<grid, block, smem,
stream>>>(args);`` rewritten into ``emu_launch(grid, block, [&] { k(args); });``, compiled with g++ (C++20)
together with csrc/bindings.cpp into build/cuda_emulation/_ext*.so, the same Python API as the real extension.
Needs the CUDA headers (cuda_runtime.h, cuda_fp16.h), not a GPU or nvcc. Then run the suite on it:

    python tests/cuda_emulation/build.py
    PYTHONPATH=tests/cuda_emulation pytest -p plugin tests/test_scan.py tests/test_grad.py tests/test_fuzz.py
"""

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pybind11

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "cuda_emulation"
LAUNCH = re.compile(r"([\w:]+(?:<[^;{}()]*?>)?)<<<(.*?),(.*?),(.*?),(.*?)>>>\((.*?)\);", re.S)
KERNEL_HEADERS = ["tile.cuh", "lstm_kernels.cuh", "gru_kernels.cuh", "instantiate.cuh"]


def main():
    inc = OUT / "include"
    inc.mkdir(parents=True, exist_ok=True)
    for name in KERNEL_HEADERS:
        text = (ROOT / "csrc" / name).read_text()
        text = LAUNCH.sub(lambda m: f"emu_launch({m[2]}, {m[3]}, [&] {{ {m[1]}({m[6]}); }});", text)
        (inc / name).write_text(text)
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    target = OUT / f"_ext{sysconfig.get_config_var('EXT_SUFFIX')}"
    # The rewritten headers come first; the others (scan.h, check.h, cell_math.cuh) from csrc.
    cmd = ["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-Wall", "-Wno-unknown-pragmas",
           f"-I{inc}", f"-I{ROOT / 'csrc'}", f"-I{cuda}", f"-I{sysconfig.get_paths()['include']}",
           f"-I{pybind11.get_include()}", "-DMASKRNN_WITH_CUDA=1", '-DMASKRNN_CUDA_ARCHS="emulated"',
           str(Path(__file__).with_name("emulate.cpp")), str(ROOT / "csrc" / "bindings.cpp"), "-o", str(target)]
    subprocess.run(cmd, check=True)
    print(target)


if __name__ == "__main__":
    sys.exit(main())
