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

CONFIGS = [(64, 100, 128, 256), (16, 200, 64, 128), (128, 50, 256, 512), (4, 200, 256, 512), (256, 100, 512, 1024)]
GPU_ONLY = {(256, 100, 512, 1024)}
QUICK = [(64, 100, 128, 256)]
PEERS = ["torch-unpacked", "torch-packed", "keras", "cudnn-packed"]
N_BUFFERS = 3  # distinct random batches cycled through, so no run times a cache-warm repeat of the last


def workload(cfg, cell, mask_kind, seed):
    """N_BUFFERS random batches of one configuration: lengths uniform in [T/4, T] (post-padded), and for
    'holes' the same batch with 10% of the real steps masked out."""
    B, T, I, H = cfg
    G = 4 if cell == "lstm" else 3
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(H)
    weights = dict(
        kernel=(rng.standard_normal((I, G * H)) * scale).astype("float32"),
        recurrent_kernel=(rng.standard_normal((H, G * H)) * scale).astype("float32"),
        bias=(rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype("float32"),
    )
    batches = []
    for _ in range(N_BUFFERS):
        lengths = rng.integers(max(T // 4, 1), T + 1, B)
        mask = np.arange(T)[None, :] < lengths[:, None]
        if mask_kind == "holes":
            mask &= rng.random((B, T)) >= 0.1
        batches.append(dict(
            x=rng.standard_normal((B, T, I)).astype("float32"), lengths=lengths, mask=mask,
            d_out=rng.standard_normal((B, T, H)).astype("float32"),
        ))
    return weights, batches


def _maskrnn_runner(cell, mask_kind, backward, weights, batches, device):
    import maskrnn

    xp = np
    if device == "cuda":
        import cupy as xp
    w = {k: xp.asarray(v) for k, v in weights.items()}
    data = [{k: xp.asarray(v) for k, v in b.items()} for b in batches]
    op = maskrnn.lstm_vjp if backward else maskrnn.lstm
    if cell == "gru":
        op = maskrnn.gru_vjp if backward else maskrnn.gru

    def run(i):
        b = data[i % len(data)]
        steps = dict(lengths=b["lengths"]) if mask_kind == "post" else dict(mask=b["mask"])
        res = op(b["x"], w["kernel"], w["recurrent_kernel"], w["bias"], **steps)
        if backward:
            res[1](b["d_out"])

    return run


def _torch_module(torch, cell, weights, device):
    """torch.nn.LSTM/GRU holding the same weights (Keras layout converted; gate orders i,f,g,o / r,z,n)."""
    W, U, b = (weights[k] for k in ("kernel", "recurrent_kernel", "bias"))
    I, GH = W.shape
    H = U.shape[0]
    if cell == "lstm":
        m = torch.nn.LSTM(I, H, batch_first=True)
        b_ih, b_hh, perm = b, np.zeros_like(b), np.arange(GH)
    else:
        m = torch.nn.GRU(I, H, batch_first=True)
        b_ih, b_hh = b[0], b[1]
        perm = np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])  # z,r,h -> r,z,n
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(W[:, perm].T.copy()))
        m.weight_hh_l0.copy_(torch.from_numpy(U[:, perm].T.copy()))
        m.bias_ih_l0.copy_(torch.from_numpy(b_ih[perm].copy()))
        m.bias_hh_l0.copy_(torch.from_numpy(b_hh[perm].copy()))
    return m.to(device)


def _torch_runner(peer, cell, mask_kind, backward, weights, batches, device):
    import torch

    packed = peer != "torch-unpacked"
    if packed and mask_kind != "post":
        raise _Skip("packed sequences cannot express holes in the mask")
    m = _torch_module(torch, cell, weights, device)
    data = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in batches]

    def run(i):
        b = data[i % len(data)]
        x = b["x"].requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            if packed:
                p = torch.nn.utils.rnn.pack_padded_sequence(x, b["lengths"].cpu(), batch_first=True,
                                                            enforce_sorted=False)
                out = torch.nn.utils.rnn.pad_packed_sequence(m(p)[0], batch_first=True,
                                                             total_length=x.shape[1])[0]
            else:
                out = m(x)[0]
            if backward:
                out.backward(b["d_out"])

    return run


def _keras_runner(cell, mask_kind, backward, weights, batches, device):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    if keras.backend.backend() != "torch":
        raise _Skip(f"needs Keras's torch backend for gradients, found {keras.backend.backend()}")
    H = weights["recurrent_kernel"].shape[0]
    layer = keras.layers.LSTM(H, return_sequences=True) if cell == "lstm" else keras.layers.GRU(
        H, return_sequences=True)
    layer.build((None, None, weights["kernel"].shape[0]))
    layer.set_weights([weights["kernel"], weights["recurrent_kernel"], weights["bias"]])
    data = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]

    def run(i):
        b = data[i % len(data)]
        x = b["x"].requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = layer(x, mask=b["mask"])
            if backward:
                out.backward(b["d_out"])

    return run


class _Skip(Exception):
    """A peer that does not apply to this run (the message says why)."""


