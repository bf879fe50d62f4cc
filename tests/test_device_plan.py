"""The GPU engine's plan (maskrnn._dispatch.device_plan, its kernel row_plan in csrc/plan.cu), which reads nothing
back, and the same plan made on the host for host lengths (host_plan): against each row's last real step from
the definition, the host plan's stable order and a direct count of the rows each step computes. Runs on the
emulated kernels (``-p plugin``, see tests/cuda_emulation) and on a GPU; skipped otherwise."""

import sys

import numpy as np
import pytest
from conftest import cuda_skip_reason, make_mask, to_device, to_host

from maskrnn import _cuda
from maskrnn import _dispatch as dispatch


@pytest.fixture(params=["row_plan", "host_plan"])
def build(request):
    """How the plan is made: on the device by row_plan (device masks), or on the host (host lengths)."""
    return request.param


def make(xp, build, mask_tb, source):
    """The plan of a host (T,B) mask (any strides): built by row_plan from a device copy, or by host_plan."""
    if build == "host_plan":
        return dispatch.host_plan(xp, _cuda, mask_tb, source)
    return dispatch.device_plan(xp, _cuda, to_device(mask_tb, "cpu" if xp is np else "cuda"), source)


def plan_of(xp, build, mask_tb, source="mask"):
    plan = make(xp, build, mask_tb, source)
    return plan, {k: to_host(getattr(plan, k)) for k in ("order", "inverse", "batch_sizes", "mask")}


def spans(mask_tb):
    """Last real step + 1 of each row (0 for a row with none), straight from the definition."""
    T, B = mask_tb.shape
    return np.array([max((t + 1 for t in range(T) if mask_tb[t, b]), default=0) for b in range(B)], int)


def check(xp, build, mask_tb, source="mask"):
    T, B = mask_tb.shape
    plan, got = plan_of(xp, build, mask_tb, source)
    span = spans(mask_tb)
    np.testing.assert_array_equal(got["order"], np.argsort(-span, kind="stable"))  # the host plan's order
    np.testing.assert_array_equal(got["inverse"][got["order"]], np.arange(B))
    np.testing.assert_array_equal(got["batch_sizes"], [(span > t).sum() for t in range(T)])
    np.testing.assert_array_equal(got["mask"], mask_tb[:, got["order"]])
    assert got["batch_sizes"].dtype == np.int32 and got["order"].dtype == np.int32
    assert plan.mask.flags.c_contiguous and plan.on_device
    return plan


