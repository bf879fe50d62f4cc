"""``python -m maskrnn bench``: maskrnn against its peers on SPEC.md section 6's workloads.

Every timed runner gets warm-up calls first (Numba compile, CUDA module load, Keras tracing), then the
median over repeats, cycling through several freshly drawn random batches. GPU runs are timed with CUDA
events. Peers that are missing or do not apply are reported as skipped, with the reason.
Ratios are peer time / maskrnn time: above 1 means maskrnn is faster.
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from . import _info
from ._bench_runners import CUDNN, RUNNERS, TRAIN_CELLS, _Skip, workload

CONFIGS = [(64, 100, 128, 256), (16, 200, 64, 128), (128, 50, 256, 512), (4, 200, 256, 512), (256, 100, 512, 1024)]
GPU_ONLY = {(256, 100, 512, 1024)}
QUICK = [(64, 100, 128, 256)]
PEERS = ["maskrnn-fp16", "torch-unpacked", "torch-packed", "keras", *CUDNN]
PASSES = ["fwd", "fwd+bwd", "train"]  # train: a whole training step of a small model (see _bench_runners._train_runner)
SPREAD_LIMIT = 0.25  # a row is measured again while a runner's IQR exceeds this fraction of its median
MAX_ATTEMPTS = 3


def _timer(device):
    if device == "cuda":
        import cupy

        def timed(fn, i):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn(i)
            stop.record()
            stop.synchronize()
            return cupy.cuda.get_elapsed_time(start, stop) / 1e3
    else:
        def timed(fn, i):
            t0 = time.perf_counter()
            fn(i)
            return time.perf_counter() - t0
    return timed


def _stats(samples):
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return dict(median=float(median), q1=float(q1), q3=float(q3), min=float(np.min(samples)),
                max=float(np.max(samples)))


def measure(fns, device, repeats, warmup=2):
    """Times the runners fns {impl: run} in turns: round r runs every runner once, starting at a rotating
    position. Returns ({impl: stats in seconds}, {impl: first-call seconds})."""
    first = {}
    for impl, fn in fns.items():
        t0 = time.perf_counter()
        fn(0)
        first[impl] = time.perf_counter() - t0
        for i in range(1, warmup):
            fn(i)
    timed = _timer(device)
    names = list(fns)
    samples = {impl: [] for impl in names}
    for r in range(repeats):
        for k in range(len(names)):
            impl = names[(r + k) % len(names)]
            samples[impl].append(timed(fns[impl], r))
    return {impl: _stats(v) for impl, v in samples.items()}, first


def stat_rows(case, stats, ours, **extra):
    """Report rows of one case from measure's {impl: stats}: milliseconds, ratio = impl median / ours median."""
    return [dict(case, impl=impl, median_ms=st["median"] * 1e3, q1_ms=st["q1"] * 1e3, q3_ms=st["q3"] * 1e3,
                 min_ms=st["min"] * 1e3, max_ms=st["max"] * 1e3,
                 ratio=None if impl == ours else st["median"] / stats[ours]["median"], **extra)
            for impl, st in stats.items()]


def _spread(stats):
    return (stats["q3"] - stats["q1"]) / stats["median"] if stats["median"] > 0 else 0.0


def available_devices():
    return ["cpu"] + (["cuda"] if _info.cuda_ready()[0] else [])


