"""The persistent kernels (csrc/persistent_fwd.cuh, persistent_bwd.cuh) on the CUDA emulation: forced with
MASKRNN_CUDA_KERNEL=persistent, against the float64 reference and against the forced step kernels, for every
cell, mask kind and dtype; cluster splits that leave the last CTA fewer units, H not a multiple of any tile,
B=1 and several batch slices, T=1 and long T, rows finishing at different steps, NaN in padding; gradients
through them (every cell's persistent backward against finite differences, the GRUs' against the step kernels'
in every dtype and at the edge shapes); the choice's errors and fallback, backward included. The kernels with
part of U in registers (H = 509, 512): test_persistent_registers.py.
Runs with the CUDA-emulation suite (``-p plugin``, after build.py); skipped otherwise."""

import sys

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from cells import CELLS, cell_fns, make_problem, random_upstream  # noqa: E402
from conftest import TOLERANCE, make_mask, rel_err  # noqa: E402
from plugin import allow_half, before_unreadable_page  # noqa: E402
from test_grad import finite_difference, grads  # noqa: E402

DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def cast(p, dtype):
    return {k: (tuple(s.astype(dtype) for s in v) if isinstance(v, tuple) else v.astype(dtype)) for k, v in p.items()}


def call(fn, p, extra, **kw):
    q = dict(p)
    return fn(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)


def forward(monkeypatch, kernel, cell, p, **kw):
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
    op, _, _, extra = cell_fns(cell)
    return call(op, p, extra, device="cpu", **kw)


def nan_in_padding(p, mask):
    """x with NaN at every masked step: it must reach no output."""
    if mask is not None:
        p["x"] = p["x"].copy()
        p["x"][~mask] = np.nan
    return p


def check_both_kernels(monkeypatch, cell, p, dtype, rounding=1.0, **kw):
    """Forced persistent and forced step forwards against the reference (on the inputs rounded to dtype) and
    against each other, within TOLERANCE[dtype] * rounding."""
    _, _, ref, extra = cell_fns(cell)
    low = cast(p, DTYPES[dtype])
    low["recurrent_kernel"] = before_unreadable_page(low["recurrent_kernel"])  # nothing may read past U (plugin.py)
    want = call(ref, cast(low, np.float64), extra, **kw)
    persistent = forward(monkeypatch, "persistent", cell, low, **kw)
    step = forward(monkeypatch, "step", cell, low, **kw)
    tolerance = TOLERANCE[dtype] * rounding
    for a, b, w in zip(persistent, step, want):
        assert a.dtype == np.dtype(DTYPES[dtype])
        assert rel_err(a, w) < tolerance
        assert rel_err(b, w) < tolerance
        assert rel_err(a, b.astype(np.float64)) < tolerance


# H = 22: 8 CTAs of 3 units, the last with 1; B = 11: two batch slices, the second partial.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_matches_reference_and_step(monkeypatch, rng, cell, mask_kind, dtype):
    B, T, I, H = 11, 9, 4, 22
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    check_both_kernels(monkeypatch, cell, nan_in_padding(p, mask), dtype, mask=mask,
                       zero_output_for_mask=mask_kind == "holes")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_half_precision(monkeypatch, rng, cell, mask_kind, dtype):
    allow_half(monkeypatch)
    B, T, I, H = 10, 8, 6, 40  # 8 CTAs of 5 units
    p = make_problem(rng, cell, B, T, I, H, initial_state=mask_kind == "holes")
    mask = make_mask(rng, mask_kind, B, T)
    check_both_kernels(monkeypatch, cell, nan_in_padding(p, mask), dtype, mask=mask)


