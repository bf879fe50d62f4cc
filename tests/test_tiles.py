"""Shapes that span several tiles of the CUDA step kernels (csrc/tile.cuh), which the other suites' small shapes
never do: more than one row block (B > 32 rows forward, > 16 backward), several 64-deep k chunks with every
k-split busy (H > 64), a partial column block (H not a multiple of 8 or 16). Forward outputs and states against
the float64 reference; gradients against directional finite differences of it. Cheap on the CPU engine; CI
also runs this file on the host emulation of the kernels (tests/cuda_emulation)."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, on_device, random_upstream
from conftest import TOLERANCE, make_mask, rel_err, to_device, to_host

SHAPES = [(37, 3, 5, 70), (33, 2, 3, 129)]  # (B, T, I, H)


def _loss(cell, p, upstream, kw):
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    outs = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)
    return sum(float(np.sum(o * u)) for o, u in zip(outs, upstream))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_across_tiles(device, rng, cell, shape, mask_kind, dtype):
    B, T, I, H = shape
    p = make_problem(rng, cell, B, T, I, H, dtype, initial_state=True, scale=0.3)
    kw = dict(mask=make_mask(rng, mask_kind, B, T))
    op, _, ref, extra = cell_fns(cell)
    d = on_device(p, device)
    ours = op(d.pop("x"), d.pop("kernel"), d.pop("recurrent_kernel"), d.pop("bias"), **d,
              **{k: to_device(v, device) for k, v in kw.items()}, **extra)
    q = dict(p)
    want = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)
    for got, w in zip(ours, want):
        assert rel_err(to_host(got), w) < TOLERANCE[dtype]


@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_across_tiles(device, rng, cell, mask_kind):
    B, T, I, H = SHAPES[0]
    p = make_problem(rng, cell, B, T, I, H, initial_state=True, scale=0.3)
    kw = dict(mask=make_mask(rng, mask_kind, B, T))
    upstream = random_upstream(rng, cell, B, T, H)
    _, vjp, _, extra = cell_fns(cell)
    d = on_device(p, device)
    _, pullback = vjp(d.pop("x"), d.pop("kernel"), d.pop("recurrent_kernel"), d.pop("bias"), **d,
                      **{k: to_device(v, device) for k, v in kw.items()}, **extra)
    g = {k: to_host(v) for k, v in pullback(*(to_device(u, device) for u in upstream))._asdict().items()}
    states = ["h0", "c0"] if cell == "lstm" else ["h0"]
    for name in ["x", "kernel", "recurrent_kernel", "bias", *states]:
        shape = (B, H) if name in states else p[name].shape
        v = rng.standard_normal(shape)

        def at(eps, name=name, v=v):
            q = dict(p)
            if name in states:
                s = list(q["initial_state"]) if cell == "lstm" else [q["initial_state"]]
                s[states.index(name)] = s[states.index(name)] + eps * v
                q["initial_state"] = tuple(s) if cell == "lstm" else s[0]
            else:
                q[name] = q[name] + eps * v
            return _loss(cell, q, upstream, kw)

        fd = (at(1e-5) - at(-1e-5)) / 2e-5
        np.testing.assert_allclose(np.sum(g[name] * v), fd, rtol=1e-6, err_msg=name)
