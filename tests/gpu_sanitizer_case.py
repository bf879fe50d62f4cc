"""A small GPU workload for compute-sanitizer (not collected by pytest):

    compute-sanitizer --tool memcheck  python tests/gpu_sanitizer_case.py
    compute-sanitizer --tool racecheck python tests/gpu_sanitizer_case.py

LSTM and GRU (both variants), masked (holes) and packed (post-padded, unsorted rows), forward and backward,
with H not a multiple of the 32-unit tile and a batch not a multiple of the 8-row tile."""

import cupy
import numpy as np

import maskrnn

rng = np.random.default_rng(0)
B, T, I, H = 5, 7, 3, 37
x = cupy.asarray(rng.standard_normal((B, T, I)), dtype="float32")
lengths = cupy.asarray([7, 0, 3, 5, 1])
holes = cupy.asarray(rng.random((B, T)) > 0.3)
for cell, G, extra in (("lstm", 4, {}), ("gru", 3, {"reset_after": True}), ("gru", 3, {"reset_after": False})):
    W = cupy.asarray(rng.standard_normal((I, G * H)) * 0.3, dtype="float32")
    U = cupy.asarray(rng.standard_normal((H, G * H)) * 0.3, dtype="float32")
    vjp = maskrnn.lstm_vjp if cell == "lstm" else maskrnn.gru_vjp
    for steps in ({"lengths": lengths}, {"mask": holes}):
        for go_backwards in (False, True):
            outs, pullback = vjp(x, W, U, None, go_backwards=go_backwards, **steps, **extra)
            grads = pullback(cupy.asarray(rng.standard_normal((B, T, H)), dtype="float32"))
            cupy.cuda.get_current_stream().synchronize()
            assert all(bool(cupy.isfinite(g).all()) for g in grads if g is not None)
print("sanitizer case done")
