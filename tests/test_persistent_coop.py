"""The cooperative persistent forward (csrc/persistent_coop.cuh) on the CUDA emulation: forced with
MASKRNN_CUDA_KERNEL=cooperative and, so that small shapes use many CTAs, MASKRNN_CUDA_COOP_UNITS (units per CTA,
tests only), against the float64 reference and the forced step kernels, for every cell, mask kind and dtype:
several CTAs with the last one short, one unit per CTA, several row blocks per CTA and several staged chunks of h
(H not a multiple of either), B=1, T=1, long T, rows finishing at different steps, NaN in padding, go_backwards;
its tape under the step kernels' backward; the cooperative backwards against the float64 step kernels' and finite
differences; the choice (auto never runs it: the step kernels run where one cluster cannot hold U; the forced
names, their errors).
Runs with the CUDA-emulation suite (``-p plugin``, after build.py); skipped otherwise."""

import sys

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

import numpy as np  # noqa: E402
from cells import CELLS, cell_fns, make_problem, random_upstream  # noqa: E402
from conftest import TOLERANCE, make_mask, rel_err  # noqa: E402
from plugin import allow_half  # noqa: E402
from test_grad import finite_difference, grads  # noqa: E402
from test_persistent import DTYPES, backward, call, cast, forward, nan_in_padding  # noqa: E402


def check_cooperative(monkeypatch, cell, p, dtype, units, **kw):
    """Forced cooperative (at most `units` units per CTA) and forced step forwards against the reference (on the
    inputs rounded to dtype) and against each other."""
    allow_half(monkeypatch)
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", str(units))
    _, _, ref, extra = cell_fns(cell)
    low = cast(p, DTYPES[dtype])
    want = call(ref, cast(low, np.float64), extra, **kw)
    coop = forward(monkeypatch, "cooperative", cell, low, **kw)
    step = forward(monkeypatch, "step", cell, low, **kw)
    for a, b, w in zip(coop, step, want):
        assert a.dtype == np.dtype(DTYPES[dtype])
        assert np.isfinite(a.astype(np.float64)).all()
        assert rel_err(a, w) < TOLERANCE[dtype]
        assert rel_err(a, b.astype(np.float64)) < TOLERANCE[dtype]


# H = 22 at 3 units a CTA: 8 CTAs, the last with 1; B = 11: one row block of 12 rows, the last partial.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("cell", CELLS)
def test_cooperative_matches_reference_and_step(monkeypatch, rng, cell, mask_kind, dtype):
    B, T, I, H = 11, 9, 4, 22
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    check_cooperative(monkeypatch, cell, nan_in_padding(p, mask), dtype, 3, mask=mask,
                      zero_output_for_mask=mask_kind == "holes")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_cooperative_half_precision(monkeypatch, rng, cell, mask_kind, dtype):
    B, T, I, H = 11, 7, 4, 22
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    check_cooperative(monkeypatch, cell, nan_in_padding(p, mask), dtype, 3, mask=mask)


