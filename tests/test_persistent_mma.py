"""The persistent forward's tensor-core product (csrc/persistent_mma.cuh: WMMA m8n32k16, fp32 accumulation) in
float16 and bfloat16 on the CUDA emulation (tests/cuda_emulation/include/mma.h), forced with
MASKRNN_CUDA_KERNEL=persistent, against the float64 reference and the forced step kernels: H not a multiple of
16 (zero-padded K) nor of 8 units a CTA (CTAs rounded up to whole warps, padded column tiles), CTAs of two warps,
B=1, B not a multiple of the tile's 8 rows, several batch slices, T=1, rows finishing at different steps, holes
with NaN at the masked steps, go_backwards. Runs with the CUDA-emulation suite (``-p plugin``, after build.py);
skipped otherwise."""

import sys

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

import numpy as np  # noqa: E402
from cells import CELLS, make_problem  # noqa: E402
from conftest import make_mask  # noqa: E402
from plugin import allow_half  # noqa: E402
from test_persistent import check_both_kernels, nan_in_padding  # noqa: E402

# (B, T, I, H, dtype). H=9: 8 CTAs of 2 units (16 threads, one warp), K padded 9 -> 16; B=1, T=1.
# H=22: CTAs of 3 units, the last with 1; B=11: two slices, the second of 3 rows. H=72: CTAs of 9 units (72
# threads: three warps; LSTM's 36 gate columns two column tiles, GRU's 27 one), K padded to 80. H=33: 7 CTAs of 5
# units, K padded to 48; B=17: three slices.
SHAPES = [(1, 1, 3, 9, "float16"), (11, 6, 4, 22, "bfloat16"), (3, 5, 2, 72, "float16"), (17, 4, 3, 33, "bfloat16")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-I{}-H{}-{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_tensor_core_forward_matches_reference_and_step(monkeypatch, rng, cell, shape):
    allow_half(monkeypatch)
    B, T, I, H, dtype = shape
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    lengths = rng.integers(0, T + 1, B)
    lengths[-1] = T  # rows finishing at different steps, the last one full (with B=1, the one row)
    check_both_kernels(monkeypatch, cell, p, dtype, lengths=lengths)
    mask = make_mask(rng, "holes", B, T)
    check_both_kernels(monkeypatch, cell, nan_in_padding(p, mask), dtype, mask=mask, go_backwards=True,
                       zero_output_for_mask=True)


@pytest.mark.parametrize("cell", CELLS)
def test_tensor_core_forward_long_sequence(monkeypatch, rng, cell):
    """T=60 of one slice, no initial state: the fp32 sums' order and h's rounding to float16 before each
    product do not drift from the reference over many steps."""
    allow_half(monkeypatch)
    B, T, I, H = 5, 60, 3, 24
    p = make_problem(rng, cell, B, T, I, H)
    check_both_kernels(monkeypatch, cell, p, "float16", lengths=np.array([T, 1, T // 2, 0, T - 1]))
