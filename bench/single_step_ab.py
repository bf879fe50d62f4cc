"""A/B of the CPU engine's single-step calls (a decoding loop: T = 1, initial states given, a few rows) with the
weights used as they are (maskrnn/_cpu/infer.py ``_unpacked``) against packing them for the native product, and
torch.nn.LSTM / GRU on the same call, in one process with the switch toggled between rounds (medians of the
rounds, interleaved, so that all three see the same load).

    python bench/single_step_ab.py [--shapes 1,1,128,256;4,1,512,1024] [--rounds 7]
"""

import argparse
import time

import numpy as np

SHAPES = "1,1,128,256;2,1,128,256;4,1,128,256;8,1,128,256;1,1,512,1024;4,1,512,1024;8,1,512,1024"


def _case(rng, cell, B, T, I, H):
    import torch

    import maskrnn

    G = 4 if cell == "lstm" else 3
    x = rng.standard_normal((B, T, I)).astype("f4")
    W = (rng.standard_normal((I, G * H)) * I**-0.5).astype("f4")
    U = (rng.standard_normal((H, G * H)) * H**-0.5).astype("f4")
    b = np.zeros(G * H if cell == "lstm" else (2, G * H), "f4")
    h0 = rng.standard_normal((B, H)).astype("f4")
    states = [h0, h0.copy()] if cell == "lstm" else h0
    op = maskrnn.lstm if cell == "lstm" else maskrnn.gru
    net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, batch_first=True)
    xt, ht = torch.from_numpy(x), torch.from_numpy(h0)[None]
    t_states = (ht, ht.clone()) if cell == "lstm" else ht
    return (lambda: op(x, W, U, b, initial_state=states)), (lambda: net(xt, t_states))


def main(argv=None):
    import torch

    from maskrnn._cpu import infer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=SHAPES, help="B,T,I,H;... (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    unpacked = infer._unpacked
    print("B,T,I,H cell: as they are / packed / torch.nn, us a call (median of rounds); packed / as they are; "
          "torch / as they are")
    try:
        for shape in args.shapes.split(";"):
            B, T, I, H = (int(v) for v in shape.split(","))
            for cell in ("lstm", "gru"):
                run, peer = _case(rng, cell, B, T, I, H)
                sides = {"as they are": (unpacked, run), "packed": (lambda plan: False, run), "torch": (None, peer)}
                n = max(3, int(3000 / (B * I * H / 1e5 + 20)))
                times = {k: [] for k in sides}
                with torch.no_grad():
                    for _ in range(args.rounds):
                        for name, (rule, f) in sides.items():
                            infer._unpacked = rule or unpacked
                            f()
                            t0 = time.perf_counter()
                            for _ in range(n):
                                f()
                            times[name].append((time.perf_counter() - t0) / n * 1e6)
                m = {k: float(np.median(v)) for k, v in times.items()}
                a = m["as they are"]
                print(f"{B},{T},{I},{H} {cell}: {a:.0f} / {m['packed']:.0f} / {m['torch']:.0f} us; "
                      f"{m['packed'] / a:.2f}x; {m['torch'] / a:.2f}x", flush=True)
    finally:
        infer._unpacked = unpacked


if __name__ == "__main__":
    main()
