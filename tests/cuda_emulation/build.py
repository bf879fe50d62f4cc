"""Build the host emulation of the CUDA kernels (include/emu_core.h says how it works): copies of csrc's
sources with every launch and ``__shared__`` declaration rewritten for the emulation, compiled with g++ (C++20)
together with csrc/bindings.cpp into build/cuda_emulation/_ext*.so, the same Python API as the real extension.
Needs the CUDA headers (cuda_runtime.h, cuda_fp16.h), not a GPU or nvcc. Then run the suite on it:

    python tests/cuda_emulation/build.py
    PYTHONPATH=tests/cuda_emulation pytest -p plugin tests/test_scan.py tests/test_grad.py tests/test_fuzz.py

``--tsan`` builds under ThreadSanitizer into build/cuda_emulation_tsan (load it with LD_PRELOAD=libtsan.so,
see test_tsan.py); ``--drop-barrier FILE:N`` additionally deletes the N-th barrier (``__syncthreads();``,
``cluster.sync();``, ``grid.sync();`` or ``cluster_sync_around(cluster, f);``, which becomes ``f();``; 0-based,
negative from the end) of csrc/FILE in the float32 kernels: a mutant the TSan build must report;
``--define NAME=VALUE`` a macro for the float32 kernels.
Objects are cached in build/cuda_emulation_objects by the hash of their sources and flags.
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pybind11

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
SKIP = {"device_info.cu"}  # queries the driver; emulate.cpp names the one emulated device instead
SHARED = re.compile(r"(?<![\w.])(extern\s+)?__shared__\s+((?:__align__\s*\(\s*\d+\s*\)\s*|alignas\s*\(\s*\d+\s*\)\s*)*)"
                    r"([^;=]*?)\s*\b(\w+)\s*((?:\[[^\]]*\]\s*)*);")
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX")
OBJECTS = ROOT / "build" / "cuda_emulation_objects"


def _balanced(text, i, open_, close):
    """Index just past the bracket that closes text[i] (== open_)."""
    depth = 0
    for j in range(i, len(text)):
        depth += {open_: 1, close: -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    raise ValueError(f"unbalanced {open_} at offset {i}")


def _kernel_start(text, end):
    """Start of the kernel expression ending at `end` (a name, maybe qualified, maybe with template arguments)."""
    i = end
    while i > 0:
        if text[i - 1] == ">":  # template arguments: walk back to the matching '<' (ignoring any in parentheses)
            angle = paren = 0
            while i > 0:
                i -= 1
                c = text[i]
                paren += {")": 1, "(": -1}.get(c, 0)
                if paren == 0:
                    angle += {">": 1, "<": -1}.get(c, 0)
                if angle == 0 and paren == 0:
                    break
        elif re.match(r"[\w:]", text[i - 1]):
            i -= 1
        elif text[i - 1].isspace() and re.match(r"[\w:<>]", text[i - 2] if i > 1 else ""):
            j = i - 1
            while j > 0 and text[j - 1].isspace():
                j -= 1
            if text[j - 1] in ">:" or text[i] in "<:":
                i = j
            else:
                break
        else:
            break
    return i


def rewrite_launches(text):
    """``k<<<cfg>>>(args);`` -> ``emu::chevron(emu::config(cfg), k, args);`` for 2- to 4-argument configs."""
    out, pos = [], 0
    while (start := text.find("<<<", pos)) >= 0:
        name_at = _kernel_start(text, start)
        while text[name_at].isspace():
            name_at += 1
        stop = text.index(">>>", start)
        paren = stop + 3
        while text[paren].isspace():
            paren += 1
        close = _balanced(text, paren, "(", ")")
        kernel, cfg, args = text[name_at:start].strip(), text[start + 3:stop], text[paren + 1:close - 1].strip()
        out.append(text[pos:name_at])
        out.append(f"emu::chevron(emu::config({cfg}), {kernel}{', ' if args else ''}{args})")
        pos = close
    out.append(text[pos:])
    return "".join(out)


def rewrite_shared(text):
    """``__shared__ T name[N];`` -> the calling block's instance; ``extern __shared__ T name[];`` -> the dynamic
    shared memory of the launch."""
    def one(m):
        extern, _, type_, name, dims = m.groups()
        dims = re.sub(r"\s+", "", dims)
        if extern:
            return f"{type_}* {name} = ::emu::dynamic_shared<{type_}>();"
        tag = "[] { static const char tag = 0; return &tag; }()"
        return f"auto& {name} = ::emu::shared<{type_}{dims}>({tag});"
    return SHARED.sub(one, text)


def rewrite(text):
    text = text.replace("cudaLaunchKernelEx(", "::emu::launch_ex(")
    text = text.replace("cudaLaunchCooperativeKernel(", "::emu::launch_cooperative(")
    return rewrite_shared(rewrite_launches(text))


def drop_barrier(text, index, where):
    spots = list(re.finditer(r"__syncthreads\(\);|cluster\.sync\(\);|grid\.sync\(\);|"
                             r"cluster_sync_around\(cluster, (\w+)\);", text))
    if not spots or not -len(spots) <= index < len(spots):
        raise SystemExit(f"{where}: no barrier number {index} (it has {len(spots)})")
    at = spots[index]
    kept = f"{at.group(1)}();" if at.group(1) else ""  # the work inside a split barrier stays
    return text[:at.start()] + "{ /* barrier removed by build.py --drop-barrier */ " + kept + " }" + text[at.end():]


def copy_sources(dest, mutant=None):
    """Rewritten copies of csrc's sources in dest (skipping unchanged files, so their mtimes stay)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(CSRC.iterdir()):
        if src.suffix not in (".cu", ".cuh", ".h") or src.name in SKIP:
            continue
        text = rewrite(src.read_text())
        if mutant and mutant[0] == src.name:
            text = drop_barrier(text, mutant[1], src.name)
        target = dest / src.name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


