"""Forward scans against the float64 reference: every cell x mask kind x flag, packed == masked, NaN in
padding, edge shapes. The same tests run on the GPU through the device fixture."""

import numpy as np
import pytest
from cells import (
    CELLS,
    cell_fns,
    device_planned,
    force_masked_all_rows,
    make_problem,
    on_device,
    record_plans,
    results_with_transposed_weights,
)
from conftest import TOLERANCE, make_mask, rel_err, to_device, to_host

import maskrnn._dispatch as dispatch

MASKS = ["none", "post", "pre", "holes", "post_holes", "empty"]


def run(device, cell, p, **kw):
    op, _, _, extra = cell_fns(cell)
    dev = on_device(p, device)
    kw = {k: to_device(v, device) for k, v in kw.items()}
    x, W, U = dev.pop("x"), dev.pop("kernel"), dev.pop("recurrent_kernel")
    return [to_host(r) for r in op(x, W, U, dev.pop("bias", None), **dev, **kw, **extra)]


def reference(cell, p, **kw):
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    return ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(device, rng, cell, mask_kind, go_backwards, zero_output, initial_state, dtype):
    B, T, I, H = 5, 9, 4, 7
    p = make_problem(rng, cell, B, T, I, H, dtype, initial_state=initial_state)
    mask = make_mask(rng, mask_kind, B, T)
    kw = dict(mask=mask, go_backwards=go_backwards, zero_output_for_mask=zero_output)
    ours = run(device, cell, p, **kw)
    for got, want in zip(ours, reference(cell, p, **kw)):
        assert got.dtype == np.dtype(dtype)
        assert rel_err(got, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 3, 5), (3, 1, 2, 33), (1, 37, 3, 4), (2, 300, 5, 6)])
