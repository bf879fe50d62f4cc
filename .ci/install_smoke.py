"""Smoke test of an installed maskrnn, run by .ci/install_checks.sh from outside the source tree:
    python install_smoke.py EXPECT_NATIVE(yes|no) EXPECT_SHIPPED(yes|no) [float64 | quick]
The first thing it does is the first call (float32 LSTM forward, mask): with EXPECT_SHIPPED=yes it must load
the kernels that the build compiled (a cache hit, no compile). Then LSTM and GRU, masked and packed, forward and
backward, against the float64 reference (outputs, and the input gradient against finite differences); with
"float64", a float64 LSTM forward too: a kernel that was not shipped, so it compiles and caches where it can;
with "quick", only the first call (against the reference)."""

import sys
import time

start = time.perf_counter()
import numpy as np  # noqa: E402

import maskrnn  # noqa: E402

imported = time.perf_counter()
expect_native, expect_shipped = sys.argv[1] == "yes", sys.argv[2] == "yes"
dtypes = ["float32"] + [a for a in sys.argv[3:] if a == "float64"]
rng = np.random.default_rng(0)
B, T, I, H = 4, 6, 5, 7
mask = rng.random((B, T)) < 0.7
mask[0] = False


def weights(G, dtype, bias_shape):
    return [rng.standard_normal(s).astype(dtype) * 0.5 for s in ((I, G * H), (H, G * H), bias_shape)]


x = rng.standard_normal((B, T, I)).astype(np.float32)
w = weights(4, np.float32, (4 * H,))
called, cpu = time.perf_counter(), time.process_time()
first_out = maskrnn.lstm(x, *w, mask=mask)[0]
first, first_cpu = time.perf_counter() - called, time.process_time() - cpu

from maskrnn import reference  # noqa: E402
from maskrnn._cpu import infer  # noqa: E402

kernel = infer._lstm_steps  # what an inference call runs (maskrnn/_cpu/infer.py)
hits, misses = sum(kernel._cache_hits.values()), sum(kernel._cache_misses.values())
assert maskrnn.__file__.find("/site-packages/") > 0 or "/ro/" in maskrnn.__file__, maskrnn.__file__
assert maskrnn.info()["native_extension"] == expect_native, maskrnn.info()
assert not expect_shipped or (hits, misses) == (1, 0), f"kernels compiled instead of loaded: {hits=} {misses=}"

TOL = {"float32": 1e-5, "float64": 1e-10}
ref = reference.lstm(x.astype(np.float64), *[a.astype(np.float64) for a in w], mask=mask)[0]
assert np.max(np.abs(first_out - ref)) <= TOL["float32"] * np.max(np.abs(ref))
if "quick" in sys.argv[3:]:
    dtypes = []
for dtype in dtypes[1:]:  # a kernel that was not shipped: compiled here, cached wherever this user can
    x = rng.standard_normal((B, T, I))
    w = weights(4, np.float64, (4 * H,))
    out, ref = maskrnn.lstm(x, *w, mask=mask)[0], reference.lstm(x, *w, mask=mask)[0]
    assert np.max(np.abs(out - ref)) <= TOL[dtype] * np.max(np.abs(ref)), dtype
for dtype in dtypes[:1]:
    x = rng.standard_normal((B, T, I)).astype(dtype)
    x64 = x.astype(np.float64)
    for steps in (dict(mask=mask), dict(lengths=rng.integers(0, T + 1, B))):
        for cell, G, kwargs in (("lstm", 4, {}), ("gru", 3, dict(reset_after=True))):
            w = weights(G, dtype, (2, 3 * H) if cell == "gru" else (4 * H,))
            w64 = [a.astype(np.float64) for a in w]
            (out, *_), pullback = getattr(maskrnn, f"{cell}_vjp")(x, *w, **kwargs, **steps)
            ref = getattr(reference, cell)(x64, *w64, **kwargs, **steps)[0]
            assert np.max(np.abs(out - ref)) <= TOL[dtype] * np.max(np.abs(ref)), (dtype, cell, steps)
            dx = pullback(np.ones_like(out)).x
            eps = 1e-6  # finite difference of sum(outputs) along a random direction, in float64
            d = rng.standard_normal(x.shape)
            fd = (getattr(reference, cell)(x64 + eps * d, *w64, **kwargs, **steps)[0].sum()
                  - getattr(reference, cell)(x64 - eps * d, *w64, **kwargs, **steps)[0].sum()) / (2 * eps)
            assert abs(float(np.sum(dx * d)) - fd) <= 1e-3 * max(1.0, abs(fd)), (dtype, cell, steps, fd)
print(f"smoke ok: maskrnn from {maskrnn.__file__}, native extension {expect_native}, dtypes {dtypes}; "
      f"fresh process: import {imported - start:.2f} s, first call {first:.2f} s "
      f"(CPU time {first_cpu:.2f} s; kernel cache hits {hits}, misses {misses})")