def test_example(xp, build):
    mask = np.array([[1, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], bool)
    plan, got = plan_of(xp, build, mask.T.copy())
    assert plan.variant == "masked"
    np.testing.assert_array_equal(got["order"], [3, 1, 0, 2])  # last real steps 5, 4, 2, none
    np.testing.assert_array_equal(got["inverse"], [2, 1, 3, 0])
    np.testing.assert_array_equal(got["batch_sizes"], [3, 3, 3, 2, 2, 1])
    np.testing.assert_array_equal(got["mask"], mask.T[:, [3, 1, 0, 2]])


@pytest.mark.parametrize("kind", ["post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("B, T", [(1, 1), (1, 7), (9, 1), (13, 11), (40, 3), (0, 5), (300, 9), (5, 600)])
def test_random_masks(rng, xp, build, kind, B, T):
    # (300, 9): rows in three tiles of the kernel's 128 threads; (5, 600): a long suffix sum of the spans.
    mask = make_mask(rng, kind, max(B, 1), T)[:B].T.copy()
    check(xp, build, mask)


def test_many_rows_of_few_spans(rng, xp, build):
    """Long runs of equal spans across the kernel's row tiles: the stable order within each span."""
    B, T = 700, 4
    mask = np.arange(T)[:, None] < rng.integers(0, T + 1, B)[None, :]
    check(xp, build, mask)


def test_views_and_the_plans_own_mask(rng, xp, build):
    """A strided mask (go_backwards, batch-major callers) is read right, and the plan keeps its own copy."""
    mask_bt = make_mask(rng, "holes", 6, 8)
    device_mask = mask_bt if build == "host_plan" else to_device(mask_bt, "cpu" if xp is np else "cuda")
    plan = (dispatch.host_plan(xp, _cuda, device_mask.T[::-1], "mask") if build == "host_plan"
            else dispatch.device_plan(xp, _cuda, device_mask.T[::-1], "mask"))
    want = mask_bt.T[::-1].copy()
    order = to_host(plan.order)
    np.testing.assert_array_equal(order, np.argsort(-spans(want), kind="stable"))
    device_mask[:] = ~device_mask
    np.testing.assert_array_equal(to_host(plan.mask), want[:, order])


def test_lengths_pack_and_no_mask_computes_every_row(rng, xp, build):
    B, T = 8, 6
    lengths = rng.integers(0, T + 1, B)
    plan = check(xp, build, np.arange(T)[:, None] < lengths[None, :], "lengths")
    assert plan.variant == "packed"
    full = dispatch.device_plan(xp, _cuda, to_device(np.ones((T, B), bool), "cpu" if xp is np else "cuda"), "none")
    assert full.variant == "packed" and full.order is None and full.batch_sizes is None and full.steps is None


def test_a_mask_of_another_dtype_is_refused(xp):
    with pytest.raises(TypeError, match="bool mask"):
        _cuda.row_plan(xp, xp.ones((3, 2), np.int8))


def test_uploads_through_the_pinned_buffers(rng, xp):
    """_upload and host_plan through the extension's pinned buffers (csrc/upload.h), taken in turn and grown as
    needed: every copy holds its own bytes, of any dtype and size (empty too)."""
    n = 3 * _cuda._ext().upload_stages
    arrays = [rng.integers(-(2**30), 2**30, s).astype(d) for s, d in zip(rng.integers(0, 20000, n),
                                                                         [np.int32, np.int64, np.float32] * n)]
    arrays += [np.zeros(0, np.int32), rng.random((7, 5)) < 0.5]
    copies = [_cuda._upload(a) for a in arrays]
    for a, c in zip(arrays, copies):
        assert c.dtype == a.dtype and c.shape == a.shape
        np.testing.assert_array_equal(to_host(c), a)


def test_cuda_uploads_while_the_gpu_is_busy(rng):
    """_upload's pinned buffers (csrc/upload.h) are taken in turn and rewritten only after the copy queued from them
    has run: with the GPU held by a ~50 ms kernel, 3 x upload_stages uploads and then host plans (the same buffers)
    queue behind it (the host waits on the fifth), and every device copy still holds its own array. GPU only (the
    emulation's copies run as they are queued; "cuda" in its name: gpu_verify.sh selects the GPU cases with -k
    cuda)."""
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    spin = cupy.RawKernel(r"""
    extern "C" __global__ void spin(long long cycles) {
      const long long start = clock64();
      while (clock64() - start < cycles) {}
    }""", "spin")
    spin((1,), (1,), (np.int64(100_000_000),))  # ~50 ms at 2 GHz
    stages = _cuda._ext().upload_stages
    arrays = [rng.integers(-(2**30), 2**30, 1000 + 4099 * k).astype(np.int32) for k in range(3 * stages)]
    copies = [_cuda._upload(a) for a in arrays]
    masks = [rng.random((50, 30 + k)) < 0.5 for k in range(stages)]
    plans = [dispatch.host_plan(cupy, _cuda, m, "mask") for m in masks]
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(cupy.asnumpy(c), a)
    for m, plan in zip(masks, plans):
        np.testing.assert_array_equal(cupy.asnumpy(plan.mask), m[:, cupy.asnumpy(plan.order)])
    for mask in (rng.random((7, 5)) < 0.5, np.ones((1, 1), bool)):  # bool, 2-D
        np.testing.assert_array_equal(cupy.asnumpy(_cuda._upload(mask)), mask)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1"])
@pytest.mark.parametrize("kind, B, T", [("post", 6, 9), ("holes", 6, 9), ("post", 1, 1), ("holes", 7, 1),
                                        ("post_holes", 1, 8)])
@pytest.mark.parametrize("initial_state", [False, True])
def test_calls_on_a_host_plan_match_the_reference(rng, monkeypatch, cell, kind, B, T, initial_state):
    """Host lengths of a GPU problem: the dispatcher plans on the host and uploads (host_plan's UploadedPlan);
    inference reads the plan by its byte offsets, training (and initial states in plan order) by its views. On the
    emulation every plan is made so here (on a GPU, host lengths take this path in every test): inference, outputs
    and gradients against the float64 reference."""
    from cells import cell_fns, make_problem, random_upstream
    from test_grad import grads, loss

    if "plugin" not in sys.modules:
        pytest.skip("the emulated kernels run with -p plugin after tests/cuda_emulation/build.py")
    plans = []

    def planned_on_the_host(xp, K, mask, source):
        plans.append(dispatch.host_plan(xp, K, np.asarray(mask), source))
        return plans[-1]

    monkeypatch.setattr(dispatch, "device_plan", planned_on_the_host)
    op, _, ref, extra = cell_fns(cell)
    p = make_problem(rng, cell, B, T, 3, 5, initial_state=initial_state)
    mask = make_mask(rng, kind, B, T)
    steps = dict(lengths=mask.sum(axis=1)) if kind == "post" else dict(mask=mask)
    q = dict(p)
    args = [q.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    want = ref(*args, **q, **steps, **extra)
    upstream = random_upstream(rng, cell, B, T, 5)
    trained, g = grads("cpu", cell, p, upstream, **steps)
    for got in (op(*args, **q, **steps, **extra), trained):
        for a, w in zip(got, want):
            np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-10)
    assert len(plans) == 2 and all(isinstance(plan, dispatch.UploadedPlan) for plan in plans)
    assert plans[0].packed == (kind == "post")
    # The input gradient against a central finite difference of the reference in one random direction of x.
    direction, eps = rng.standard_normal(p["x"].shape), 1e-6
    numeric = (loss(cell, dict(p, x=p["x"] + eps * direction), upstream, **steps)
               - loss(cell, dict(p, x=p["x"] - eps * direction), upstream, **steps)) / (2 * eps)
    np.testing.assert_allclose(float((g["x"] * direction).sum()), numeric, rtol=1e-5, atol=1e-7)