# (B, T, I, H): one unit, B=1, H=33 (7 CTAs of 5 units, the last with 3), three slices, long T, T=1,
# H=64 (8 CTAs of 8 units), H=250 in float64 (LSTM: 16-CTA clusters, U's slice is too big for 8).
SHAPES = [(1, 1, 2, 1), (1, 5, 3, 40), (17, 6, 3, 33), (20, 4, 2, 5), (3, 150, 2, 9), (9, 1, 3, 64),
          (2, 3, 2, 250)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_shapes(monkeypatch, rng, cell, shape):
    B, T, I, H = shape
    dtype = "float64" if H == 250 else "float32"
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    lengths = rng.permutation(np.arange(T + 1))[:B] if B <= T + 1 else rng.integers(0, T + 1, B)
    check_both_kernels(monkeypatch, cell, p, dtype, lengths=lengths)  # rows finishing at different steps
    check_both_kernels(monkeypatch, cell, p, dtype, mask=make_mask(rng, "holes", B, T))


@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_after_persistent_forward(monkeypatch, rng, cell, mask_kind):
    """The gradients through the persistent kernels (forward and backward) equal the step kernels'."""
    B, T, I, H = 9, 7, 3, 19
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    upstream = random_upstream(rng, cell, B, T, H)
    got = {}
    for kernel in ("persistent", "step"):
        monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
        got[kernel] = grads("cpu", cell, p, upstream, mask=mask)[1]
    for name, a in got["persistent"].items():
        b = got["step"][name]
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel_err(a, b) < TOLERANCE["float64"], name


# B = 9: two batch slices; H = 5: 5 CTAs of one unit; rows finishing at different steps.
@pytest.mark.parametrize("mask_kind, go_backwards, zero_output", [
    ("post", False, False), ("pre", True, False), ("holes", False, True), ("post_holes", True, True)])
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_gradients_match_finite_differences(monkeypatch, rng, cell, mask_kind, go_backwards, zero_output):
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", "persistent")
    B, T, I, H = 9, 5, 2, 5
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    p = nan_in_padding(p, mask)
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


def backward(monkeypatch, kernel, cell, p, upstream, forward_kernel="persistent", **kw):
    """The gradients (a dict) with the backward run by kernel on forward_kernel's tape: the variable is read at
    every call, so the backward alone is switched."""
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", forward_kernel)
    _, vjp, _, extra = cell_fns(cell)
    _, pullback = call(vjp, p, extra, device="cpu", **kw)
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
    dtype = p["x"].dtype
    return {k: v for k, v in pullback(*(u.astype(dtype) for u in upstream))._asdict().items() if v is not None}


def check_both_backwards(monkeypatch, rng, cell, p, dtype, rounding=1.0, want_forward="persistent", **kw):
    """The backward forced persistent, in dtype, against the float64 step kernels' (checked against finite
    differences by test_grad.py; on want_forward's tape) on the inputs rounded to dtype, and in the half types also
    against the step kernels' in dtype; within TOLERANCE[dtype] * rounding."""
    (B, T, _), H = p["x"].shape, p["recurrent_kernel"].shape[0]
    upstream = [u.astype(DTYPES[dtype]).astype(np.float64) for u in random_upstream(rng, cell, B, T, H)]
    low = cast(p, DTYPES[dtype])  # the training path's copies of W and U end at unreadable pages (plugin.py)
    want = backward(monkeypatch, "step", cell, cast(low, np.float64), upstream, forward_kernel=want_forward, **kw)
    persistent = backward(monkeypatch, "persistent", cell, low, upstream, **kw)
    step = backward(monkeypatch, "step", cell, low, upstream, **kw) if dtype in ("float16", "bfloat16") else want
    assert persistent.keys() == want.keys() == step.keys()
    for name, w in want.items():
        assert persistent[name].dtype == np.dtype(DTYPES[dtype]), name
        assert np.isfinite(persistent[name].astype(np.float64)).all(), name
        assert rel_err(persistent[name], w) < TOLERANCE[dtype] * rounding, name
        assert rel_err(persistent[name], step[name].astype(np.float64)) < TOLERANCE[dtype] * rounding, name


GRUS = [c for c in CELLS if c != "lstm"]


# H = 22: 8 CTAs of 3 units, the last with 1; B = 11: two batch slices, the second partial.
@pytest.mark.parametrize("dtype, mask_kind", [(d, m) for d in ("float32", "float64")
                                              for m in ("none", "post", "pre", "holes", "post_holes", "empty")]
                         + [(d, m) for d in ("float16", "bfloat16") for m in ("post", "holes")])
@pytest.mark.parametrize("cell", GRUS)
def test_persistent_gru_backward_matches_step(monkeypatch, rng, cell, dtype, mask_kind):
    allow_half(monkeypatch)
    B, T, I, H = 11, 9, 4, 22
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    check_both_backwards(monkeypatch, rng, cell, nan_in_padding(p, mask), dtype, mask=mask,
                         zero_output_for_mask=mask_kind == "holes")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", GRUS)
def test_persistent_gru_backward_shapes(monkeypatch, rng, cell, shape):
    B, T, I, H = shape
    dtype = "float64" if H == 250 else "float32"
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    lengths = rng.permutation(np.arange(T + 1))[:B] if B <= T + 1 else rng.integers(0, T + 1, B)
    check_both_backwards(monkeypatch, rng, cell, p, dtype, lengths=lengths)  # rows finishing at different steps
    check_both_backwards(monkeypatch, rng, cell, p, dtype, mask=make_mask(rng, "holes", B, T))


def test_unknown_kernel_choice_raises(monkeypatch, rng):
    p = make_problem(rng, "lstm", 2, 3, 2, 4, "float32")
    with pytest.raises(ValueError,
                       match="MASKRNN_CUDA_KERNEL must be persistent, registers, cooperative, step, auto or unset; "
                             "got 'fast'"):
        forward(monkeypatch, "fast", "lstm", p)


@pytest.mark.parametrize("cell", CELLS)
def test_forced_persistent_raises_where_it_cannot_run(monkeypatch, rng, cell):
    p = make_problem(rng, cell, 1, 2, 2, 1100, "float32")
    with pytest.raises(RuntimeError, match="MASKRNN_CUDA_KERNEL=persistent cannot run this scan: at H=1100"):
        forward(monkeypatch, "persistent", cell, p)


def test_auto_falls_back_to_the_step_kernels(monkeypatch, rng):
    """float64 LSTM at H=400: U's slice does not fit even a 16-CTA cluster; unforced, the step kernels run."""
    B, T, I, H = 1, 2, 2, 400
    p = make_problem(rng, "lstm", B, T, I, H)
    with pytest.raises(RuntimeError, match="shared memory"):
        forward(monkeypatch, "persistent", "lstm", p)
    auto = forward(monkeypatch, "auto", "lstm", p)
    step = forward(monkeypatch, "step", "lstm", p)
    for a, b, w in zip(auto, step, call(cell_fns("lstm")[2], p, {})):
        np.testing.assert_array_equal(a, b)
        assert rel_err(a, w) < TOLERANCE["float64"]


def test_auto_runs_the_persistent_kernel_where_it_fits(monkeypatch, rng):
    """H=40: the two kernels sum h U in different orders, so their float32 results differ in the last bits;
    unforced, the results are the persistent kernel's."""
    p = make_problem(rng, "lstm", 6, 5, 3, 40, "float32")
    auto = forward(monkeypatch, "auto", "lstm", p)
    persistent = forward(monkeypatch, "persistent", "lstm", p)
    step = forward(monkeypatch, "step", "lstm", p)
    assert any(not np.array_equal(a, b) for a, b in zip(persistent, step))
    for a, b in zip(auto, persistent):
        np.testing.assert_array_equal(a, b)


def test_without_clusters_forced_persistent_raises_and_auto_runs_the_step_kernels(monkeypatch, rng):
    monkeypatch.setenv("EMU_SM_MAJOR", "8")  # the emulated GPU reports sm_80: no thread-block clusters
    p = make_problem(rng, "lstm", 3, 4, 2, 6, "float32")
    with pytest.raises(RuntimeError, match="thread-block clusters need sm_90 or newer, this GPU is sm_8x"):
        forward(monkeypatch, "persistent", "lstm", p)
    auto = forward(monkeypatch, "auto", "lstm", p)
    for a, b in zip(auto, forward(monkeypatch, "step", "lstm", p)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", GRUS)
def test_gru_backward_choice(monkeypatch, rng, cell):
    """The backward's own choice, on one forward tape: unforced where it fits, the persistent backward's results
    (float32 at H=40: they differ from the step kernels' in the last bits); forced where it cannot run, a clear
    error, and unforced there the step kernels' results: float64 at H=290 with reset_after, where the forward's U
    slice fits a 16-CTA cluster but the backward's exchange buffers do not fit beside it; float64 at H=330
    without reset_after, on the step kernels' tape (neither fits there: its backward has one exchange buffer, so
    no H fits the forward and not the backward); and without clusters."""
    upstream = random_upstream(rng, cell, 6, 5, 40)
    p = cast(make_problem(rng, cell, 6, 5, 3, 40), np.float32)
    auto = backward(monkeypatch, "auto", cell, p, upstream)
    persistent = backward(monkeypatch, "persistent", cell, p, upstream)
    step = backward(monkeypatch, "step", cell, p, upstream)
    assert any(not np.array_equal(persistent[k], step[k]) for k in step)
    for k in auto:
        np.testing.assert_array_equal(auto[k], persistent[k])
    big, big_forward = (290, "persistent") if cell == "gru" else (330, "step")
    for sm_major, H, forward_kernel, why in (("9", big, big_forward, f"at H={big} a 16-CTA cluster's CTA needs"),
                                             ("8", 6, "step", "thread-block clusters need sm_90")):
        monkeypatch.setenv("EMU_SM_MAJOR", sm_major)
        upstream = random_upstream(rng, cell, 1, 2, H)
        p = make_problem(rng, cell, 1, 2, 2, H)
        with pytest.raises(RuntimeError, match=f"MASKRNN_CUDA_KERNEL=persistent cannot run this scan: {why}"):
            backward(monkeypatch, "persistent", cell, p, upstream, forward_kernel=forward_kernel)
        auto = backward(monkeypatch, "auto", cell, p, upstream, forward_kernel=forward_kernel)
        for k, v in backward(monkeypatch, "step", cell, p, upstream, forward_kernel=forward_kernel).items():
            np.testing.assert_array_equal(auto[k], v)


# MASKRNN_CUDA_CLUSTER against the default clusters of 8 (H = 22: 3 units a CTA, the last 1; H = 40: 5 units):
# H = 22 in clusters of 3 (8 units a CTA, the last 6) and 16 (11 CTAs of 2); H = 40 in 3 (14 units, the last 12)
# and 16 (14 CTAs of 3, the last 1); two batch slices, rows finishing at different steps and holes.
@pytest.mark.parametrize("H, dtype", [(22, "float32"), (40, "float32"), (22, "float64"), (22, "float16")])
@pytest.mark.parametrize("cell", CELLS)
def test_every_cluster_size_gives_the_same_results(monkeypatch, rng, cell, H, dtype):
    """Forward and backward forced persistent in clusters of each size: the same bits as the default size's (a
    unit's k is split eight ways whatever the cluster) and, forward, within tolerance of the reference."""
    allow_half(monkeypatch)
    B, T, I = 11, 7, 3
    p = cast(make_problem(rng, cell, B, T, I, H, initial_state=True), DTYPES[dtype])
    upstream = [u.astype(DTYPES[dtype]) for u in random_upstream(rng, cell, B, T, H)]
    _, _, ref, extra = cell_fns(cell)
    for kw in ({"lengths": rng.integers(0, T + 1, B)}, {"mask": make_mask(rng, "holes", B, T)}):
        want = call(ref, cast(p, np.float64), extra, **kw)
        got = {}
        for size in ("", "3", "16"):
            monkeypatch.setenv("MASKRNN_CUDA_CLUSTER", size)
            got[size] = forward(monkeypatch, "persistent", cell, p, **kw), backward(monkeypatch, "persistent", cell,
                                                                                    p, upstream, **kw)
        for size in ("3", "16"):
            for a, b in zip(got[size][0], got[""][0]):
                np.testing.assert_array_equal(a, b, err_msg=f"forward, clusters of {size}")
            assert got[size][1].keys() == got[""][1].keys()
            for name, g in got[size][1].items():
                np.testing.assert_array_equal(g, got[""][1][name], err_msg=f"{name}, clusters of {size}")
        for a, w in zip(got[""][0], want):
            assert rel_err(a, w) < TOLERANCE[dtype]


def test_cluster_size_override_reaches_the_plan(monkeypatch, rng):
    """Clusters of 2 at H=100: 50 units a CTA, 400 threads, more than a CTA may have: forced, the error says so
    for that size; unforced, the step kernels run."""
    monkeypatch.setenv("MASKRNN_CUDA_CLUSTER", "2")
    p = make_problem(rng, "lstm", 3, 4, 2, 100, "float32")
    with pytest.raises(RuntimeError, match="cannot run this scan: at H=100 a 2-CTA cluster's CTA needs .* and 400 "
                                           r"threads \(at most 256\)"):
        forward(monkeypatch, "persistent", "lstm", p)
    for a, b in zip(forward(monkeypatch, "auto", "lstm", p), forward(monkeypatch, "step", "lstm", p)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", ["0", "17", "-8", "eight", "8x"])
def test_bad_cluster_size_raises(monkeypatch, rng, value):
    monkeypatch.setenv("MASKRNN_CUDA_CLUSTER", value)
    p = make_problem(rng, "gru", 2, 3, 2, 4, "float32")
    with pytest.raises(ValueError, match=f"MASKRNN_CUDA_CLUSTER must be an integer from 1 to 16; got '{value}'"):
        forward(monkeypatch, "auto", "gru", p)
