"""Where a GPU call's host time goes, by Python function: cProfile over synchronised maskrnn calls on CuPy arrays
(host lengths, float32), after a warm-up. On the H100 the host work before the first launch is a third of the
(64,100,128,256) forward's wall time (bench/results/gpu-H100-20261127f/call2-gaps.txt); this names its parts.

    python bench/host_profile.py [B,T,I,H] [--cell lstm|gru] [--calls 200] [--train] [--top 25] [--kernels]

Needs a CUDA GPU and CuPy. Prints the wall time of a synchronised call with and without the profiler, the forward
timed as ``maskrnn bench`` times it (alone, and after a cuDNN packed call each time, with torch), then the functions
with the most own time and the most cumulative time.
"""

import argparse
import cProfile
import pstats
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", nargs="?", default="64,100,128,256", help="B,T,I,H")
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--train", action="store_true", help="the training forward and backward (vjp) instead")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--kernels", action="store_true",
                        help="also each kernel's device time per call (torch.profiler), inference and training")
    args = parser.parse_args()
    import cupy

    import maskrnn

    B, T, I, H = (int(v) for v in args.shape.split(","))
    G = 4 if args.cell == "lstm" else 3
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((B, T, I)), "float32")
    W = cupy.asarray(rng.standard_normal((I, G * H)) * I**-0.5, "float32")
    U = cupy.asarray(rng.standard_normal((H, G * H)) * H**-0.5, "float32")
    b = cupy.zeros(G * H if args.cell == "lstm" else (2, G * H), "float32")
    d = cupy.asarray(rng.standard_normal((B, T, H)), "float32")
    lengths = rng.integers(T // 4, T + 1, B)
    lengths[0] = T
    vjp = maskrnn.lstm_vjp if args.cell == "lstm" else maskrnn.gru_vjp
    op = maskrnn.lstm if args.cell == "lstm" else maskrnn.gru
    calls = {"infer": lambda: op(x, W, U, b, lengths=lengths),
             "fwd+bwd": lambda: vjp(x, W, U, b, lengths=lengths)[1](d)}
    call = calls["fwd+bwd" if args.train else "infer"]

    sync = cupy.cuda.Device().synchronize

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            call()
            sync()
        return (time.perf_counter() - t0) / n * 1e3

    run(20)
    if args.kernels:
        for name, f in calls.items():
            kernel_table(f"{args.cell} {B},{T},{I},{H} {name}", f)
    plain = run(args.calls)
    if not args.train:
        bench_like(args.cell, (B, T, I, H), args.calls)
    profiler = cProfile.Profile()
    profiler.enable()
    profiled = run(args.calls)
    profiler.disable()
    what = "fwd+bwd" if args.train else "fwd"
    print(f"{args.cell} {B},{T},{I},{H} {what}: {plain:.3f} ms a synchronised call, {profiled:.3f} ms profiled; "
          f"per-call times below are totals over {args.calls} calls")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def kernel_table(what, call, calls=10, rows=8):
    """Each kernel's device time per call (CUPTI through torch.profiler), the longest first: the persistent scan's
    own time, beside the GEMMs and copies around it (as bench/results/gpu-H100-20261127f/call2-kprof.txt)."""
    import cupy

    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        print(f"{what}: no kernel times (torch is not installed)")
        return
    for _ in range(3):
        call()
    cupy.cuda.Device().synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        cupy.cuda.Device().synchronize()
    times = [(e.device_time_total / calls, e.count / calls, e.key) for e in prof.key_averages()
             if getattr(e, "device_time_total", 0) > 0]
    print(f"== {what}: {sum(t for t, _, _ in times):.1f} us of device time per call")
    for t, n, key in sorted(times, reverse=True)[:rows]:
        print(f"   {t:8.1f} us x{n:.0f}  {key[:90]}")


def bench_like(cell, cfg, calls):
    """The forward timed as ``maskrnn bench`` times it (CUDA events around the call, the bench's own runner and
    batches): alone; after the cuDNN packed peer's timed call each time, as in the bench's rounds; and after a
    host-only torch call each time (a small CPU LSTM: torch's dispatch without GPU work). On the H100 the bench's
    1.06 ms was ~250 us above this script's timeline of the same call (gpu-H100-20261127f): slower after both
    others points at the host's caches, after the cuDNN call only at the GPU's state."""
    from maskrnn import _bench_runners as runners
    from maskrnn import bench

    case = dict(cell=cell, mask="post", device="cuda", pass_="fwd")
    weights, batches = runners.workload(cfg, cell, "post", 0)
    ours = runners._maskrnn_runner(case, weights, batches)
    timed = bench._timer("cuda")
    between = {"alone": None}
    try:
        import torch

        between["after a cuDNN packed call"] = runners._torch_runner("cudnn-packed", case, weights, batches)
        cpu_lstm, xs = torch.nn.LSTM(16, 32), torch.randn(20, 8, 16)

        def host_only(i):
            with torch.no_grad():
                cpu_lstm(xs)

        between["after a CPU torch call"] = host_only
    except ImportError:
        pass
    for other in between.values():  # warm-up
        for i in range(3):
            timed(ours, i)
            if other:
                timed(other, i)
    times = {}
    for name, other in between.items():
        samples = []
        for i in range(calls):
            if other:
                timed(other, i)  # synchronised, as the bench's rounds: the GPU idle when ours starts
            samples.append(timed(ours, i))
        times[name] = np.median(samples) * 1e3
    print(f"bench-like (events, median of {calls}): " + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