def test_edge_shapes(device, rng, cell, shape):
    B, T, I, H = shape
    p = make_problem(rng, cell, B, T, I, H, "float32")
    lengths = rng.integers(0, T + 1, B)
    for kw in (dict(lengths=lengths), dict(mask=make_mask(rng, "holes", B, T))):
        for got, want in zip(run(device, cell, p, **kw), reference(cell, p, **kw)):
            assert rel_err(got, want) < TOLERANCE["float32"]


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_equal_post_mask(device, rng, cell):
    B, T = 6, 8
    p = make_problem(rng, cell, B, T, 3, 5)
    lengths = np.array([8, 0, 3, 8, 1, 5])
    mask = np.arange(T)[None, :] < lengths[:, None]
    for a, b in zip(run(device, cell, p, lengths=lengths), run(device, cell, p, mask=mask)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mask_kind", ["post", "pre"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_equals_masked(device, rng, monkeypatch, cell, mask_kind, go_backwards):
    B, T = 7, 12
    p = make_problem(rng, cell, B, T, 4, 6, "float32", initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    kw = dict(mask=mask, go_backwards=go_backwards)
    on_gpu = device_planned(device)
    if on_gpu and mask_kind == "post":  # a GPU plan classifies no mask (it would read it back): lengths pack
        kw = dict(lengths=mask.sum(axis=1), go_backwards=go_backwards)
    plans = record_plans(monkeypatch)
    packed = run(device, cell, p, **kw)
    # On the GPU the others (and lengths scanned backwards: pre-padding) take the masked kernels, rows skipped.
    assert plans[-1].variant == ("packed" if not on_gpu or (mask_kind == "post" and not go_backwards) else "masked")
    force_masked_all_rows(monkeypatch)
    masked = run(device, cell, p, **kw)
    for a, b in zip(packed, masked):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_nonfinite_padding_changes_nothing(device, rng, cell, mask_kind, bad):
    B, T = 4, 10
    p = make_problem(rng, cell, B, T, 3, 5, "float32", initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    clean = run(device, cell, dict(p, x=np.where(mask[:, :, None], p["x"], 0).astype("float32")), mask=mask)
    p["x"][~mask] = bad
    dirty = run(device, cell, p, mask=mask)
    for a, b in zip(dirty, clean):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_time_major_and_non_contiguous(device, rng, cell):
    B, T, I, H = 3, 6, 4, 5
    p = make_problem(rng, cell, B, 2 * T, I, H)
    mask = make_mask(rng, "holes", B, 2 * T)
    p["x"], mask = p["x"][:, ::2], mask[:, ::2]  # strided views
    p["kernel"] = np.asfortranarray(p["kernel"])
    want = reference(cell, p, mask=mask)
    tm = dict(p, x=p["x"].transpose(1, 0, 2))
    got = run(device, cell, tm, mask=mask.T, time_major=True)
    assert rel_err(got[0], want[0].transpose(1, 0, 2)) < TOLERANCE["float64"]
    for g, w in zip(got[1:], want[1:]):
        assert rel_err(g, w) < TOLERANCE["float64"]


@pytest.mark.parametrize("shape", [(300, 260), (1, 517), (517, 1), (0, 40), (128, 256), (7, 5)])
def test_c_copy_copies_any_layout_exactly(rng, shape):
    """The tiled copy of a transposed host matrix (maskrnn._dispatch.c_copy): every element in place, C order,
    a copy, at sizes that end in partial tiles, for transposed, strided, reversed and C-contiguous views."""
    from maskrnn._dispatch import TILE, c_copy

    base = rng.standard_normal((shape[1] * 2, shape[0] * 3))
    views = (base[: shape[1], : shape[0]].T, base[::2, ::3].T, base[::-2, ::-3].T,
             np.asfortranarray(base[: shape[0], : shape[1]]), np.ascontiguousarray(base[: shape[0], : shape[1]]))
    assert any(max(shape) > TILE and not a.flags.c_contiguous for a in views) or max(shape) <= TILE
    for a in views:
        got = c_copy(np, a)
        assert got.flags.c_contiguous and got.shape == a.shape and not np.shares_memory(got, a)
        np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("cell", CELLS)
def test_transposed_weights_give_the_same_results(device, rng, cell):
    """Weights as transposed views (torch.nn's parameters in Keras's layout), larger than one copy tile: outputs
    and every gradient those of the same weights in C order, bit for bit on the CPU engine (it packs either layout
    into the same panels), within float32 rounding where a BLAS takes the layout as given (the GPU's GEMMs)."""
    from maskrnn import _cpu

    exact = device == "cpu" and dispatch._engine("cpu")[1] is _cpu
    p = make_problem(rng, cell, 3, 5, 150, 40, "float32")
    for a, b in zip(*results_with_transposed_weights(cell, p, device, mask=make_mask(rng, "holes", 3, 5))):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            assert rel_err(a, b) < TOLERANCE["float32"]


def test_empty_batch(rng):
    p = make_problem(rng, "lstm", 0, 4, 3, 2)
    out, h, c = run("cpu", "lstm", p, lengths=np.zeros(0, np.int64))
    assert out.shape == (0, 4, 2) and h.shape == (0, 2) and c.shape == (0, 2)


def test_keras_test_vectors():
    """keras/src/layers/rnn/lstm_test.py::test_masking (keras-masking-spec.md section 4.12)."""
    import maskrnn

    x = np.arange(24, dtype="float32").reshape(2, 4, 3)
    W, U = np.full((3, 8), 0.01, "float32"), np.full((2, 8), 0.02, "float32")
    b = np.array([0.03, 0.03, 1, 1, 0.03, 0.03, 0.03, 0.03], "float32")
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    out, _, _ = maskrnn.lstm(x, W, U, b, mask=mask)
    np.testing.assert_allclose(out[:, :, 0], [[0.0158891, 0.05552048, 0.11755939, 0.11755939],
                                              [0.14185596, 0.28556206, 0.28556206, 0.28556206]], atol=1e-6)
    out, _, _ = maskrnn.lstm(x, W, U, b, mask=mask, zero_output_for_mask=True)
    np.testing.assert_allclose(out[1, :, 0], [0.14185596, 0.28556206, 0, 0], atol=1e-6)
    out, _, _ = maskrnn.lstm(x, W, U, b, mask=mask[:, ::-1].copy(), go_backwards=True)
    np.testing.assert_allclose(out[:, -1, 0], [0.15341201, 0.3844719], atol=1e-6)
    gmask = np.array([[True, True, False, True], [True, False, False, True]])
    Wg, Ug, bg = np.full((3, 6), 0.01, "float32"), np.full((2, 6), 0.02, "float32"), np.full((2, 6), 0.03, "float32")
    out, _ = maskrnn.gru(x, Wg, Ug, bg, mask=gmask)
    np.testing.assert_allclose(out[:, -1, 0], [0.19393763, 0.30818558], atol=1e-6)
    np.testing.assert_allclose(out[1, :, 0], [0.16051409, 0.16051409, 0.16051409, 0.30818558], atol=1e-6)
    out, _ = maskrnn.gru(x, Wg, Ug, bg, mask=gmask, go_backwards=True)
    np.testing.assert_allclose(out[:, -1, 0], [0.11669192, 0.28380975], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16"])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_half_precision_on_gpu(device, rng, cell, mask_kind, dtype):
    if device == "cpu":
        pytest.skip("half precision runs on the GPU only (the CPU engine rejects it, see test_errors)")
    B, T, I, H = 6, 20, 8, 40
    p = make_problem(rng, cell, B, T, I, H, dtype)
    mask = make_mask(rng, mask_kind, B, T)
    for got, want in zip(run(device, cell, p, mask=mask), reference(cell, p, mask=mask)):
        assert got.dtype == np.dtype(dtype)
        assert rel_err(got, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1, 5)])
def test_plan_without_a_mask_is_the_all_true_masks(shape):
    """make_plan's shortcut for no mask (source "none") gives the plan it makes from reading an all-True mask,
    reversed in time too (go_backwards' view)."""
    for mask in (np.ones(shape, bool), np.ones(shape, bool)[::-1]):
        quick, read = dispatch.make_plan(np, mask, "none"), dispatch.make_plan(np, mask)
        assert quick.variant == read.variant == "packed" and quick.order is read.order is None
        np.testing.assert_array_equal(quick.batch_sizes, read.batch_sizes)
        np.testing.assert_array_equal(quick.mask, read.mask)
        assert quick.batch_sizes.dtype == read.batch_sizes.dtype and quick.mask.flags.c_contiguous


def test_masked_plan_skips_steps_after_each_rows_last_real_step():
    mask = np.array([[1, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], bool)
    plan = dispatch.make_plan(np, mask.T.copy())
    assert plan.variant == "masked"
    np.testing.assert_array_equal(plan.order, [3, 1, 0, 2])  # last real steps 5, 4, 2, none
    np.testing.assert_array_equal(plan.batch_sizes, [3, 3, 3, 2, 2, 1])
    np.testing.assert_array_equal(plan.mask, mask.T[:, [3, 1, 0, 2]])
