"""Bench rows for the ``torch.nn`` drop-ins: a 2-layer bidirectional LSTM on a PackedSequence, torch.nn.LSTM
(CPU; cuDNN on the GPU) against ``maskrnn.torch.nn.LSTM`` holding the same weights.

``python -m maskrnn._bench_nn [repeats] [B,T,I,H] [--cpu-time]`` times the two alternately on the CPU (each
repeat runs both, in alternating order) and prints the median of the per-repeat ratios, for a loaded machine.
``--cpu-time`` clocks process CPU time instead of wall time: with one thread each (OMP_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1) that compares the work done, nearly unaffected by other load.
"""

import sys
import time

import numpy as np

from .bench import stat_rows

CELL = "lstm-2x-bi"  # the ``cell`` column of these rows
IMPLS = ["maskrnn.torch.nn", "torch.nn"]


def _runner(impl, cfg, backward, device, seed):
    """A run(i) closure over N_BUFFERS packed batches; lengths uniform in [T/4, T], rows unsorted."""
    import torch

    from ._bench_runners import N_BUFFERS
    from .torch import nn as mnn  # the drop-in module (maskrnn.torch binds no other name nn)

    B, T, I, H = cfg
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    m = ref if impl == "torch.nn" else mnn.LSTM(I, H, num_layers=2, bidirectional=True)
    m.load_state_dict(ref.state_dict())
    m.to(device)
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(N_BUFFERS):
        lengths = torch.from_numpy(rng.integers(max(T // 4, 1), T + 1, B))
        x = torch.from_numpy(rng.standard_normal((B, T, I)).astype("float32"))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        packed = packed.to(device)
        data = packed.data.requires_grad_(backward)
        d_out = torch.randn(data.shape[0], 2 * H, device=device)
        batches.append((torch.nn.utils.rnn.PackedSequence(data, *packed[1:]), d_out))

    def run(i):
        packed, d_out = batches[i % len(batches)]
        with torch.set_grad_enabled(backward):
            out = m(packed)[0]
            if backward:
                out.data.backward(d_out)

    return run


def stack_rows(configs, devices, repeats, measure, progress=None, gpu_only=()):
    """Rows in bench.py's format for every (device, config, pass), configs in gpu_only on the GPU only; ratio =
    torch.nn time / ours."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    rows = []
    for device in devices:
        for cfg in [c for c in configs if device == "cuda" or tuple(c) not in gpu_only]:
            for backward in (False, True):
                case = dict(device=device, config=list(cfg), cell=CELL, pass_="fwd+bwd" if backward else "fwd",
                            mask="packed")
                if progress:
                    progress(f"{device} {CELL} {cfg} {case['pass_']} packed")
                fns = {impl: _runner(impl, cfg, backward, device, seed=0) for impl in IMPLS}
                stats, _ = measure(fns, device, repeats)  # the two take turns (bench.measure)
                for row in stat_rows(case, stats, IMPLS[0]):
                    if device == "cuda" and row["impl"] == "torch.nn":
                        row["impl"] = "torch.nn (cuDNN)"
                    rows.append(row)
    return rows


def interleaved(cfg=(64, 100, 128, 256), repeats=10, backward=True, clock=time.perf_counter):
    """CPU: per-repeat ratio torch.nn / maskrnn.torch.nn, the two run alternately. Returns (ratios, medians)."""
    fns = {impl: _runner(impl, cfg, backward, "cpu", seed=0) for impl in IMPLS}
    for fn in fns.values():  # warm-up: Numba compile, allocator
        fn(0)
        fn(1)
    times = {impl: [] for impl in IMPLS}
    for r in range(repeats):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
            time.sleep(0.2)  # let the other runner's BLAS/OpenMP threads go idle
            t0 = clock()
            fns[impl](r)
            times[impl].append(clock() - t0)
    ratios = np.array(times["torch.nn"]) / np.array(times["maskrnn.torch.nn"])
    return ratios, {impl: float(np.median(t)) for impl, t in times.items()}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cpu-time"]
    cpu_time = "--cpu-time" in sys.argv
    repeats = int(args[0]) if args else 10
    cfg = tuple(int(v) for v in args[1].split(",")) if len(args) > 1 else (64, 100, 128, 256)
    ratios, medians = interleaved(cfg, repeats, clock=time.process_time if cpu_time else time.perf_counter)
    print(f"{CELL} {cfg} fwd+bwd on a PackedSequence, CPU, {repeats} interleaved repeats, "
          f"{'process CPU' if cpu_time else 'wall'} time")
    print("  median s: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    print(f"  torch.nn / maskrnn.torch.nn: median {np.median(ratios):.2f}x, "
          f"range {ratios.min():.2f}-{ratios.max():.2f}x")
