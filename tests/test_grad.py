"""Backward: every gradient against central finite differences of the float64 reference, packed ==
masked, NaN/Inf in padding leaves every gradient finite and unchanged, the pullback is re-callable."""

import numpy as np
import pytest
from cells import (
    CELLS,
    cell_fns,
    device_planned,
    force_masked_all_rows,
    make_problem,
    on_device,
    random_upstream,
    record_plans,
)
from conftest import make_mask, to_device, to_host

ARGS = ["x", "kernel", "recurrent_kernel", "bias"]


def grads(device, cell, p, upstream, **kw):
    _, vjp, _, extra = cell_fns(cell)
    d = on_device(p, device)
    kw = {k: to_device(v, device) for k, v in kw.items()}
    outs, pullback = vjp(d.pop("x"), d.pop("kernel"), d.pop("recurrent_kernel"), d.pop("bias", None), **d,
                         **kw, **extra)
    g = pullback(*(to_device(u, device) for u in upstream))
    return [to_host(o) for o in outs], {k: to_host(v) for k, v in g._asdict().items()}


def loss(cell, p, upstream, **kw):
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    outs = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)
    return sum(float(np.sum(o * u)) for o, u in zip(outs, upstream))


def finite_difference(cell, p, upstream, name, index, eps=1e-6, **kw):
    def at(delta):
        q = {k: (tuple(s.copy() for s in v) if isinstance(v, tuple) else v.copy()) for k, v in p.items()}
        if name in ("h0", "c0"):
            states = list(q["initial_state"]) if cell == "lstm" else [q["initial_state"]]
            states[0 if name == "h0" else 1][index] += delta
            q["initial_state"] = tuple(states) if cell == "lstm" else states[0]
        else:
            q[name][index] += delta
        return loss(cell, q, upstream, **kw)

    return (at(eps) - at(-eps)) / (2 * eps)


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes", "post_holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(device, rng, cell, mask_kind, go_backwards, zero_output):
    B, T, I, H = 3, 5, 2, 3
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T), go_backwards=go_backwards, zero_output_for_mask=zero_output)
    upstream = random_upstream(rng, cell, B, T, H)
    check_finite_differences(grads(device, cell, p, upstream, **kw)[1], cell, p, upstream, B, H, **kw)


def check_finite_differences(g, cell, p, upstream, B, H, **kw):
    """Every gradient in g against central finite differences of the float64 reference."""
    for name in ARGS + (["h0", "c0"] if cell == "lstm" else ["h0"]):
        shape = (B, H) if name in ("h0", "c0") else p[name].shape
        fd = np.zeros(shape)
        for index in np.ndindex(*shape):
            fd[index] = finite_difference(cell, p, upstream, name, index, **kw)
        assert g[name].shape == shape
        np.testing.assert_allclose(g[name], fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mask_kind", ["post", "pre"])
def test_packed_gradients_equal_masked(device, rng, monkeypatch, cell, mask_kind):
    B, T, I, H = 6, 11, 3, 5
    p = make_problem(rng, cell, B, T, I, H, "float32", initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    upstream = random_upstream(rng, cell, B, T, H, "float32")
    # A GPU plan classifies no mask (it would read it back): there lengths pack, and pre-padding takes the masked
    # kernels with rows skipped (compared with every row computed).
    kw = dict(lengths=mask.sum(axis=1)) if device_planned(device) and mask_kind == "post" else dict(mask=mask)
    plans = record_plans(monkeypatch)
    packed = grads(device, cell, p, upstream, **kw)[1]
    assert plans[-1].variant == ("masked" if device_planned(device) and mask_kind == "pre" else "packed")
    force_masked_all_rows(monkeypatch)
    masked = grads(device, cell, p, upstream, **kw)[1]
    for k in packed:
        np.testing.assert_allclose(packed[k], masked[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_nonfinite_padding_leaves_gradients_unchanged(device, rng, cell, mask_kind, bad):
    B, T, I, H = 4, 7, 3, 4
    p = make_problem(rng, cell, B, T, I, H, "float32", initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    upstream = random_upstream(rng, cell, B, T, H, "float32")
    p["x"][~mask] = 0
    clean = grads(device, cell, p, upstream, mask=mask)[1]
    p["x"][~mask] = bad
    dirty = grads(device, cell, p, upstream, mask=mask)[1]
    for k in clean:
        assert np.all(np.isfinite(dirty[k])), k
        np.testing.assert_array_equal(dirty[k], clean[k], err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_pullback_is_recallable_and_none_is_zero(rng, cell):
    B, T, I, H = 3, 4, 2, 3
    p = make_problem(rng, cell, B, T, I, H)
    _, vjp, _, extra = cell_fns(cell)
    q = dict(p)
    outs, pullback = vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **extra)
    d_out = rng.standard_normal((B, T, H))
    first = pullback(d_out)
    second = pullback(d_out, np.zeros((B, H)))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    none = pullback()
    assert all(np.all(to_host(g) == 0) for g in none)


def test_no_bias_gives_no_bias_gradient(rng):
    p = make_problem(rng, "lstm", 2, 3, 2, 2, bias=False)
    _, g = grads("cpu", "lstm", p, [rng.standard_normal((2, 3, 2))])
    assert g["bias"] is None


@pytest.mark.parametrize("torch_gemm", [False, True])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_cpu_gradients_match_finite_differences_on_either_gemm(rng, monkeypatch, cell, mask_kind, torch_gemm):
    """The CPU engine's all-step GEMMs on PyTorch's (when it is loaded, maskrnn/_cpu/blas.py _torch) and on its own
    product: every gradient against finite differences of the float64 reference, either way."""
    from maskrnn._cpu import blas

    if torch_gemm:
        pytest.importorskip("torch")
    monkeypatch.setattr(blas, "TORCH_GEMM", torch_gemm)
    B, T, I, H = 3, 5, 2, 3
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T))
    upstream = random_upstream(rng, cell, B, T, H)
    check_finite_differences(grads("cpu", cell, p, upstream, **kw)[1], cell, p, upstream, B, H, **kw)
