"""The GPU engine's plan (maskrnn._dispatch.device_plan), built with array ops that run on the device and read
nothing back: here on NumPy, against the host plan's row order and a direct count of the rows each step computes.
"""

import numpy as np
import pytest
from conftest import make_mask

from maskrnn import _dispatch as dispatch


def spans(mask_tb):
    """Last real step + 1 of each row (0 for a row with none), straight from the definition."""
    T, B = mask_tb.shape
    return np.array([max((t + 1 for t in range(T) if mask_tb[t, b]), default=0) for b in range(B)])


def test_example():
    mask = np.array([[1, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], bool)
    plan = dispatch.device_plan(np, mask.T.copy(), "mask")
    assert plan.variant == "masked" and plan.on_device
    np.testing.assert_array_equal(plan.order, [3, 1, 0, 2])  # last real steps 5, 4, 2, none
    np.testing.assert_array_equal(plan.inverse, [2, 1, 3, 0])
    np.testing.assert_array_equal(plan.batch_sizes, [3, 3, 3, 2, 2, 1])
    assert plan.batch_sizes.dtype == np.int32
    np.testing.assert_array_equal(plan.mask, mask.T[:, [3, 1, 0, 2]])


@pytest.mark.parametrize("kind", ["post", "pre", "holes", "post_holes", "empty"])
@pytest.mark.parametrize("B, T", [(1, 1), (1, 7), (9, 1), (13, 11), (40, 3), (0, 5)])
def test_random_masks(rng, kind, B, T):
    mask = make_mask(rng, kind, max(B, 1), T)[:B].T.copy()
    plan = dispatch.device_plan(np, mask, "mask")
    span = spans(mask)
    np.testing.assert_array_equal(plan.order, np.argsort(-span, kind="stable"))  # the host plan's order
    np.testing.assert_array_equal(plan.inverse[plan.order], np.arange(B))
    np.testing.assert_array_equal(plan.batch_sizes, [(span > t).sum() for t in range(T)])
    np.testing.assert_array_equal(plan.mask, mask[:, plan.order])
    assert plan.mask.flags.c_contiguous and plan.variant == "masked"
    mask[:] = ~mask  # the plan keeps its own copy
    np.testing.assert_array_equal(plan.mask, ~mask[:, plan.order])


def test_lengths_pack_and_no_mask_computes_every_row(rng):
    B, T = 8, 6
    lengths = rng.integers(0, T + 1, B)
    mask = np.arange(T)[:, None] < lengths[None, :]
    plan = dispatch.device_plan(np, mask, "lengths")
    assert plan.variant == "packed"
    np.testing.assert_array_equal(plan.order, np.argsort(-lengths, kind="stable"))
    np.testing.assert_array_equal(plan.batch_sizes, [(lengths > t).sum() for t in range(T)])
    full = dispatch.device_plan(np, np.ones((T, B), bool), "none")
    assert full.variant == "packed" and full.order is None and full.batch_sizes is None and full.steps is None
