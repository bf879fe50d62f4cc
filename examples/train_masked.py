"""Train a masked LSTM classifier with maskrnn.torch on a synthetic variable-length task.

Task ("majority sign"): each sequence holds +1/-1 tokens over a random number of real steps, scattered
among masked ones (post-padding plus random holes); the label says whether the real tokens sum to more than
zero. Masked positions hold NaN, so a model that read them would fail at once: the mask is load-bearing.

    python examples/train_masked.py                 # CPU, ~1 minute on 2 cores
    python examples/train_masked.py --device cuda   # same on a GPU
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

import maskrnn.torch as mt


def make_batch(rng, batch, steps, device):
    lengths = rng.integers(steps // 4, steps + 1, batch)
    mask = (np.arange(steps)[None, :] < lengths[:, None]) & (rng.random((batch, steps)) > 0.1)
    mask[:, 0] = True
    tokens = rng.choice([-1.0, 1.0], size=(batch, steps))
    label = (np.where(mask, tokens, 0).sum(1) > 0).astype(np.float32)
    x = np.where(mask, tokens, np.nan)[..., None].astype(np.float32)
    as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return as_t(x), as_t(mask), as_t(label)


class Classifier(nn.Module):
    def __init__(self, units):
        super().__init__()
        self.rnn = mt.LSTM(1, units)
        self.head = nn.Linear(units, 1)

    def forward(self, x, mask):
        return self.head(self.rnn(x, mask=mask)).squeeze(-1)  # last output: h after each row's last real step


def accuracy(model, rng, args, batches=8):
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for _ in range(batches):
            x, mask, y = make_batch(rng, args.batch, args.length, args.device)
            hits += int(((model(x, mask) > 0).float() == y).sum())
            total += len(y)
    model.train()
    return hits / total


def progress(iterable, total):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, mininterval=1.0)
    except ImportError:
        return iterable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Classifier(args.units).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    bar = progress(range(args.steps), args.steps)
    for step in bar:
        x, mask, y = make_batch(rng, args.batch, args.length, args.device)
        loss = loss_fn(model(x, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    acc = accuracy(model, np.random.default_rng(args.seed + 1), args)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s on {args.device}")
    print(f"final accuracy: {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
