"""The CPU engine's fused inference (maskrnn/_cpu/infer.py): outputs and final states against the float64
reference at edge shapes, every mask kind, both layouts, go_backwards, zero_output_for_mask, initial states,
float32 and float64, the batch split over 1-3 threads and sequences crossing several kernel calls; checks that
inference does take the fused path, and that it keeps no buffer that grows with T."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem
from conftest import TOLERANCE, make_mask, rel_err
from test_resources import _peak_bytes

from maskrnn import _cpu, _dispatch, _scan
from maskrnn._cpu import cols, infer, rows

pytestmark = pytest.mark.skipif(_dispatch._engine("cpu")[1] is not _cpu,
                                reason="another engine runs device 'cpu' (CUDA emulation)")


def _args(p):
    q = dict(p)
    return (q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None)), q


def _check(cell, p, dtype, **kw):
    op, _, ref, extra = cell_fns(cell)
    args, rest = _args(p)
    before = [a.copy() for a in (*args, *np.atleast_1d(*rest.values())) if a is not None]
    got = op(*args, **rest, **kw, **extra)
    for a, b in zip((a for a in (*args, *np.atleast_1d(*rest.values())) if a is not None), before):
        np.testing.assert_array_equal(a, b)  # the caller's arrays (initial states included) are left alone
    wide = {k: (tuple(s.astype(np.float64) for s in v) if isinstance(v, tuple) else v.astype(np.float64))
            for k, v in p.items()}
    args, rest = _args(wide)
    want = ref(*args, **rest, **kw, **extra)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        assert rel_err(g, w) < TOLERANCE[dtype]


@pytest.fixture
def calls(monkeypatch):
    """Records (kernel, t0, t1) of every fused kernel call (the unit split's of small batches included)."""
    seen = []
    for module, name in ((infer, "_lstm_steps"), (infer, "_gru_steps"), (cols, "_lstm_steps"), (cols, "_gru_steps")):
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, k=kernel, n=name: (seen.append((n, a[5], a[6])), k(*a))[1])
    return seen


@pytest.mark.parametrize("block", [1, 32])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_inference_matches_reference(rng, monkeypatch, calls, cell, mask_kind, threads, block):
    """block: infer.BLOCK_ROWS: 1 projects the inputs step by step, 32 in blocks of several steps (of 3-7 rows
    here: blocks of 4-10 steps, cut short by the kernel calls' ends)."""
    monkeypatch.setattr(rows, "threads_for", lambda B, H, GH, sizes=None: threads)
    monkeypatch.setattr(infer, "BLOCK_ROWS", block)
    monkeypatch.setattr(_scan, "MAX_CHUNK_STEPS", 4)  # 9 steps: three kernel calls, states carried across
    B, T, I, H = 7, 9, 5, 11  # 7 rows over 3 threads: shares of 3, 2 and 2 rows
    dtype = ["float64", "float32"][int(rng.integers(2))]
    p = make_problem(rng, cell, B, T, I, H, dtype, bias=bool(rng.integers(2)), initial_state=bool(rng.integers(2)))
    kw = dict(zero_output_for_mask=bool(rng.integers(2)), go_backwards=bool(rng.integers(2)))
    mask = make_mask(rng, mask_kind, B, T)
    if rng.integers(2):  # time-major
        p["x"] = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
        kw["time_major"] = True
        mask = None if mask is None else np.ascontiguousarray(mask.T)
    _check(cell, p, dtype, mask=mask, **kw)
    assert len(calls) == 3 * threads and {c[1:] for c in calls} == {(0, 4), (4, 8), (8, 9)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (1, 6, 1, 1), (3, 1, 4, 2)])
def test_fused_inference_edge_shapes(rng, calls, cell, shape):
    B, T, I, H = shape
    for dtype in ("float32", "float64"):
        p = make_problem(rng, cell, B, T, I, H, dtype, initial_state=True)
        for mask_kind in ("post", "holes"):
            _check(cell, p, dtype, mask=make_mask(rng, mask_kind, B, T), zero_output_for_mask=True)
    assert calls


