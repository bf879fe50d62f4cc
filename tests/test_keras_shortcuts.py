"""The shortcuts the Keras layers take in training, against the full computation: the pullback without the
input gradient (need_x=False: Keras's data inputs need none), and upstream gradients left out (None / JAX
symbolic zeros) where an output is unused, on NumPy, torch and JAX."""

import numpy as np
import pytest

import maskrnn

B, T, I, H = 5, 6, 3, 4


def problem(rng, cell):
    G = 4 if cell == "lstm" else 3
    x = rng.standard_normal((B, T, I))
    mask = rng.random((B, T)) > 0.3
    mask[0], mask[1], mask[2] = False, np.arange(T) < 2, np.arange(T) >= T - 1  # empty, post-, pre-padded
    W, U = rng.standard_normal((I, G * H)) * 0.5, rng.standard_normal((H, G * H)) * 0.5
    b = rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1
    return x, W, U, b, mask


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pullback_without_input_gradient(rng, cell):
    x, W, U, b, mask = problem(rng, cell)
    (out, *_), pullback = getattr(maskrnn, f"{cell}_vjp")(x, W, U, b, mask=mask)
    d_out = rng.standard_normal(out.shape)
    full, lean = pullback(d_out), pullback(d_out, need_x=False)
    assert full.x is not None and lean.x is None
    for name in full._fields[1:]:
        assert np.array_equal(getattr(full, name), getattr(lean, name)), name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_weight_gradients_without_input_gradient(rng, cell):
    torch = pytest.importorskip("torch")
    import maskrnn.torch as mt

    x, W, U, b, mask = problem(rng, cell)
    d_h = torch.tensor(rng.standard_normal((B, H)))
    grads = []
    for x_needs_grad in (True, False):
        xt = torch.tensor(x, requires_grad=x_needs_grad)
        weights = [torch.tensor(a, requires_grad=True) for a in (W, U, b)]
        # Only h_T is used: the outputs' gradient reaches the function as None (no materialised zeros).
        h = getattr(mt, cell)(xt, *weights, mask=torch.tensor(mask))[1]
        grads.append(torch.autograd.grad((h * d_h).sum(), weights))
    ref = getattr(maskrnn, f"{cell}_vjp")(x, W, U, b, mask=mask)[1](None, d_h.numpy())
    for got in grads:
        for g, r in zip(got, (ref.kernel, ref.recurrent_kernel, ref.bias)):
            assert np.allclose(g.numpy(), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_jax_weight_gradients_without_input_gradient(rng, cell):
    jax = pytest.importorskip("jax")
    import maskrnn.jax as mj

    x, W, U, b, mask = problem(rng, cell)
    x, W, U, b = (a.astype("float32") for a in (x, W, U, b))  # JAX's default precision
    d_h = rng.standard_normal((B, H)).astype("float32")
    ref = getattr(maskrnn, f"{cell}_vjp")(x, W, U, b, mask=mask)[1](None, d_h)

    def loss(W, U, b, x):
        return (getattr(mj, cell)(x, W, U, b, mask=mask)[1] * d_h).sum()  # outputs unused: a symbolic zero

    for argnums in ((0, 1, 2), (0, 1, 2, 3)):
        got = jax.jit(jax.grad(loss, argnums=argnums))(W, U, b, x)
        for g, r in zip(got, (ref.kernel, ref.recurrent_kernel, ref.bias, ref.x)):
            assert np.allclose(np.asarray(g), r, rtol=1e-6, atol=1e-6)  # the same engine, in float32
    assert mj.clear_tapes() == 0  # every forward's tape was taken by its backward
