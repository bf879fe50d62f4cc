"""Compile the common CPU kernels ahead of their first use, into the kernel cache (maskrnn/_cpu/cache.py).

setup.py runs this while building, so the machine code ships in the package and the first call after
``pip install`` loads it instead of compiling (seconds). ``python -m maskrnn precompile`` does the same for an
installed package, e.g. when building a container image; a read-only install caches in the first writable
location. Common means float32 LSTM and GRU (both ``reset_after``), masked and packed kernels, forward, backward and
inference, called exactly as the public API calls them, on one thread's rows and, where the engine has several
threads, on a thread's share of a split batch (strided rows: another compiled variant, maskrnn/_cpu/rows.py) and on
a small batch's hidden units split across threads (maskrnn/_cpu/cols.py), and for a batch of one row; other dtypes
compile on first use.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> str:
    """Compiles the LSTM kernels here and the GRU's in a second process at the same time (where there are two
    cores: the compiles are single-threaded, ~1 minute of CPU each; the two share no cached kernel, so neither
    overwrites the other's cache index)."""
    start = time.perf_counter()
    gru = None
    if (os.cpu_count() or 1) > 1:
        root = str(Path(__file__).resolve().parents[1])  # this package, whatever the child's sys.path holds
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        gru = subprocess.Popen([sys.executable, "-m", "maskrnn._precompile", "gru"], env=env)
    _cells(("lstm",) if gru is not None else ("lstm", "gru"))
    if gru is not None and gru.wait() != 0:
        raise RuntimeError(f"precompiling the GRU kernels failed (exit status {gru.returncode})")
    return f"CPU kernels precompiled (float32 LSTM/GRU, forward and backward) in {time.perf_counter() - start:.0f} s"


def _cells(cells):
    from ._cpu import rows

    # (3, 2): one thread's rows; the second splits the rows across threads (rows.threads_for); B=1: inference
    # views of a one-row batch are C-contiguous, another compiled variant (a first call compiled 4.4 s); the last
    # splits the hidden units of a small batch (cols.threads_for, where the build machine has several threads:
    # a first call at B=4 compiled 7.4 s).
    for B, H in ((3, 2), (2 * rows.MIN_ROWS, 128), (1, 2), (4, 256)):
        _run(np.random.default_rng(0), cells, B, 4, 2, H)


def _run(rng, cells, B, T, I, H):
    from . import gru, gru_vjp, lstm, lstm_vjp

    holes = rng.random((B, T)) < 0.7
    holes[:, 1] = False
    holes[0] = True  # a hole at step 1 in every row but the first, which is full: not post/pre-padded
    lengths = np.arange(B) % (T + 1)  # packed kernels
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    for steps in (dict(mask=holes), dict(lengths=lengths)):
        if "lstm" in cells:
            weights = [rng.standard_normal(s, dtype=np.float32) for s in ((I, 4 * H), (H, 4 * H), (4 * H,))]
            (out, _, _), pullback = lstm_vjp(x, *weights, **steps)
            pullback(np.ones_like(out))
            lstm(x, *weights, **steps)  # inference: the fused kernels (maskrnn/_cpu/infer.py)
        for reset_after, bias in ((True, (2, 3 * H)), (False, (3 * H,))) if "gru" in cells else ():
            weights = [rng.standard_normal(s, dtype=np.float32) for s in ((I, 3 * H), (H, 3 * H), bias)]
            (out, _), pullback = gru_vjp(x, *weights, reset_after=reset_after, **steps)
            pullback(np.ones_like(out))
            gru(x, *weights, reset_after=reset_after, **steps)


if __name__ == "__main__":
    if sys.argv[1:] == ["gru"]:  # main's second process
        _cells(("gru",))
    else:
        print(main())
