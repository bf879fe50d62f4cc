"""A/B of the CPU engine on PyTorch's OpenMP team (maskrnn/_cpu/omp.py) against its own helper threads, in one
process with the switch (MASKRNN_TORCH_OMP, read at each call) toggled between calls, so that both sides see the
same load. Each round times, back to back: a torch.nn.LSTM call, the maskrnn call right after it, and torch again.
Also the bench's whole training steps (maskrnn.torch.LSTM vs torch.nn.LSTM; Keras train_on_batch) with --train.

    python bench/torch_omp_ab.py 16,200,64,128 [--backward] [--train] [--rounds 15]
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


def _kernel_pairs(cfg, backward):
    import torch

    import maskrnn

    B, T, I, H = cfg
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype("float32")
    W = (rng.standard_normal((I, 4 * H)) * I**-0.5).astype("float32")
    U = (rng.standard_normal((H, 4 * H)) * H**-0.5).astype("float32")
    b = np.zeros(4 * H, "float32")
    lengths = rng.integers(T // 4, T + 1, B)
    d_out = rng.standard_normal((B, T, H)).astype("float32")
    module, xt, dt = torch.nn.LSTM(I, H, batch_first=True), torch.from_numpy(x), torch.from_numpy(d_out)

    def theirs(i):
        if backward:
            module(xt.clone().requires_grad_())[0].backward(dt)
        else:
            with torch.no_grad():
                module(xt)

    def ours(i):
        if backward:
            maskrnn.lstm_vjp(x, W, U, b, lengths=lengths)[1](d_out)
        else:
            maskrnn.lstm(x, W, U, b, lengths=lengths)

    return {"LSTM " + ("fwd+bwd" if backward else "fwd"): (ours, theirs)}


def _train_pairs(cfg):
    from maskrnn import _bench_runners as runners
    from maskrnn import bench_keras

    weights, batches = runners.workload(cfg, "lstm", "post", 0)
    case = dict(cell="lstm", mask="post", device="cpu", pass_="train")
    keras = bench_keras.runners(cfg, "post", 0)
    return {"train": (runners._train_runner("maskrnn", case, weights, batches),
                      runners._train_runner("torch-unpacked", case, weights, batches)),
            "train_on_batch": (keras["maskrnn"], keras["keras"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="16,200,64,128", help="B,T,I,H")
    ap.add_argument("--backward", action="store_true", help="forward+backward instead of forward")
    ap.add_argument("--train", action="store_true", help="the whole training steps instead of the kernels")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    cfg = tuple(int(v) for v in args.config.split(","))
    pairs = _train_pairs(cfg) if args.train else _kernel_pairs(cfg, args.backward)
    for ours, theirs in pairs.values():
        for i in range(3):
            ours(i), theirs(i)
    times = {}
    i = 0
    for _ in range(args.rounds):
        for mode in ("0", "1"):
            os.environ["MASKRNN_TORCH_OMP"] = mode
            for name, (ours, theirs) in pairs.items():
                i += 1
                t0 = time.perf_counter()
                theirs(i)
                t1 = time.perf_counter()
                ours(i)
                t2 = time.perf_counter()
                theirs(i)
                t3 = time.perf_counter()
                times.setdefault((name, mode), []).append((t1 - t0, t2 - t1, t3 - t2))
    print(f"{args.config}, {args.rounds} rounds; medians in ms (IQR); ratio = peer before / maskrnn")
    for (name, mode), v in sorted(times.items()):
        v = np.array(v) * 1e3
        q = lambda a: f"{np.median(a):7.2f} ({np.percentile(a, 25):.2f}-{np.percentile(a, 75):.2f})"  # noqa: E731
        where = "torch's team" if mode == "1" else "own threads "
        print(f"{name:15s} {where}: peer {q(v[:, 0])}  maskrnn right after {q(v[:, 1])}  peer right after "
              f"maskrnn {q(v[:, 2])}  ratio {np.median(v[:, 0] / v[:, 1]):.2f}")


if __name__ == "__main__":
    main()
