"""On a GPU: each kernel family forced in turn (MASKRNN_CUDA_KERNEL=persistent|cooperative|step), in float32 and
float16, against the float64 step kernels, outputs and every gradient, for every cell, post-padded and holed
masks, at the benchmark's shape, edge shapes (B=1, T=1, H=1, H not a multiple of any tile) and H=1024 (where no
cluster holds U). The float64 step kernels are checked against the float64 CPU reference first. The pytest cases
on `cuda` otherwise run only the kernel the dispatcher picks; the emulation checks each family on the host
(tests/test_persistent*.py); this file runs there too (``-p plugin``), where the "cpu" device is the emulated GPU
engine. Skipped on the CPU engine and without a GPU."""

import sys

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, on_device, random_upstream
from conftest import make_mask, rel_err, to_device, to_host

from maskrnn import _dispatch

SHAPES = [(64, 100, 128, 256), (11, 9, 4, 22), (1, 1, 2, 1), (17, 30, 8, 128), (64, 20, 64, 1024)]
TOL = {"float32": 1e-4, "float16": 3e-2}


def run(monkeypatch, kernel, cell, p, upstream, mask, device):
    """Outputs and gradients (host arrays) of one forced kernel family."""
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
    _, vjp, _, extra = cell_fns(cell)
    d = on_device(p, device)
    outs, pullback = vjp(d.pop("x"), d.pop("kernel"), d.pop("recurrent_kernel"), d.pop("bias"), **d,
                         mask=to_device(mask, device), **extra)
    grads = pullback(*(to_device(u.astype(p["x"].dtype), device) for u in upstream))
    return [to_host(o) for o in outs] + [to_host(g) for g in grads._asdict().values() if g is not None]


@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", CELLS)
def test_forced_kernels_match_float64(device, rng, monkeypatch, cell, shape, mask_kind):
    if _dispatch._engine(device)[1].__name__ != "maskrnn._cuda":
        pytest.skip("the kernel families are the GPU engine's")
    if "plugin" in sys.modules:  # the host emulation: let float16 through on device "cpu"
        sys.modules["plugin"].allow_half(monkeypatch)
    B, T, I, H = shape
    p = make_problem(rng, cell, B, T, I, H, initial_state=True, scale=min(0.5, 1.5 / np.sqrt(H + I)))
    mask = make_mask(rng, mask_kind, B, T)
    upstream = random_upstream(rng, cell, B, T, H)
    want = run(monkeypatch, "step", cell, p, upstream, mask, device)
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    reference = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, mask=mask, **extra)
    for got, w in zip(want, reference):
        assert rel_err(got, w) < 1e-10
    for dtype in TOL:
        low = {k: (tuple(s.astype(dtype) for s in v) if isinstance(v, tuple) else v.astype(dtype))
               for k, v in p.items()}
        for kernel in (("persistent",) if H <= 256 else ()) + ("cooperative", "step"):
            got = run(monkeypatch, kernel, cell, low, upstream, mask, device)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.dtype == np.dtype(dtype)
                assert np.isfinite(g.astype(np.float64)).all(), (kernel, dtype)
                assert rel_err(g, w) < TOL[dtype], (kernel, dtype)