def _commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device_name(device):
    if device == "cuda":
        return ", ".join(_info.info()["gpus"])
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _versions():
    versions = {"maskrnn": _info.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for name in ("numba", "torch", "keras", "cupy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _cudnn_allow_tf32():
    """torch.backends.cudnn.allow_tf32 as the cudnn-packed and cudnn-padded-fp16 peers ran."""
    try:
        import torch
    except ImportError:
        return None
    return bool(torch.backends.cudnn.allow_tf32)


_FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
import maskrnn
imported = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 20, 16), dtype=np.float32)
w = [rng.standard_normal(s, dtype=np.float32) for s in ((16, 128), (32, 128), (128,))]
mask = rng.random((8, 20)) < 0.8
called, cpu = time.perf_counter(), time.process_time()
maskrnn.lstm(x, *w, mask=mask)
print(imported - start, time.perf_counter() - called, time.process_time() - cpu)
"""


def first_call():
    """(import_s, first_call_s, first_call_cpu_s) in a fresh Python process importing this same maskrnn: `import
    maskrnn`, then the wall and CPU time of its first maskrnn.lstm call (float32 forward with a mask), which loads
    or compiles the CPU kernels. The CPU time tells the cost apart from the waiting on a loaded machine."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(_info.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    # cwd=here: `python -c` puts the working directory first on sys.path, and run from a source checkout it
    # would import the source folder instead of the installed build being benchmarked.
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, cwd=here, capture_output=True, text=True,
                         check=True)
    import_s, first_call_s, first_call_cpu_s = map(float, out.stdout.split())
    return import_s, first_call_s, first_call_cpu_s


def _jobs(configs, cells, devices):
    return [(dev, cfg, cell, pass_, mask_kind)
            for dev in devices for cfg in configs if dev == "cuda" or cfg not in GPU_ONLY
            for cell in cells for pass_ in PASSES if pass_ != "train" or cell in TRAIN_CELLS
            for mask_kind in ("post", "holes") if pass_ != "train" or mask_kind == "post"]


def busy_threshold():
    """Where the CPU time of other processes cannot be read: a 1-minute load average above this makes timings
    unreliable (3/4 of the cores busy). It counts the benchmark's own threads too, so it is a coarse test."""
    return 0.75 * (os.cpu_count() or 1)


OTHER_WORK_LIMIT = 0.25  # other processes taking more than this share of the cores make the timings unreliable


