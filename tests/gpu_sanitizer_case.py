"""A small GPU workload for compute-sanitizer (not collected by pytest):

    compute-sanitizer --tool memcheck  python tests/gpu_sanitizer_case.py
    compute-sanitizer --tool racecheck python tests/gpu_sanitizer_case.py small
    compute-sanitizer --tool initcheck python tests/gpu_sanitizer_case.py

LSTM and GRU (both variants), masked (holes) and packed (post-padded, unsorted rows, an empty row; lengths on the
GPU and on the host), forward and backward with upstream gradients of outputs and final states,
float32/float16/float64 (CuPy) and bfloat16 (torch tensors through maskrnn.torch), zero_output both ways, with H
not a multiple of the 32-unit tile and a batch not a multiple of the 8-row tile (two tiles each). Inference
(csrc/infer.cu) with biases and initial states, batch- and time-major, whole and in chunks of 3 steps. At H=509
(part of U in registers): the float32 forward and backward, and the LSTM's in float16.
bench/gpu_verify.sh runs it under all four tools (racecheck without the H=509 part: "small").
"""

import sys

import cupy
import numpy as np

import maskrnn

# "registers": the H=509 part alone; "small": all but it (racecheck on the H=509 part ran past 110 s on an H100:
# bench/results/gpu-H100-20261127f).
PART = sys.argv[1] if len(sys.argv) > 1 else "all"
assert PART in ("all", "small", "registers"), PART
rng = np.random.default_rng(0)
B, T, I, H = 11, 7, 3, 37
lengths = cupy.asarray([7, 0, 3, 5, 1, 7, 2, 6, 4, 7, 1])
holes = cupy.asarray(rng.random((B, T)) > 0.3)


def rand(shape, dtype, scale=1.0):
    return cupy.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


# H = 509, where U's slice outgrows a CTA's shared memory and each thread keeps part of it in registers (16-CTA
# clusters; two batch slices): the float32 forward, inference and training, and the backward (the LSTM's and
# reset_after GRU's: one gradient buffer, two barriers a step; the other GRU's: register rows for each of its two
# products), and the LSTM in float16.
H5 = 509
if PART in ("all", "registers"):
    for dtype in ("float32", "float16"):
        x = rand((B, 3, I), dtype)
        for cell, G, extra in (("lstm", 4, {}), ("gru", 3, {"reset_after": True}), ("gru", 3, {"reset_after": False})):
            if dtype == "float16" and cell != "lstm":
                continue
            W, U = rand((I, G * H5), dtype, 0.3), rand((H5, G * H5), dtype, 0.05)
            op, vjp = (maskrnn.lstm, maskrnn.lstm_vjp) if cell == "lstm" else (maskrnn.gru, maskrnn.gru_vjp)
            outs = op(x, W, U, None, mask=holes[:, :3], **extra)
            train, pullback = vjp(x, W, U, None, lengths=cupy.minimum(lengths, 3), **extra)
            grads = pullback(rand((B, 3, H5), dtype), *[rand((B, H5), dtype) for _ in train[1:]])
            cupy.cuda.get_current_stream().synchronize()
            finite = [bool(cupy.isfinite(o).all()) for o in outs + train + tuple(grads) if o is not None]
            assert all(finite), (cell, dtype)
if PART == "registers":
    print("sanitizer case done (registers)")
    sys.exit(0)

for dtype in ("float32", "float16", "float64"):
    x = rand((B, T, I), dtype)
    for cell, G, extra in (("lstm", 4, {}), ("gru", 3, {"reset_after": True}), ("gru", 3, {"reset_after": False})):
        W, U = rand((I, G * H), dtype, 0.3), rand((H, G * H), dtype, 0.3)
        vjp = maskrnn.lstm_vjp if cell == "lstm" else maskrnn.gru_vjp
        for steps in ({"lengths": lengths}, {"lengths": lengths.get()}, {"mask": holes}):  # device, host lengths
            for go_backwards in (False, True):
                outs, pullback = vjp(x, W, U, None, go_backwards=go_backwards, zero_output_for_mask=go_backwards,
                                     **steps, **extra)
                states = [rand((B, H), dtype) for _ in outs[1:]]
                grads = pullback(rand((B, T, H), dtype), *states)
                cupy.cuda.get_current_stream().synchronize()
                assert all(bool(cupy.isfinite(g).all()) for g in grads if g is not None), (dtype, cell, steps)

from maskrnn import _cuda  # noqa: E402

whole = _cuda.INFER_WORKSPACE
for dtype in ("float32", "float16", "float64"):
    x = rand((B, T, I), dtype)
    for cell, G, extra in (("lstm", 4, {}), ("gru", 3, {"reset_after": True}), ("gru", 3, {"reset_after": False})):
        W, U = rand((I, G * H), dtype, 0.3), rand((H, G * H), dtype, 0.3)
        bias = rand((2, G * H) if extra.get("reset_after") else (G * H,), dtype, 0.2)
        op = maskrnn.lstm if cell == "lstm" else maskrnn.gru
        init = [rand((B, H), dtype) for _ in range(2 if cell == "lstm" else 1)]
        for chunked, steps in ((False, {"lengths": lengths}), (True, {"lengths": lengths.get()}),
                               (True, {"mask": holes})):
            _cuda.INFER_WORKSPACE = 3 * B * 12 * H * 8 if chunked else whole  # chunks of 3-8 steps
            for time_major in (False, True):
                xs = x.transpose(1, 0, 2) if time_major else x
                st = {k: v.T if k == "mask" and time_major else v for k, v in steps.items()}
                outs = op(xs, W, U, bias, initial_state=init, time_major=time_major, go_backwards=time_major,
                          zero_output_for_mask=chunked, **st, **extra)
                cupy.cuda.get_current_stream().synchronize()
                assert all(bool(cupy.isfinite(o).all()) for o in outs), (dtype, cell, steps, "inference")
_cuda.INFER_WORKSPACE = whole

import torch  # noqa: E402

import maskrnn.torch as mt  # noqa: E402

for cell, G, extra in (("lstm", 4, {}), ("gru", 3, {"reset_after": True}), ("gru", 3, {"reset_after": False})):
    op = mt.lstm if cell == "lstm" else mt.gru
    args = [torch.randn(s, device="cuda", dtype=torch.bfloat16).mul_(0.3).requires_grad_()
            for s in ((B, T, I), (I, G * H), (H, G * H))]
    for steps in ({"lengths": torch.as_tensor(lengths.get(), device="cuda")},
                  {"mask": torch.as_tensor(holes.get(), device="cuda")}):
        outs = op(*args, **steps, **extra)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        torch.cuda.synchronize()
        assert all(bool(torch.isfinite(a.grad).all()) for a in args), ("bfloat16", cell, steps)
        for a in args:
            a.grad = None
print("sanitizer case done")