# (B, T, I, H, units a CTA): one unit, B=1 over 40 CTAs of one unit, 7 CTAs of 5 units (the last with 3), long T (40),
# T=1 in one CTA, H=130 in 3 CTAs of 44 units (the last 42): 5 row groups, so B=11 is two row blocks of 10 rows
# (the second with one row), and h in chunks of 64, 64 and 2 units.
SHAPES = [(1, 1, 2, 1, 1), (1, 5, 3, 40, 1), (17, 6, 3, 33, 5), (3, 40, 2, 9, 2), (9, 1, 3, 64, 64),
          (11, 4, 2, 130, 44)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_cooperative_shapes(monkeypatch, rng, cell, shape):
    B, T, I, H, units = shape
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    lengths = rng.permutation(np.arange(T + 1))[:B] if B <= T + 1 else rng.integers(0, T + 1, B)
    check_cooperative(monkeypatch, cell, p, "float32", units, lengths=lengths)  # rows finishing at different steps
    mask = make_mask(rng, "holes", B, T)
    check_cooperative(monkeypatch, cell, nan_in_padding(p, mask), "float32", units, mask=mask, go_backwards=True)


@pytest.mark.parametrize("dtype, mask_kind", [("float32", "post"), ("float16", "holes")])
@pytest.mark.parametrize("cell", CELLS)
def test_step_backward_on_the_cooperative_tape(monkeypatch, rng, cell, mask_kind, dtype):
    """The cooperative forward's tape (gx's activations, hs, cs or hr) is the step kernels' own: the step
    backward on it gives the gradients of the all-step run."""
    allow_half(monkeypatch)
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", "4")
    B, T, I, H = 9, 7, 3, 19
    p = cast(make_problem(rng, cell, B, T, I, H, initial_state=True), DTYPES[dtype])
    mask = make_mask(rng, mask_kind, B, T)
    upstream = random_upstream(rng, cell, B, T, H)
    got = backward(monkeypatch, "step", cell, p, upstream, forward_kernel="cooperative", mask=mask)
    want = backward(monkeypatch, "step", cell, p, upstream, forward_kernel="step", mask=mask)
    assert got.keys() == want.keys()
    for name, w in want.items():
        assert rel_err(got[name], w.astype(np.float64)) < TOLERANCE[dtype], name


def test_auto_runs_the_step_kernels_where_one_cluster_cannot_hold_u(monkeypatch, rng):
    """float64 LSTM at H=400: U's slice does not fit a 16-CTA cluster; unforced, the step kernels run, not the
    cooperative kernel (its results differ from the step kernels' in the last bits): on an H100 the cooperative
    kernels took 2-7 times the step kernels' time (csrc/persistent.cuh)."""
    p = make_problem(rng, "lstm", 3, 3, 2, 400, initial_state=True)
    with pytest.raises(RuntimeError, match="persistent cannot run this scan: at H=400 a 16-CTA cluster's CTA"):
        forward(monkeypatch, "persistent", "lstm", p)
    auto = forward(monkeypatch, "auto", "lstm", p)
    coop = forward(monkeypatch, "cooperative", "lstm", p)
    step = forward(monkeypatch, "step", "lstm", p)
    assert any(not np.array_equal(a, b) for a, b in zip(coop, step))
    for a, b, c, w in zip(auto, step, coop, call(cell_fns("lstm")[2], p, {})):
        np.testing.assert_array_equal(a, b)
        assert rel_err(c, w) < TOLERANCE["float64"]


def test_forced_cooperative_raises_where_u_does_not_fit_every_sm(monkeypatch, rng):
    """float64 LSTM at H=1100: U (37 MiB) does not fit the shared memory of every SM."""
    p = make_problem(rng, "lstm", 1, 2, 2, 1100)
    with pytest.raises(RuntimeError, match="MASKRNN_CUDA_KERNEL=cooperative cannot run this scan: at H=1100 a CTA "
                                           "of 9 units needs 317824 bytes of shared memory"):
        forward(monkeypatch, "cooperative", "lstm", p)


def test_auto_runs_the_step_lstm_backward_where_one_cluster_cannot_hold_u(monkeypatch, rng):
    """float64 LSTM at H=400, forward and backward unforced: the step kernels' gradients, not the cooperative
    kernels' (which match them to float64's tolerance)."""
    p = make_problem(rng, "lstm", 3, 3, 2, 400, initial_state=True)
    upstream = random_upstream(rng, "lstm", 3, 3, 400)
    auto = backward(monkeypatch, "auto", "lstm", p, upstream, forward_kernel="auto")
    coop = backward(monkeypatch, "cooperative", "lstm", p, upstream, forward_kernel="cooperative")
    step = backward(monkeypatch, "step", "lstm", p, upstream, forward_kernel="step")
    assert any(not np.array_equal(coop[k], step[k]) for k in step)
    for k, v in step.items():
        np.testing.assert_array_equal(auto[k], v)
        assert rel_err(coop[k], v) < TOLERANCE["float64"]


def test_auto_runs_the_step_kernels_where_no_persistent_kernel_can(monkeypatch, rng):
    """float64 LSTM at H=400 (no one-cluster kernel) on a GPU without cooperative launch: forced cooperative
    raises why, unforced the step kernels run."""
    monkeypatch.setenv("EMU_NO_COOPERATIVE", "1")
    p = make_problem(rng, "lstm", 1, 2, 2, 400)
    with pytest.raises(RuntimeError, match="cooperative cannot run this scan: this GPU has no cooperative launch"):
        forward(monkeypatch, "cooperative", "lstm", p)
    auto = forward(monkeypatch, "auto", "lstm", p)
    for a, b in zip(auto, forward(monkeypatch, "step", "lstm", p)):
        np.testing.assert_array_equal(a, b)


def test_forced_cooperative_raises_where_its_ctas_cannot_all_be_resident(monkeypatch, rng):
    """One unit a CTA at B=512: 256 threads of two rows and a 128 KiB chunk of h each, one CTA an SM: 132 of 200."""
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", "1")
    p = make_problem(rng, "gru", 512, 1, 2, 200, "float32")
    with pytest.raises(RuntimeError, match="cooperative cannot run this scan: only 132 of its 200 CTAs"):
        forward(monkeypatch, "cooperative", "gru", p)


@pytest.mark.parametrize("value", ["0", "-2", "three"])
def test_bad_units_override_raises(monkeypatch, rng, value):
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", value)
    p = make_problem(rng, "lstm", 2, 3, 2, 4, "float32")
    with pytest.raises(ValueError, match=f"MASKRNN_CUDA_COOP_UNITS must be a positive integer; got '{value}'"):
        forward(monkeypatch, "cooperative", "lstm", p)


def test_without_clusters_auto_runs_the_step_kernels(monkeypatch, rng):
    """An sm_80 GPU has no clusters but has cooperative launch: unforced, the step kernels run; forced, the
    cooperative kernel runs there."""
    monkeypatch.setenv("EMU_SM_MAJOR", "8")
    p = make_problem(rng, "gru", 5, 4, 2, 30, "float32", initial_state=True)
    auto = forward(monkeypatch, "auto", "gru", p)
    step = forward(monkeypatch, "step", "gru", p)
    for a, b, c, w in zip(auto, step, forward(monkeypatch, "cooperative", "gru", p), call(cell_fns("gru")[2], p, {})):
        np.testing.assert_array_equal(a, b)
        assert rel_err(c, w) < TOLERANCE["float32"]


def check_backward(monkeypatch, rng, cell, p, dtype, units, **kw):
    """The forward and backward forced cooperative (at most `units` units a CTA), in dtype, against the float64
    step kernels' gradients (checked against finite differences by test_grad.py) on the inputs rounded to dtype."""
    allow_half(monkeypatch)
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", str(units))
    (B, T, _), H = p["x"].shape, p["recurrent_kernel"].shape[0]
    upstream = [u.astype(DTYPES[dtype]).astype(np.float64) for u in random_upstream(rng, cell, B, T, H)]
    low = cast(p, DTYPES[dtype])
    want = backward(monkeypatch, "step", cell, cast(low, np.float64), upstream, forward_kernel="step", **kw)
    coop = backward(monkeypatch, "cooperative", cell, low, upstream, forward_kernel="cooperative", **kw)
    assert coop.keys() == want.keys()
    for name, w in want.items():
        assert coop[name].dtype == np.dtype(DTYPES[dtype]), name
        assert np.isfinite(coop[name].astype(np.float64)).all(), name
        assert rel_err(coop[name], w) < TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype, mask_kind", [("float32", m) for m in ("none", "post", "pre", "holes", "post_holes",
                                                                        "empty")]
                         + [(d, m) for d in ("float64", "float16", "bfloat16") for m in ("post", "holes")])