def cpu_clock():
    """(CPU seconds the whole machine has been busy, CPU seconds of this process), or None where /proc/stat is
    missing (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait are work; steal (the hypervisor
    # ran another guest on our core) takes the cores from the benchmark like any other process.
    busy = sum(ticks) - ticks[3] - ticks[4]
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def other_work(start, end, wall_s):
    """Share of the machine's cores that processes other than this one kept busy between two cpu_clock()
    readings wall_s seconds apart (None where they are None)."""
    if start is None or end is None or wall_s <= 0:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, other / (wall_s * (os.cpu_count() or 1)))


def run_benchmark(configs, cells, devices, repeats, progress=None, on_rows=None):
    """Measures every (device, config, cell, pass, mask) for maskrnn and each peer. Returns the report dict.
    on_rows(rows), if given, is called with each job's new rows as they are measured (so that a run cut short
    still leaves what it measured)."""
    on_rows = on_rows or (lambda new: None)
    # First, while this process is idle: nothing of it runs alongside the fresh one.
    import_s, first_call_s, first_call_cpu_s = first_call()
    rows, skipped, first_calls, loads = [], [], {}, [os.getloadavg()[0]]
    clock0, wall0 = cpu_clock(), time.perf_counter()
    for n, (dev, cfg, cell, pass_, mask_kind) in enumerate(_jobs(configs, cells, devices)):
        weights, batches = workload(cfg, cell, mask_kind, seed=n)
        case = dict(device=dev, config=list(cfg), cell=cell, pass_=pass_, mask=mask_kind)
        if progress:
            progress(f"{dev} {cell} {cfg} {pass_} {mask_kind}")
        fns = {}
        for impl, factory in RUNNERS.items():
            try:
                fns[impl] = factory(case, weights, batches)
            except _Skip as why:
                skipped.append(dict(case, impl=impl, reason=str(why)))
            except ImportError as e:
                skipped.append(dict(case, impl=impl, reason=f"not installed ({e.name})"))
        best = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            stats, first = measure(fns, dev, repeats)
            worst = max(_spread(v) for v in stats.values())
            if best is None or worst < best[0]:
                best = (worst, stats, attempt)
            if attempt == 1:
                first_calls.setdefault(f"{dev} {cell} {pass_}", first["maskrnn"])
            if worst <= SPREAD_LIMIT:
                break
        worst, stats, attempts = best
        loads.append(os.getloadavg()[0])
        rows += (new := stat_rows(case, stats, "maskrnn", attempts=attempts, spread_ok=worst <= SPREAD_LIMIT))
        on_rows(new)
    if "lstm" in cells:  # the torch.nn drop-in on a 2-layer bidirectional LSTM (maskrnn/_bench_nn.py)
        from ._bench_nn import stack_rows

        rows += (new := stack_rows(configs, devices, repeats, measure, progress, gpu_only=GPU_ONLY))
        on_rows(new)
        loads.append(os.getloadavg()[0])
    if "lstm" in cells:  # Keras train_on_batch rows: maskrnn.keras.LSTM vs keras.layers.LSTM
        from . import bench_keras

        rows += (new := bench_keras.stack_rows([c for c in configs if c not in GPU_ONLY], devices, repeats, skipped,
                                               progress))
        on_rows(new)
        loads.append(os.getloadavg()[0])
    other = other_work(clock0, cpu_clock(), time.perf_counter() - wall0)
    busy = max(loads) > busy_threshold() if other is None else other > OTHER_WORK_LIMIT
    info = _info.info()
    build = dict(path=os.path.dirname(os.path.abspath(_info.__file__)), native_extension=info["native_extension"],
                 cuda_extension=info["cuda_extension"])
    return dict(commit=_commit(), build=build, devices={d: _device_name(d) for d in devices}, versions=_versions(),
                cudnn_allow_tf32=_cudnn_allow_tf32() if "cuda" in devices else None,
                configs=[list(c) for c in configs], repeats=repeats, rows=rows, skipped=skipped,
                import_s=import_s, first_call_s=first_call_s, first_call_cpu_s=first_call_cpu_s,
                first_in_run_s=first_calls, load_average=dict(max=max(loads), samples=loads),
                other_work=dict(cpu_share=other, limit=OTHER_WORK_LIMIT, load_threshold=busy_threshold(),
                                busy=busy),
                note="ratio = peer time / maskrnn time (>1: maskrnn faster); spread = IQR of the repeats; "
                "torch-unpacked ignores the mask (not mask-correct), it is the speed of light for dense work; "
                "train = Embedding -> LSTM -> Linear -> cross-entropy -> Adam step, maskrnn.torch.LSTM with the "
                "mask vs torch.nn.LSTM on the dense batch")


def warnings(report):
    """Lines that say why the figures may not be reproducible (empty when the run was clean)."""
    out = []
    other = report.get("other_work")
    if other and other["busy"]:
        why = (f"other processes kept {other['cpu_share']:.0%} of the cores busy (limit {other['limit']:.0%})"
               if other["cpu_share"] is not None else
               f"load average reached {report['load_average']['max']:.1f} (> {other['load_threshold']:.1f})")
        out.append(f"WARNING: {why}: other work shared the machine, timings are unreliable")
    noisy = sorted({(r["cell"], r["pass_"], r["mask"]) for r in report["rows"] if not r.get("spread_ok", True)})
    if noisy:
        out.append(f"WARNING: spread above {SPREAD_LIMIT:.0%} of the median after {MAX_ATTEMPTS} attempts in: "
                   + ", ".join(" ".join(k) for k in noisy))
    return out


def format_table(report):
    head = (f"{'device':6} {'cell':10} {'B,T,I,H':18} {'pass':14} {'mask':6} {'impl':17} {'median ms':>10} "
            f"{'IQR ms':>17} {'ratio':>7}")
    build = report["build"]
    lines = [f"maskrnn bench  commit {report['commit'][:12]}  " + "; ".join(
        f"{k}: {v}" for k, v in report["devices"].items()),
        f"maskrnn from {build['path']}  native extension: {'yes' if build['native_extension'] else 'no'}  "
        f"CUDA kernels: {'yes' if build['cuda_extension'] else 'no'}", head, "-" * len(head)]
    lines += [format_row(r) for r in report["rows"]]
    reasons = sorted({(s["impl"], s["reason"]) for s in report["skipped"]})
    lines += ["", "skipped:"] + [f"  {impl}: {reason}" for impl, reason in reasons]
    lines += ["", f"fresh process: import maskrnn {report['import_s']:.2f} s, then first maskrnn.lstm call "
              f"(float32, mask) first_call_s {report['first_call_s']:.2f} s (CPU time "
              f"{report['first_call_cpu_s']:.2f} s)",
              "first call in this run (compile/load), s: " + ", ".join(
                  f"{k} {v:.2f}" for k, v in report["first_in_run_s"].items()), report["note"]]
    if "load_average" in report:
        lines.append(f"load average (1 min) during the run: max {report['load_average']['max']:.2f}")
    if report.get("other_work", {}).get("cpu_share") is not None:
        lines.append(f"other processes during the run: {report['other_work']['cpu_share']:.0%} of the cores")
    return "\n".join(lines + warnings(report))


def format_row(r):
    ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    cfg = ",".join(map(str, r["config"]))
    iqr = f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}" if "q1_ms" in r else ""
    return (f"{r['device']:6} {r['cell']:10} {cfg:18} {r['pass_']:14} {r['mask']:6} {r['impl']:17} "
            f"{r['median_ms']:10.2f} {iqr:>17} {ratio:>7}")


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install maskrnn[bench]") from e
    rows = [r for r in report["rows"] if r["ratio"] is not None]
    labels = [f"{r['device']} {r['cell']} {','.join(map(str, r['config']))} {r['pass_']} {r['mask']} vs {r['impl']}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [r["ratio"] for r in rows], color=["tab:green" if r["ratio"] >= 1 else "tab:red"
                                                                  for r in rows])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("peer time / maskrnn time (>1: maskrnn faster)")
    ax.set_title(f"maskrnn {report['commit'][:12]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _progress_bar(total):
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, file=sys.stderr, unit="run", mininterval=1.0)
    except ImportError:
        bar = None

    def step(label):
        if bar is not None:
            bar.set_description(label[:60])
            bar.update(1)
        else:
            print(f"  {label}", file=sys.stderr)

    return step, bar


def add_arguments(parser):
    parser.add_argument("--full", action="store_true", help="all SPEC.md configurations (default: a quick subset)")
    parser.add_argument("--configs", help="B,T,I,H;B,T,I,H;... instead of the default set")
    parser.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm,gru")
    parser.add_argument("--devices", help="comma-separated: cpu,cuda (default: every available one)")
    parser.add_argument("--repeats", type=int, help="timed repeats per runner (default 5 quick, 15 full)")
    parser.add_argument("--json", help="write the report as JSON to this path")
    parser.add_argument("--plot", help="write a PNG chart of the ratios to this path")
    parser.add_argument("--partial", action="store_true",
                        help="also print each row as it is measured (the table comes at the end either way)")


def main(args):
    if args.configs:
        configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]
    else:
        configs = CONFIGS if args.full else QUICK
    devices = args.devices.split(",") if args.devices else available_devices()
    cells = args.cells.split(",")
    repeats = args.repeats or (15 if args.full else 5)
    progress, bar = _progress_bar(len(_jobs(configs, cells, devices)))
    measured = []

    def on_rows(new):  # each row as it comes, and the JSON so far: a run cut short keeps what it measured
        measured.extend(new)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(partial=True, rows=measured), f, indent=1)
        if args.partial:
            print("\n".join(map(format_row, new)), flush=True)

    report = run_benchmark(configs, cells, devices, repeats, progress, on_rows)
    if bar is not None:
        bar.close()
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0
