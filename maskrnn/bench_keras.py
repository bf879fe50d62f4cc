"""Keras training rows of ``python -m maskrnn bench``: one ``train_on_batch`` of Masking -> LSTM(H) -> Dense(1)
with ``keras.layers.LSTM`` and with ``maskrnn.keras.LSTM`` (same weights, same batches: bench.workload's, the
padded steps zeroed so that Masking finds them), on the active Keras backend (torch unless KERAS_BACKEND says
otherwise). The two models take turns within each repeat (order alternating), so load on a shared machine
hits both alike; the spread of the per-repeat ratios is reported with the median.

Each row runs where its ``device`` says: models, batches and steps inside ``keras.device`` (Keras's torch
backend would otherwise put a CPU row on a visible GPU). CUDA rows run on the torch backend with maskrnn's CUDA
kernels (``maskrnn.jax`` runs on the CPU only).

    python -m maskrnn.bench_keras [--configs "64,100,128,256"] [--repeats 9] [--device cuda]   # KERAS_BACKEND=jax
"""

import argparse
import os

import numpy as np

from .bench import measure, stat_rows

IMPLS = ("maskrnn", "keras")  # bench.py's names: maskrnn.keras.LSTM, keras.layers.LSTM


def _models(cfg, weights):
    import keras

    import maskrnn.keras

    B, T, I, H = cfg
    models = {}
    for name, cls in zip(IMPLS, (maskrnn.keras.LSTM, keras.layers.LSTM)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((T, I)), keras.layers.Masking(), cls(H), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        models[name] = model
    models["maskrnn"].layers[1].set_weights([weights["kernel"], weights["recurrent_kernel"], weights["bias"]])
    models["keras"].set_weights(models["maskrnn"].get_weights())
    return models


def runners(cfg, mask_kind, seed, device="cpu"):
    """{impl: run(i)}: run(i) does one train_on_batch on batch i (cycling through bench.workload's batches), on
    device ('cpu' or 'cuda')."""
    import keras

    from .bench import workload

    weights, batches = workload(cfg, "lstm", mask_kind, seed)
    rng = np.random.default_rng(seed)
    with keras.device(device):
        data = [(keras.ops.convert_to_tensor(np.where(b["mask"][..., None], b["x"], 0).astype("float32")),
                 keras.ops.convert_to_tensor(rng.standard_normal((cfg[0], 1)).astype("float32"))) for b in batches]
        models = _models(cfg, weights)

    def runner(model):
        def run(i):
            with keras.device(device):
                return model.train_on_batch(*data[i % len(data)])

        run.model = model
        return run

    return {name: runner(model) for name, model in models.items()}


def _unsupported(device):
    """Why this Keras backend cannot run the rows on device, or None."""
    import keras

    if keras.backend.backend() not in ("torch", "jax"):
        return f"keras with the torch or jax backend (not {keras.backend.backend()})"
    if device == "cuda" and keras.backend.backend() != "torch":
        return "the CUDA rows run on Keras's torch backend (maskrnn.jax runs on the CPU only)"
    return None


def stack_rows(configs, devices, repeats, skipped, progress=None):
    """bench.run_benchmark's hook: the Keras training rows (pass_ 'train_on_batch', LSTM) on each of devices, the
    two layers timed in turns by bench.measure; a missing Keras or backend goes to skipped."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    rows = []
    for device in devices:
        for n, cfg in enumerate(configs):
            for mask_kind in ("post", "holes"):
                case = dict(device=device, config=list(cfg), cell="lstm", pass_="train_on_batch", mask=mask_kind)
                if progress:
                    progress(f"{device} lstm {cfg} train {mask_kind} keras")
                try:
                    import keras  # noqa: F401
                except ImportError as e:
                    why = f"not installed ({e.name})"
                else:
                    why = _unsupported(device)
                if why:
                    skipped += [dict(case, impl=impl, reason=why) for impl in IMPLS]
                    continue
                stats, _ = measure(runners(cfg, mask_kind, seed=1000 + n, device=device), device, repeats)
                rows += stat_rows(case, stats, "maskrnn")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="64,100,128,256", help="B,T,I,H;B,T,I,H;...")
    parser.add_argument("--masks", default="post,holes")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    why = _unsupported(args.device)
    if why:
        raise SystemExit(f"--device {args.device}: {why}")
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, {args.device}; train_on_batch, "
          "Masking -> LSTM -> Dense")
    for cfg in [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]:
        for mask_kind in args.masks.split(","):
            stats, _ = measure(runners(cfg, mask_kind, seed=0, device=args.device), args.device, args.repeats)
            k, m = stats["keras"], stats["maskrnn"]
            print(f"{cfg} {mask_kind:5s}  keras.layers.LSTM {k['median'] * 1e3:8.1f} ms "
                  f"(IQR {k['q1'] * 1e3:.1f}-{k['q3'] * 1e3:.1f})  maskrnn.keras.LSTM {m['median'] * 1e3:8.1f} ms "
                  f"(IQR {m['q1'] * 1e3:.1f}-{m['q3'] * 1e3:.1f})  ratio {k['median'] / m['median']:.2f}x")


if __name__ == "__main__":
    main()
