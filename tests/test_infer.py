"""Inference (no tape) on every engine: each engine's fused ``{cell}_infer`` (the CPU's maskrnn/_cpu/infer.py, the
GPU's maskrnn/_cuda.py with csrc/infer.cu; CI runs this file on the CPU and on the CUDA emulation) against the
float64 reference, in chunks of a few steps (the output carried into a chunk whose first steps are padded, the
states across chunks), on inputs of any strides, and on the GPU engine within its workspace."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, on_device, record_ext_calls
from conftest import TOLERANCE, make_mask, rel_err, to_device, to_host

from maskrnn import _dispatch, _scan


def _run(device, cell, p, **kw):
    op, _, _, extra = cell_fns(cell)
    d = on_device(p, device)
    args = [d.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    return [to_host(a) for a in op(*args, **d, **{k: to_device(v, device) for k, v in kw.items()}, **extra)]


def _reference(cell, p, **kw):
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    args = [q.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    return ref(*args, **q, **kw, **extra)


def _check(got, want, dtype="float64"):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.dtype(dtype)
        assert rel_err(g, w) < TOLERANCE[dtype]


@pytest.fixture
def steps_per_chunk(monkeypatch):
    """Sets every engine's inference chunks to k steps (returns a setter); records the chunked calls' T."""
    seen = []

    def use(k):
        def chunks(T, *args, **kw):
            seen.append(T)
            return [(t0, min(T, t0 + k)) for t0 in range(0, T, k)]

        monkeypatch.setattr(_scan, "chunks", chunks)
        return seen

    return use


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("mask_kind, go_backwards, zero_output, time_major", [
    ("holes", False, False, False), ("holes", True, False, True), ("post", False, False, True),
    ("post", True, False, False), ("pre", False, True, False), ("post_holes", True, True, True),
    ("none", False, False, False)])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_in_chunks_matches_reference(device, rng, steps_per_chunk, cell, mask_kind, go_backwards,
                                               zero_output, time_major, k):
    """Chunks of 1 and 3 steps over T = 10 (the last one short): a chunk after the first whose leading steps are
    padded carries the output from before it (holes: most rows have such steps), initial states and final states
    (rows reordered) cross every chunk; rows with no real step at all."""
    B, T, I, H = 9, 10, 3, 5
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, mask_kind, B, T)
    kw = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output)
    if mask is not None:
        mask[1] = False
        kw["mask"] = mask
    want = _reference(cell, p, **kw)
    if time_major:
        p["x"] = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
        if mask is not None:
            kw["mask"] = np.ascontiguousarray(mask.T)
        want = [np.ascontiguousarray(want[0].transpose(1, 0, 2)), *want[1:]]
    seen = steps_per_chunk(k)
    got = _run(device, cell, p, time_major=time_major, **kw)
    assert seen == [T]  # the engine's inference went through the chunks
    _check(got, want)


@pytest.mark.parametrize("kernel", ["persistent", "step"])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_inference_in_chunks_on_each_kernel(device, rng, steps_per_chunk, monkeypatch, cell, kernel):
    """The GPU engine's inference in chunks of 3 steps with each scan kernel forced (the persistent ones keep the
    states on chip within a chunk, the step kernels in the state buffers)."""
    if _dispatch._engine(device)[1].__name__ != "maskrnn._cuda":
        pytest.skip("the GPU engine's kernels")
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
    B, T, I, H = 9, 10, 3, 5
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = make_mask(rng, "holes", B, T)
    steps_per_chunk(3)
    _check(_run(device, cell, p, mask=mask), _reference(cell, p, mask=mask))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [True, False])
def test_inference_in_chunks_with_lengths_and_zero_states(device, rng, steps_per_chunk, cell, lengths):
    """Post-padding given as lengths (the packed kernels; rows finishing inside and before a chunk), no initial
    state (the GPU engine zeroes the first step's states itself), B = 1 and B = 70 (several row blocks)."""
    for B in (1, 70):
        T, I, H = 7, 4, 6
        p = make_problem(rng, cell, B, T, I, H)
        n = rng.integers(0, T + 1, B)
        kw = dict(lengths=n) if lengths else dict(mask=np.arange(T)[None] < n[:, None])
        steps_per_chunk(2)
        _check(_run(device, cell, p, **kw), _reference(cell, p, mask=np.arange(T)[None] < n[:, None]))


def _strided_views(x):
    """Views of x's values (B,T,I), on x's device, with other strides: a window of a larger array, reversed time
    stored in reverse, time-major memory, Fortran order."""
    xp = np if isinstance(x, np.ndarray) else __import__("cupy")
    B, T, I = x.shape
    big = xp.zeros((B + 2, 2 * T, I + 3))
    big[1 : B + 1, ::2, 2 : I + 2] = x
    return {"window": big[1 : B + 1, ::2, 2 : I + 2], "reversed": x[:, ::-1].copy()[:, ::-1],
            "time-major memory": x.transpose(1, 0, 2).copy().transpose(1, 0, 2), "fortran": xp.asfortranarray(x)}


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_reads_inputs_of_any_strides(device, rng, cell, go_backwards):
    B, T, I, H = 6, 8, 3, 4
    p = make_problem(rng, cell, B, T, I, H)
    mask = make_mask(rng, "holes", B, T)
    want = _reference(cell, p, mask=mask, go_backwards=go_backwards)
    op, _, _, extra = cell_fns(cell)
    d = on_device(p, device)
    args = [d.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    for name, view in _strided_views(args[0]).items():
        assert not view.flags.c_contiguous and (to_host(view) == p["x"]).all()
        got = op(view, *args[1:], **d, mask=to_device(mask, device), go_backwards=go_backwards, **extra)
        for g, w in zip(got, want):
            assert rel_err(to_host(g), w) < TOLERANCE["float64"], name


def test_gpu_inference_stays_within_its_workspace(device, rng, monkeypatch):
    """The GPU engine's inference buffers (its workspace, the chunk's projection) stay within INFER_WORKSPACE: a
    bound of a few steps' buffers scans (70,20,8,16) in chunks, correctly."""
    xp, K = _dispatch._engine(device)
    if K.__name__ != "maskrnn._cuda":
        pytest.skip("the GPU engine's workspace")
    B, T, I, H = 70, 20, 8, 16
    per_step = B * (2 * 4 * H + 4 * H) * 8  # bytes: the projection, its gathered copy, out, h, c, hr (float64)
    monkeypatch.setattr(K, "INFER_WORKSPACE", 3 * per_step)
    sizes, empty = [], K._empty
    monkeypatch.setattr(K, "_empty", lambda shape, dtype: sizes.append(np.prod(shape) * np.dtype(dtype).itemsize)
                        or empty(shape, dtype))
    calls = record_ext_calls(monkeypatch, K, ["infer"])
    p = make_problem(rng, "lstm", B, T, I, H)
    mask = make_mask(rng, "holes", B, T)
    got = _run(device, "lstm", p, mask=mask)
    assert [a[2] for _, a in calls] == [3] * 6 + [2]  # a[2]: the chunk's steps; chunks of 3, one call each
    assert max(sizes) <= K.INFER_WORKSPACE
    _check(got, _reference("lstm", p, mask=mask))
