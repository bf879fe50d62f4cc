"""Rows that finish at different steps across several row blocks of the CUDA step kernels (70 rows: 3 blocks
forward, 5 backward), scanned in several chunks on the CPU engine and in one launch on the GPU engine (WHOLE_SCAN,
last test): on the GPU engine, blocks whose rows have all finished return
at once and csrc/finished_rows.cuh writes those rows' carried states, outputs and zero gradients once per call.
Outputs and states against the float64 reference; every gradient against a plan that computes every row at every
step (no row finishes early, no reordering). The same on the CPU engine; CI also runs it on the host emulation."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, force_masked_all_rows, make_problem, on_device, random_upstream, record_ext_calls
from conftest import TOLERANCE, make_mask, rel_err, to_device, to_host

from maskrnn import _dispatch, _scan

B, T, I, H = 70, 12, 3, 6


def call(device, cell, p, upstream, kw):
    _, vjp, _, extra = cell_fns(cell)
    d = on_device(p, device)
    outs, pullback = vjp(d.pop("x"), d.pop("kernel"), d.pop("recurrent_kernel"), d.pop("bias"), **d,
                         **{k: to_device(v, device) for k, v in kw.items()}, **extra)
    grads = pullback(*(to_device(u, device) for u in upstream))
    return [to_host(o) for o in outs], {k: to_host(v) for k, v in grads._asdict().items()}


@pytest.mark.parametrize("masking, go_backwards, zero_output", [
    ("lengths", False, False), ("lengths", True, True), ("post_holes", False, True), ("pre", True, False)])
@pytest.mark.parametrize("cell", CELLS)
def test_rows_finishing_across_blocks_and_chunks(device, rng, monkeypatch, cell, masking, go_backwards,
                                                  zero_output):
    monkeypatch.setattr(_scan, "CHUNK_WORK", B * 4 * H * (H + 16) * 5)  # chunks of 5 steps
    assert len(_scan.chunks(T, B, H, 4 * H)) == 3
    p = make_problem(rng, cell, B, T, I, H, "float64", initial_state=True)
    mask = make_mask(rng, "post" if masking == "lengths" else masking, B, T)
    mask[:4] = False  # rows with no real step at all
    kw = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output)
    if masking == "lengths":
        kw["lengths"] = mask.sum(axis=1)
    else:
        kw["mask"] = mask
    upstream = random_upstream(rng, cell, B, T, H)
    outs, grads = call(device, cell, p, upstream, kw)
    _, _, ref, extra = cell_fns(cell)
    q = dict(p)
    want = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, mask=mask,
               go_backwards=go_backwards, zero_output_for_mask=zero_output, **extra)
    for got, w in zip(outs, want):
        assert rel_err(got, w) < TOLERANCE["float64"]
    force_masked_all_rows(monkeypatch)
    every_row = call(device, cell, p, upstream, kw)[1]
    for name, g in grads.items():
        if g is not None:
            np.testing.assert_allclose(g, every_row[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masking", ["lengths", "post_holes"])
def test_gpu_engine_scans_in_one_launch(device, rng, monkeypatch, cell, masking):
    """Where the CPU engine would scan in chunks of 5 steps, the GPU engine (WHOLE_SCAN) runs one forward scan per
    call, in training and in inference (one native call there; on an H100, chunks of one step made the forward 11x
    cuDNN's time), and still matches the reference."""
    xp, K = _dispatch._engine(device)
    if K.__name__ != "maskrnn._cuda":
        pytest.skip("the CPU engine scans in chunks")
    monkeypatch.setattr(_scan, "CHUNK_WORK", B * 4 * H * (H + 16) * 5)
    # The extension's forward scans: training's, and inference's (prep, scan, finish)
    launches = record_ext_calls(monkeypatch, K, ("lstm_fwd", "gru_fwd", "infer"))
    p = make_problem(rng, cell, B, T, I, H, "float64", initial_state=True)
    mask = make_mask(rng, "post" if masking == "lengths" else masking, B, T)
    kw = dict(lengths=mask.sum(axis=1)) if masking == "lengths" else dict(mask=mask)
    op, vjp, ref, extra = cell_fns(cell)
    q = dict(p)
    want = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, mask=mask, **extra)
    d = on_device(p, device)
    args = [d.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    kw = {k: to_device(v, device) for k, v in kw.items()}
    for run in (op, lambda *a, **k: vjp(*a, **k)[0]):
        launches.clear()
        got = run(*args, **d, **kw, **extra)
        assert len(launches) == 1
        for g, w in zip(got, want):
            assert rel_err(to_host(g), w) < TOLERANCE["float64"]