@pytest.mark.parametrize("cell", CELLS)
def test_cooperative_backward(monkeypatch, rng, cell, dtype, mask_kind):
    B, T, I, H = 11, 9, 4, 22
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    check_backward(monkeypatch, rng, cell, nan_in_padding(p, mask), dtype, 3, mask=mask,
                   zero_output_for_mask=mask_kind == "holes")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_cooperative_backward_shapes(monkeypatch, rng, cell, shape):
    B, T, I, H, units = shape
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    lengths = rng.permutation(np.arange(T + 1))[:B] if B <= T + 1 else rng.integers(0, T + 1, B)
    check_backward(monkeypatch, rng, cell, p, "float32", units, lengths=lengths, go_backwards=True)


# B = 9: one row block; H = 5 at 2 units a CTA: 3 CTAs, the last with 1; rows finishing at different steps.
@pytest.mark.parametrize("cell, mask_kind, go_backwards, zero_output", [
    ("lstm", "post", False, False), ("lstm", "holes", True, True), ("gru", "post_holes", False, True),
    ("gru_v1", "pre", True, False)])
def test_cooperative_gradients_match_finite_differences(monkeypatch, rng, cell, mask_kind, go_backwards,
                                                        zero_output):
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", "cooperative")
    monkeypatch.setenv("MASKRNN_CUDA_COOP_UNITS", "2")
    B, T, I, H = 9, 5, 2, 5
    mask = make_mask(rng, mask_kind, B, T)
    p = nan_in_padding(make_problem(rng, cell, B, T, I, H, initial_state=True), mask)
    kw = dict(mask=mask, go_backwards=go_backwards, zero_output_for_mask=zero_output)
    upstream = random_upstream(rng, cell, B, T, H)
    g = grads("cpu", cell, p, upstream, **kw)[1]
    clean = dict(p, x=np.where(np.isnan(p["x"]), 0.0, p["x"]))  # the reference's x: padding never read
    for name in ("x", "kernel", "recurrent_kernel", "bias", "h0") + (("c0",) if cell == "lstm" else ()):
        shape = (B, H) if name in ("h0", "c0") else p[name].shape
        fd = np.zeros(shape)
        for index in np.ndindex(*shape):
            fd[index] = finite_difference(cell, clean, upstream, name, index, **kw)
        np.testing.assert_allclose(g[name], fd, rtol=1e-6, atol=1e-7, err_msg=name)
