"""The row blocks of the all-step GEMMs that skip finished rows (maskrnn._scan._row_blocks): they cover every
step and every row a kernel computes, and none is so small that its GEMM runs on a few rows (a chunk of 6 steps
was once projected one step, <= 64 rows, at a time); results through them against the reference."""

import numpy as np
import pytest
from cells import cell_fns, make_problem
from conftest import TOLERANCE, rel_err

from maskrnn import _dispatch, _scan


@pytest.mark.parametrize("T, B", [(1, 1), (6, 64), (7, 3), (100, 64), (200, 4), (50, 128), (3, 1000)])
def test_blocks_cover_the_computed_rows_and_are_not_tiny(rng, T, B):
    sizes = np.sort(rng.integers(0, B + 1, T))[::-1].astype(np.int32)  # non-increasing, as a plan's
    blocks = _scan._row_blocks(sizes, T, B)
    assert [b[0] for b in blocks] == [0] + [b[1] for b in blocks[:-1]] and blocks[-1][1] == T
    for t0, t1, n in blocks:
        assert n >= sizes[t0:t1].max() and n <= B
    if len(blocks) > 1:
        assert all((t1 - t0) * B >= _scan.MIN_BLOCK_ROWS for t0, t1, _ in blocks[:-1])
        assert len(blocks) <= _scan.ROW_BLOCKS


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_short_training_chunks_with_finishing_rows_match_the_reference(rng, monkeypatch, cell):
    """Chunks of 6 steps in which rows finish (one row block per chunk now) at a width where BLAS blocks: the
    training forward's projection (the engines' inference projects its own way: tests/test_infer.py)."""
    B, T, I, H = 64, 40, 16, 32
    p = make_problem(rng, cell, B, T, I, H, "float64", scale=H**-0.5)
    monkeypatch.setattr(_scan, "MAX_CHUNK_STEPS", 6)
    projected = []
    project = _scan._project_rows
    monkeypatch.setattr(_scan, "_project_rows", lambda xp, K, x3, *a: projected.append(len(x3)) or
                        project(xp, K, x3, *a))
    _, vjp, ref, extra = cell_fns(cell)
    lengths = rng.integers(1, T + 1, B)
    got, _ = vjp(p["x"], p["kernel"], p["recurrent_kernel"], p["bias"], lengths=lengths, **extra)
    whole = getattr(_dispatch._engine("cpu")[1], "WHOLE_SCAN", False)  # the GPU engine's (CUDA emulation)
    assert projected == ([T] if whole else [6] * 6 + [4])
    want = ref(p["x"], p["kernel"], p["recurrent_kernel"], p["bias"], lengths=lengths, **extra)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOLERANCE["float64"]