@pytest.mark.parametrize("cell", CELLS)
def test_inputs_of_any_strides(rng, calls, cell):
    """A Fortran-ordered input (no unit stride along features) and a strided view."""
    B, T, I, H = 5, 6, 4, 3
    p = make_problem(rng, cell, B, T, 2 * I, H, "float64")
    p["kernel"] = p["kernel"][:I]
    for x in (np.asfortranarray(p["x"][:, :, :I]), p["x"][:, :, ::2]):
        _check(cell, dict(p, x=x), "float64", mask=make_mask(rng, "holes", B, T), go_backwards=True)
    assert calls


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [(64, 12, 32, 128), (4, 20, 256, 512)])
def test_inference_takes_the_fused_path(rng, calls, cell, shape):
    """A batch the engine splits across its threads, and a small one on one thread (inputs projected in blocks
    of 8 steps), run the fused kernels: a silent fall back to the generic driver fails here."""
    B, T, I, H = shape
    p = make_problem(rng, cell, B, T, I, H, "float32", scale=H**-0.5)
    _check(cell, p, "float32", mask=make_mask(rng, "post_holes", B, T))
    assert calls and all(c[0] == f"_{cell}_steps" for c in calls)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_inference_memory_does_not_grow_with_time(rng, cell):
    """Beyond the outputs, the fused path holds the packed weights and per-thread buffers of its rows, whatever T:
    a sequence 8 times as long adds only the plan's bytes per step."""
    op, _, _, extra = cell_fns(cell)
    B, I, H = 32, 16, 32
    extra_bytes = []
    for T in (50, 400):
        p = make_problem(rng, cell, B, T, I, H, "float32", scale=H**-0.5)
        args, _ = _args(p)
        mask = make_mask(rng, "post_holes", B, T)
        op(*args, mask=mask, **extra)
        peak, res = _peak_bytes(lambda: op(*args, mask=mask, **extra))  # noqa: B023
        extra_bytes.append(peak - sum(r.nbytes for r in res) - mask.nbytes)
    # Per row and step at most a few bytes (the plan's masks and counts), not a float row (H floats: 128 bytes).
    assert extra_bytes[1] - extra_bytes[0] <= (400 - 50) * B * 16, extra_bytes
    weights = 4 * (I + 1 + H) * 4 * H  # the packed W[; b] and U
    buffers = 4 * B * (I + 1 + 10 * H)  # the threads' inputs, states and products
    assert extra_bytes[1] <= 2 * (weights + buffers), extra_bytes


@pytest.mark.parametrize("cell", CELLS)
def test_single_step_calls_of_few_rows_skip_packing(rng, monkeypatch, cell):
    """A call in which one step computes rows (T = 1 as a decoding loop calls, or pre-padded rows of one real
    step) and at most infer.UNPACKED_ROWS rows runs its products on np.dot over the weights as they are; more
    rows or more steps pack them for the native product. Both against the float64 reference, with and without a
    bias and initial states, in either time direction and layout."""
    from maskrnn._cpu import gemm

    if not gemm.level():
        pytest.skip("no native product on this machine: every call runs on np.dot")
    packs = []
    pack = gemm.pack
    monkeypatch.setattr(gemm, "pack", lambda *a, **k: (packs.append(1), pack(*a, **k))[1])
    n = infer.UNPACKED_ROWS
    cases = ((1, 1, True), (n, 1, True), (n, 3, True), (n + 1, 1, False), (2, 3, False))
    for k, (B, T, one_step) in enumerate(cases):
        I, H = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        dtype = ["float64", "float32"][int(rng.integers(2))]
        p = make_problem(rng, cell, B, T, I, H, dtype, bias=k % 2 == 0,  # gemm.row_operand's bias row, and none
                         initial_state=bool(rng.integers(2)))
        mask = np.ones((B, T), bool)
        if T > 1:  # pre-padded: the rows' one real step is the last (one_step), one row real throughout (else)
            mask[:, :-1] = False
            if not one_step:
                mask[1, :] = True
        kw = dict(zero_output_for_mask=bool(rng.integers(2)), go_backwards=bool(rng.integers(2)))
        if rng.integers(2):  # time-major
            p["x"] = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
            kw["time_major"] = True
            mask = np.ascontiguousarray(mask.T)
        packs.clear()
        _check(cell, p, dtype, mask=mask, **kw)
        assert (not packs) == one_step, (B, T, one_step, len(packs))
