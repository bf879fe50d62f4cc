"""The persistent kernels with part of U in registers (csrc/persistent_fwd.cuh kPersistRegK, persistent_bwd.cuh
kPersistBwdRegK, persistent_gru_bwd.cuh kPersistGruV1BwdRegK) on the CUDA emulation: at H = 509 and 512, where U's
slice (and the backward's doubled gradient buffer) outgrow a CTA's shared memory. The float32 forward and backward
of every cell, forced, against the float64 reference and the step kernels; unforced, the choice. Split from
test_persistent.py (whose helpers it uses) so that the emulation suite's two workers share the work. Runs with the
CUDA-emulation suite (``-p plugin``, after build.py); skipped otherwise."""

import sys

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

import numpy as np  # noqa: E402
import test_persistent as tp  # noqa: E402 -- its forced-kernel helpers
from cells import CELLS, make_problem, random_upstream  # noqa: E402
from conftest import make_mask  # noqa: E402
from plugin import allow_half  # noqa: E402


# float32 at H = 509 and 512: U's slice is too big for a CTA's shared memory, so the forward keeps part of it in
# registers (kPersistRegK in csrc/persistent_fwd.cuh; forced persistent raises where no variant fits, so these
# run it). H = 509: 16 CTAs of 32 units, the last with 29, and the last part of k ends past H; B = 10: two batch
# slices. Sums of ~500 float32 products round more than those of the other tests' H <= 64, so the tolerance is
# TOLERANCE * H / 64 (the step kernels' own error reached 1.3e-5 at H = 400-512 in GRU v1).
# Every cell in each shape would be 9 emulated runs of ~10-20 s; each cell gets the kind that tests it most.
@pytest.mark.parametrize("cell, shape, mask_kind", [("lstm", (2, 3, 2, 509), "lengths"),
                                                    ("lstm", (10, 3, 3, 512), "pre"),
                                                    ("lstm", (3, 4, 2, 509), "post_holes"),
                                                    ("gru", (2, 3, 2, 509), "lengths"),
                                                    ("gru", (3, 4, 2, 509), "post_holes"),
                                                    ("gru_v1", (10, 3, 3, 512), "pre")])
def test_persistent_forward_with_registers(monkeypatch, rng, cell, shape, mask_kind):
    p, kw = register_case(rng, cell, shape, mask_kind)
    tp.check_both_kernels(monkeypatch, cell, p, "float32", rounding=shape[3] / 64, **kw)


def register_case(rng, cell, shape, mask_kind):
    """A problem of shape (B, T, I, H) with initial states, and its steps: "lengths" (rows finishing at different
    steps, one at none), or a mask of mask_kind with NaN in x's padding (zero_output for "post_holes")."""
    B, T, I, H = shape
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    if mask_kind == "lengths":
        return p, dict(lengths=rng.permutation(np.arange(T + 1))[:B])
    mask = make_mask(rng, mask_kind, B, T)
    return tp.nan_in_padding(p, mask), dict(mask=mask, zero_output_for_mask=mask_kind == "post_holes")


# LSTM and GRU (reset_after) at H = 509 and 512: U's rows and the doubled gradient buffer outgrow shared memory, so
# the backward keeps part of U in registers and one gradient buffer (two cluster barriers a step; kPersistBwdRegK
# in csrc/persistent_bwd.cuh); the GRU without reset_after, rows of both its products (U_zr's and U_h's, each split
# with its own parts of k; kPersistGruV1BwdRegK): forced persistent raises where no variant fits, so these run it.
# The float64 reference runs the step kernels' forward (no float64 persistent one fits); float32's tolerance as
# test_persistent_forward_with_registers's (float16's error is its storage's rounding, not the sums').
@pytest.mark.parametrize("cell, shape, mask_kind, dtype", [("lstm", (2, 4, 2, 509), "lengths", "float32"),
                                                           ("lstm", (9, 2, 3, 512), "post_holes", "float32"),
                                                           ("lstm", (2, 2, 2, 509), "holes", "float16"),
                                                           ("gru", (9, 3, 2, 509), "post_holes", "float32"),
                                                           ("gru_v1", (3, 3, 2, 509), "holes", "float32")])
def test_persistent_backward_with_registers(monkeypatch, rng, cell, shape, mask_kind, dtype):
    allow_half(monkeypatch)
    p, kw = register_case(rng, cell, shape, mask_kind)
    rounding = shape[3] / 64 if dtype == "float32" else 1.0
    tp.check_both_backwards(monkeypatch, rng, cell, p, dtype, rounding=rounding, want_forward="step", **kw)


@pytest.mark.parametrize("cell", CELLS)
def test_auto_runs_the_register_variant_where_shared_memory_is_short(monkeypatch, rng, cell):
    """float32 at H=512: U's slice fits no CTA's shared memory, and unforced the results are the persistent forward's
    with part of U in registers, not the step kernels'."""
    p = tp.cast(make_problem(rng, cell, 1, 2, 2, 512), np.float32)
    auto = tp.forward(monkeypatch, "auto", cell, p)
    persistent = tp.forward(monkeypatch, "persistent", cell, p)
    step = tp.forward(monkeypatch, "step", cell, p)
    assert any(not np.array_equal(a, b) for a, b in zip(persistent, step))
    for a, b in zip(auto, persistent):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_auto_runs_the_backward_with_registers_where_shared_memory_is_short(monkeypatch, rng, cell):
    """float32 at H=512, on the persistent forward's tape: unforced, the gradients are the persistent backward's with
    part of U in registers, not the step kernels'."""
    upstream = random_upstream(rng, cell, 1, 2, 512)
    p = tp.cast(make_problem(rng, cell, 1, 2, 2, 512), np.float32)
    auto = tp.backward(monkeypatch, "auto", cell, p, upstream)
    persistent = tp.backward(monkeypatch, "registers", cell, p, upstream)
    step = tp.backward(monkeypatch, "step", cell, p, upstream)
    assert any(not np.array_equal(persistent[k], step[k]) for k in step)
    for k in auto:
        np.testing.assert_array_equal(auto[k], persistent[k])


def test_forced_registers_raise_where_they_cannot_run(monkeypatch, rng):
    """MASKRNN_CUDA_KERNEL=registers runs the variant with part of U in registers or raises why: none for float64
    (forward or backward), and at H=37 a thread's part of k (5 rows) is shorter than the forward's 32 register
    rows."""
    p = make_problem(rng, "lstm", 2, 3, 2, 37)
    with pytest.raises(RuntimeError, match="MASKRNN_CUDA_KERNEL=registers cannot run this scan: it has no variant"):
        tp.forward(monkeypatch, "registers", "lstm", p)
    with pytest.raises(RuntimeError, match="registers cannot run this scan: at H=37 a thread's part of U's rows"):
        tp.forward(monkeypatch, "registers", "lstm", tp.cast(p, np.float32))
    with pytest.raises(RuntimeError, match="MASKRNN_CUDA_KERNEL=registers cannot run this scan: it has no variant"):
        tp.backward(monkeypatch, "registers", "gru_v1", make_problem(rng, "gru_v1", 2, 3, 2, 37),
                    random_upstream(rng, "gru_v1", 2, 3, 37))
