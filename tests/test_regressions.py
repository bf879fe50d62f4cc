"""Issue 11 regressions, items 1-2: answers that were silently wrong and valid calls that crashed. Each test
failed before its fix."""

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream
from conftest import rel_err

import maskrnn

torch = pytest.importorskip("torch")
import maskrnn.torch as mt  # noqa: E402


def _vjp(cell, p, **kw):
    _, vjp, _, extra = cell_fns(cell)
    q = dict(p)
    return vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_pullback_ignores_later_changes_to_the_callers_arrays(rng, cell, time_major):
    B, T, I, H = 3, 5, 2, 4
    p = make_problem(rng, cell, B, T, I, H, initial_state=True)
    mask = rng.random((T, B) if time_major else (B, T)) > 0.3
    if time_major:
        p["x"] = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
    outs, pullback = _vjp(cell, p, mask=mask, time_major=time_major)
    ups = [rng.standard_normal(np.shape(o)) for o in outs]
    before = pullback(*ups)
    for name in ("kernel", "recurrent_kernel", "bias"):
        p[name] *= -2.0
    mask[...] = ~mask
    after = pullback(*ups)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _torch_cls(cell):
    return torch.nn.LSTM if cell == "lstm" else torch.nn.GRU


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_from_torch_follows_batch_first(rng, cell, bidirectional):
    B, T, I, H = 3, 4, 2, 5
    for batch_first in (False, True):
        ref = _torch_cls(cell)(I, H, batch_first=batch_first, bidirectional=bidirectional, dtype=torch.float64)
        kind = mt.Bidirectional if bidirectional else (mt.LSTM if cell == "lstm" else mt.GRU)
        ours = kind.from_torch(ref, return_sequences=True, return_state=True)
        x = torch.tensor(rng.standard_normal((B, T, I) if batch_first else (T, B, I)))
        want, state = ref(x)
        got = ours(x)
        torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-10)
        states = state if cell == "lstm" else (state,)
        for g, w in zip(got[1:], [s[d] for d in range(1 + bidirectional) for s in states], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_gradient_penalty_is_refused_not_zero(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    W, U = (torch.tensor(rng.standard_normal(s), requires_grad=True) for s in ((4, 8), (2, 8)))
    out = mt.lstm(x, W, U)[0]
    # d(out.sum())/d(out) is constant: torch's once_differentiable guard never fires and dx**2 would add 0.
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(mt.gru(x, W[:, :6], U[:, :6])[0].sum(), x, create_graph=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("with_mask", [False, True])
def test_jit_trace_is_refused(rng, with_mask):
    x = torch.tensor(rng.standard_normal((2, 3, 4)), dtype=torch.float32)
    W, U = torch.randn(4, 8), torch.randn(2, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    args = (x, mask) if with_mask else (x,)
    with pytest.raises(RuntimeError, match="cannot be traced with torch.jit.trace"), torch.no_grad():
        torch.jit.trace(lambda x, m=None: mt.lstm(x, W, U, mask=m)[0], args)


@pytest.mark.parametrize("shape", [(3, 1, 2), (0, 4, 2), (3, 4, 0), (0, 1, 0)], ids=["T1", "B0", "I0", "all"])
@pytest.mark.parametrize("cell", CELLS)
def test_go_backwards_backward_on_edge_shapes(rng, cell, shape):
    """Against the reference's finite differences; the torch API must take the gradients too."""
    B, T, I = shape
    H = 3
    p = make_problem(rng, cell, B, T, I, H)
    _, _, ref, extra = cell_fns(cell)
    outs, pullback = _vjp(cell, p, go_backwards=True)
    ups = random_upstream(rng, cell, B, T, H)
    g = pullback(*ups)
    for name in ("x", "kernel"):
        assert getattr(g, name).shape == p[name].shape
        assert all(s >= 0 for s in getattr(g, name).strides)
    if B and I:
        v = rng.standard_normal(p["x"].shape)
        eps = 1e-6

        def loss(sign):
            q = dict(p, x=p["x"] + sign * eps * v)
            r = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), go_backwards=True, **extra)
            return sum(float(np.sum(o * u)) for o, u in zip(r, ups))

        assert abs((loss(1) - loss(-1)) / (2 * eps) - float(np.sum(g.x * v))) < 1e-6
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    fn = mt.lstm if cell == "lstm" else mt.gru
    kw = {} if cell == "lstm" else dict(reset_after=cell == "gru")
    res = fn(tp["x"], tp["kernel"], tp["recurrent_kernel"], tp["bias"], go_backwards=True, **kw)
    sum((r * torch.tensor(u)).sum() for r, u in zip(res, ups)).backward()
    np.testing.assert_allclose(tp["x"].grad.numpy(), g.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_trains_on_length_one_sequences(rng, cell):
    ref = _torch_cls(cell)(4, 3, batch_first=True, bidirectional=True, dtype=torch.float64)
    ours = mt.Bidirectional.from_torch(ref, return_sequences=True)
    x = torch.tensor(rng.standard_normal((5, 1, 4)), requires_grad=True)
    up = torch.tensor(rng.standard_normal((5, 1, 6)))
    (ref(x)[0] * up).sum().backward()
    want, x.grad = x.grad, None
    (ours(x) * up).sum().backward()
    torch.testing.assert_close(x.grad, want, rtol=1e-10, atol=1e-12)
    assert mt.Bidirectional(mt.LSTM(4, 3))(x.float().detach().requires_grad_()).sum().backward() is None


@pytest.mark.parametrize("given", ["h0", "c0"])
def test_partial_lstm_initial_state_trains(rng, given):
    B, T, I, H = 3, 4, 2, 5
    x = torch.tensor(rng.standard_normal((B, T, I)), requires_grad=True)
    W, U = torch.tensor(rng.standard_normal((I, 4 * H))), torch.tensor(rng.standard_normal((H, 4 * H)))
    s = torch.tensor(rng.standard_normal((B, H)), requires_grad=True)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    ups = [torch.tensor(rng.standard_normal(shape)) for shape in ((B, T, H), (B, H), (B, H))]
    half = (s, None) if given == "h0" else (None, s)
    full = (s, zeros) if given == "h0" else (zeros, s)
    grads = []
    for state in (half, full):
        outs = mt.lstm(x, W, U, initial_state=state)
        grads.append(torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, ups)), [x, s]))
    assert rel_err(grads[0][0].numpy(), grads[1][0].numpy()) == 0
    assert rel_err(grads[0][1].numpy(), grads[1][1].numpy()) == 0
    # the given state really reaches the result (it was dropped when h0 was None)
    assert not torch.equal(mt.lstm(x, W, U, initial_state=half)[2], mt.lstm(x, W, U)[2])


def test_numpy_lists_still_work():
    out, h, c = maskrnn.lstm([[[1.0, 2.0]]], np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32))
    assert out.shape == (1, 1, 1) and out.dtype == np.float32
