"""Compile the common CPU kernels ahead of their first use, into the kernel cache (maskrnn/_cpu/cache.py).

setup.py runs this while building, so the machine code ships in the package and the first call after
``pip install`` loads it instead of compiling (seconds). ``python -m maskrnn precompile`` does the same for an
installed package, e.g. when building a container image; a read-only install caches in the first writable
location. Common means float32 LSTM and GRU (both ``reset_after``), masked and packed kernels, forward and
backward, called exactly as the public API calls them; other dtypes compile on first use.
"""

import time

import numpy as np


def main() -> str:
    from . import gru_vjp, lstm_vjp

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    B, T, I, H = 3, 4, 2, 2
    holes = np.array([[1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]], bool)  # not post/pre-padded: masked kernels
    lengths = [4, 2, 0]  # packed kernels
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    for steps in (dict(mask=holes), dict(lengths=lengths)):
        lstm = [rng.standard_normal(s, dtype=np.float32) for s in ((I, 4 * H), (H, 4 * H), (4 * H,))]
        (out, _, _), pullback = lstm_vjp(x, *lstm, **steps)
        pullback(np.ones_like(out))
        for reset_after, bias in ((True, (2, 3 * H)), (False, (3 * H,))):
            gru = [rng.standard_normal(s, dtype=np.float32) for s in ((I, 3 * H), (H, 3 * H), bias)]
            (out, _), pullback = gru_vjp(x, *gru, reset_after=reset_after, **steps)
            pullback(np.ones_like(out))
    return f"CPU kernels precompiled (float32 LSTM/GRU, forward and backward) in {time.perf_counter() - start:.0f} s"


if __name__ == "__main__":
    print(main())