def _runner(impl, cell, mask_kind, backward, weights, batches, device):
    if impl == "maskrnn":
        return _maskrnn_runner(cell, mask_kind, backward, weights, batches, device)
    if impl == "keras":
        if device != "cpu":
            raise _Skip("measured on the CPU only")
        return _keras_runner(cell, mask_kind, backward, weights, batches, device)
    if (impl == "cudnn-packed") != (device == "cuda"):
        raise _Skip("cuDNN runs on the GPU only" if impl == "cudnn-packed" else "CPU peer")
    return _torch_runner(impl, cell, mask_kind, backward, weights, batches, device)


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


def measure(fn, device, repeats, warmup=2):
    """(median seconds, first-call seconds). Sleeps briefly first: a peer's BLAS/OpenMP threads keep
    spinning after it returns and would steal the cores from the next runner."""
    time.sleep(0.2)
    t0 = time.perf_counter()
    fn(0)
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        fn(i)
    timed = _timer(device)
    return float(np.median([timed(fn, i) for i in range(repeats)])), first


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


def run_benchmark(configs, cells, devices, repeats, progress=None):
    """Measures every (device, config, cell, pass, mask) for maskrnn and each peer. Returns the report dict."""
    rows, skipped, first_calls = [], [], {}
    jobs = [(dev, cfg, cell, backward, mask_kind)
            for dev in devices for cfg in configs if dev == "cuda" or cfg not in GPU_ONLY
            for cell in cells for backward in (False, True) for mask_kind in ("post", "holes")]
    for n, (dev, cfg, cell, backward, mask_kind) in enumerate(jobs):
        weights, batches = workload(cfg, cell, mask_kind, seed=n)
        case = dict(device=dev, config=list(cfg), cell=cell, pass_="fwd+bwd" if backward else "fwd", mask=mask_kind)
        ours = None
        for impl in ["maskrnn", *PEERS]:
            if progress:
                progress(f"{dev} {cell} {cfg} {case['pass_']} {mask_kind} {impl}")
            try:
                fn = _runner(impl, cell, mask_kind, backward, weights, batches, dev)
            except _Skip as why:
                skipped.append(dict(case, impl=impl, reason=str(why)))
                continue
            except ImportError as e:
                skipped.append(dict(case, impl=impl, reason=f"not installed ({e.name})"))
                continue
            median, first = measure(fn, dev, repeats)
            if impl == "maskrnn":
                ours = median
                first_calls.setdefault(f"{dev} {cell} {case['pass_']}", first)
            ratio = None if impl == "maskrnn" else median / ours
            rows.append(dict(case, impl=impl, median_ms=median * 1e3, ratio=ratio))
    if "cpu" in devices and "lstm" in cells:  # Keras train_on_batch rows: maskrnn.keras.LSTM vs keras.layers.LSTM
        from . import bench_keras

        bench_keras.add_rows(rows, skipped, [c for c in configs if c not in GPU_ONLY], repeats, progress)
    return dict(commit=_commit(), devices={d: _device_name(d) for d in devices}, versions=_versions(),
                configs=[list(c) for c in configs], repeats=repeats, rows=rows, skipped=skipped,
                first_call_s=first_calls, note="ratio = peer time / maskrnn time (>1: maskrnn faster); "
                "torch-unpacked ignores the mask (not mask-correct), it is the speed of light for dense work")


def format_table(report):
    head = f"{'device':6} {'cell':4} {'B,T,I,H':18} {'pass':7} {'mask':5} {'impl':15} {'median ms':>10} {'ratio':>7}"
    lines = [f"maskrnn bench  commit {report['commit'][:12]}  " + "; ".join(
        f"{k}: {v}" for k, v in report["devices"].items()), head, "-" * len(head)]
    for r in report["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cfg = ",".join(map(str, r["config"]))
        lines.append(f"{r['device']:6} {r['cell']:4} {cfg:18} {r['pass_']:7} {r['mask']:5} {r['impl']:15} "
                     f"{r['median_ms']:10.2f} {ratio:>7}")
    reasons = sorted({(s["impl"], s["reason"]) for s in report["skipped"]})
    lines += ["", "skipped:"] + [f"  {impl}: {reason}" for impl, reason in reasons]
    lines += ["", "first maskrnn call (compile/load), s: " + ", ".join(
        f"{k} {v:.2f}" for k, v in report["first_call_s"].items()), report["note"]]
    return "\n".join(lines)


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


def main(args):
    if args.configs:
        configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]
    else:
        configs = CONFIGS if args.full else QUICK
    devices = args.devices.split(",") if args.devices else available_devices()
    cells = args.cells.split(",")
    repeats = args.repeats or (15 if args.full else 5)
    total = sum(2 * 2 * len(cells) * (1 + len(PEERS)) for d in devices for c in configs
                if d == "cuda" or c not in GPU_ONLY)
    progress, bar = _progress_bar(total)
    report = run_benchmark(configs, cells, devices, repeats, progress)
    if bar is not None:
        bar.close()
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0
