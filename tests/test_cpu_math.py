"""The CPU engine's vectorisable sigmoid and tanh (maskrnn/_cpu/cells.py) against NumPy in extended precision:
a few ulps over the whole range, the limits at +-Inf and beyond the exp clamp, NaN propagated."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")


@pytest.fixture(scope="module")
def activations():
    from maskrnn._cpu import cells

    @numba.njit(fastmath=cells.FASTMATH, error_model="numpy")
    def run(x, sig, tnh):
        for i in range(x.size):
            sig[i] = cells.sigmoid(x[i])
            tnh[i] = cells.tanh(x[i])

    def apply(x):
        sig, tnh = np.empty_like(x), np.empty_like(x)
        run(x, sig, tnh)
        return sig, tnh

    return apply


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_within_three_ulps(rng, activations, dtype):
    clamp = 80.0 if dtype == "float32" else 700.0  # past it exp's clamp gives denormal-sized absolute errors
    x = np.concatenate([rng.uniform(-clamp, clamp, 20000), rng.standard_normal(20000) * 3,
                        np.geomspace(1e-30, 1, 500), -np.geomspace(1e-30, 1, 500), [0.0, 0.625, -0.625]])
    x = x.astype(dtype)
    sig, tnh = activations(x)
    xl = x.astype(np.longdouble)
    want_sig, want_tanh = 1 / (1 + np.exp(-xl)), np.tanh(xl)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    assert np.max(np.abs(sig - want_sig) / np.maximum(want_sig, tiny)) < 3 * eps
    assert np.max(np.abs(tnh - want_tanh) / np.maximum(np.abs(want_tanh), tiny)) < 3 * eps


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_limits_and_nan(activations, dtype):
    x = np.array([np.inf, -np.inf, 1e4, -1e4, np.nan], dtype)
    sig, tnh = activations(x)
    np.testing.assert_array_equal(tnh, [1, -1, 1, -1, np.nan])
    np.testing.assert_array_equal(sig[[0, 2, 4]], [1, 1, np.nan])
    assert np.all((sig[[1, 3]] >= 0) & (sig[[1, 3]] < 2 * np.finfo(dtype).tiny))