def compile_object(source, includes, flags):
    """g++ -c, cached in OBJECTS by the hash of the flags and the contents of the source and of this project's
    include folders (a rebuild compiles only what changed; the TSan build reuses the plain objects)."""
    digest = hashlib.sha1(" ".join([source.name, *flags]).encode())
    for folder in includes:
        if ROOT in folder.parents:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    digest.update(f.name.encode() + f.read_bytes())
    digest.update(source.read_bytes())
    obj = OBJECTS / f"{source.stem}-{digest.hexdigest()[:16]}.o"
    if not obj.exists():
        language = ["-x", "c++"] if source.suffix == ".cu" else []
        cmd = ["g++", *flags, *(f"-I{d}" for d in includes), *language, "-c", str(source), "-o", f"{obj}.tmp"]
        subprocess.run(cmd, check=True)
        os.replace(f"{obj}.tmp", obj)
    return obj


def build(out, tsan=False, mutant=None, defines=()):
    """Builds out/_ext*.so (and, plain, out/_emu_selftest*.so); returns its path. Under TSan only the float32
    kernels, the runtime and the bindings are instrumented: the other dtypes' objects are the plain build's.
    defines: NAME=VALUE macros for the float32 kernels (the TSan build of the register kernels)."""
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    src = out / "src"
    copy_sources(src)
    flags = ["-std=c++20", "-fPIC", "-pthread", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-attributes",
             "-DMASKRNN_WITH_CUDA=1", '-DMASKRNN_CUDA_ARCHS="emulated"']
    sanitize = ["-g", "-fsanitize=thread", "-Wno-tsan"] if tsan else []
    # The emulation headers come first (cooperative_groups.h), the rewritten sources next, the toolkit last.
    base = [HERE / "include", src, cuda]
    py = [Path(sysconfig.get_paths()["include"]), Path(pybind11.get_include())]
    # An OS thread per CUDA thread (this machine starts ~30000 at most): csrc/infer.cu's grid-stride kernels launch
    # a few thousand threads.
    kernels = [*flags, "-include", "emu_device.h", "-DMASKRNN_MAX_GRID_THREADS=256"]
    f32 = sanitize + [f"-D{d}" for d in defines]  # the float32 kernels' own flags
    jobs = [(f, base, kernels + (f32 if f.name == "scan_f32.cu" else [])) for f in sorted(src.glob("*.cu"))]
    if mutant:
        mutated = out / "mutant"
        copy_sources(mutated, mutant)
        jobs = [(mutated / f.name, [HERE / "include", mutated, cuda], fl) if f.name == "scan_f32.cu" else (f, i, fl)
                for f, i, fl in jobs]
    jobs.append((HERE / "emulate.cpp", base, flags + sanitize))
    jobs.append((CSRC / "bindings.cpp", [*base, *py], flags + sanitize))
    if not tsan:  # the emulation's own tests (test_emulation.py)
        selftest = out / "selftest" / "selftest.cu"
        selftest.parent.mkdir(exist_ok=True)
        text = rewrite((HERE / "selftest.cu").read_text())
        if not selftest.exists() or selftest.read_text() != text:
            selftest.write_text(text)
        jobs.append((selftest, [*base, *py], kernels))
    OBJECTS.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        objects = list(pool.map(lambda job: compile_object(*job), jobs))
    target = out / f"_ext{EXTENSION}"
    ext_objects = objects if tsan else objects[:-1]
    subprocess.run(["g++", "-shared", "-pthread", *sanitize, *map(str, ext_objects), "-o", str(target)], check=True)
    if not tsan:
        runtime = objects[-3]  # emulate.cpp's: the CUDA runtime calls
        subprocess.run(["g++", "-shared", "-pthread", str(runtime), str(objects[-1]), "-o",
                        str(out / f"_emu_selftest{EXTENSION}")], check=True)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tsan", action="store_true", help="build under ThreadSanitizer")
    parser.add_argument("--drop-barrier", metavar="FILE:N", help="delete the N-th barrier of csrc/FILE")
    parser.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                        help="a macro for the float32 kernels (as MASKRNN_PERSIST_REG_K=2)")
    parser.add_argument("--out", type=Path, help="build folder (default build/cuda_emulation[_tsan][_mutant])")
    args = parser.parse_args(argv)
    mutant = None
    if args.drop_barrier:
        name, _, index = args.drop_barrier.partition(":")
        mutant = (name, int(index or -1))
    default = "cuda_emulation" + ("_tsan" if args.tsan else "") + ("_mutant" if mutant else "")
    print(build(args.out or ROOT / "build" / default, args.tsan, mutant, args.define))


if __name__ == "__main__":
    sys.exit(main())
