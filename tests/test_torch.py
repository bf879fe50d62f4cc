"""maskrnn.torch: autograd Functions and modules against gradcheck, a plain PyTorch implementation of the
Keras equations, and torch.nn.LSTM/GRU."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import maskrnn.torch as mt  # noqa: E402
from maskrnn import convert  # noqa: E402

CELLS = ["lstm", "gru", "gru_v1"]


@pytest.fixture(params=["cpu", "cuda"])
def tdevice(request):
    if request.param == "cuda":
        from conftest import cuda_skip_reason

        if not torch.cuda.is_available():
            pytest.skip("torch sees no CUDA device")
        if cuda_skip_reason():
            pytest.skip(cuda_skip_reason())
    return torch.device(request.param)


def keras_rnn(cell, x, W, U, b, mask, h0, c0, go_backwards, zero_output, reset_after=True):
    """The Keras per-step rule (keras-masking-spec.md 4.2) in plain torch ops, for autograd to differentiate."""
    B, T, _ = x.shape
    H = U.shape[0]
    h, c = h0, c0
    prev = torch.zeros(B, H, dtype=x.dtype)
    outs = []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        m = mask[:, t, None]
        x_t = torch.where(m, x[:, t], torch.zeros_like(x[:, t]))
        if cell == "lstm":
            i, f, cc, o = torch.split(x_t @ W + h @ U + b, H, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            c = torch.where(m, c_new, c)
        elif reset_after:
            a, r_ = x_t @ W + b[0], h @ U + b[1]
            z = torch.sigmoid(a[:, :H] + r_[:, :H])
            r = torch.sigmoid(a[:, H:2 * H] + r_[:, H:2 * H])
            h_new = z * h + (1 - z) * torch.tanh(a[:, 2 * H:] + r * r_[:, 2 * H:])
        else:
            a = x_t @ W + b
            z = torch.sigmoid(a[:, :H] + h @ U[:, :H])
            r = torch.sigmoid(a[:, H:2 * H] + h @ U[:, H:2 * H])
            h_new = z * h + (1 - z) * torch.tanh(a[:, 2 * H:] + (r * h) @ U[:, 2 * H:])
        h = torch.where(m, h_new, h)
        out = torch.where(m, h_new, torch.zeros_like(h_new) if zero_output else prev)
        outs.append(out)
        prev = out
    return torch.stack(outs, 1), h, c


def problem(rng, cell, B, T, I, H, dtype, mask_kind):
    G = 4 if cell == "lstm" else 3
    t = lambda *s: torch.tensor(rng.standard_normal(s) * 0.5, dtype=dtype, requires_grad=True)  # noqa: E731
    b = t(2, 3 * H) if cell == "gru" else t(G * H)
    lengths = rng.integers(0, T + 1, B)
    if mask_kind == "holes":
        mask = rng.random((B, T)) > 0.3
        mask[0] = False
    else:
        mask = np.arange(T)[None, :] < lengths[:, None]
    return t(B, T, I), t(I, G * H), t(H, G * H), b, t(B, H), t(B, H), torch.from_numpy(mask)


def call(cell, x, W, U, b, mask=None, h0=None, c0=None, **kw):
    if cell == "lstm":
        state = None if h0 is None else (h0, c0)
        return mt.lstm(x, W, U, b, mask=mask, initial_state=state, **kw)
    return mt.gru(x, W, U, b, mask=mask, initial_state=h0, reset_after=cell == "gru", **kw)


def steps(mask, mask_kind):
    """The mask itself, or for "lengths" the same post-padded rows given as lengths (the packed kernels);
    "cpu_lengths": lengths that stay on the CPU whatever the device (torch's convention for packing)."""
    if mask_kind in ("lengths", "cpu_lengths"):
        return dict(mask=None, lengths=mask.sum(1))
    return dict(mask=mask)


@pytest.mark.parametrize("mask_kind", ["holes", "post", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(rng, cell, mask_kind):
    x, W, U, b, h0, c0, mask = problem(rng, cell, 3, 5, 2, 3, torch.float64, mask_kind)
    if cell == "gru_v1":
        b = torch.tensor(rng.standard_normal(9), requires_grad=True)
    args = (x, W, U, b, h0) + ((c0,) if cell == "lstm" else ())

    def f(x, W, U, b, h0, c0=None):
        return call(cell, x, W, U, b, h0=h0, c0=c0, **steps(mask, mask_kind))

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", ["holes", "post", "lengths", "cpu_lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_equal_plain_torch(rng, tdevice, cell, mask_kind, go_backwards, zero_output):
    x, W, U, b, h0, c0, mask = problem(rng, cell, 4, 7, 3, 5, torch.float64, mask_kind)
    if cell == "gru_v1":
        b = torch.tensor(rng.standard_normal(15), requires_grad=True)
    leaves = [x, W, U, b, h0] + ([c0] if cell == "lstm" else [])
    ups = [torch.tensor(rng.standard_normal(s)) for s in [(4, 7, 5), (4, 5), (4, 5)]]
    kw = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output)
    ref = keras_rnn("lstm" if cell == "lstm" else "gru", x, W, U, b, mask, h0, c0, go_backwards, zero_output,
                    reset_after=cell == "gru")
    n = 3 if cell == "lstm" else 2
    want = torch.autograd.grad(sum((r * u).sum() for r, u in zip(ref[:n], ups)), leaves)
    dev = [v.detach().to(tdevice).requires_grad_() for v in leaves]
    on_dev = {k: v if v is None or mask_kind == "cpu_lengths" else v.to(tdevice)
              for k, v in steps(mask, mask_kind).items()}
    outs = call(cell, *dev[:4], h0=dev[4], c0=dev[5] if cell == "lstm" else None, **on_dev, **kw)
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o.cpu(), r.detach(), rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(sum((o * u.to(tdevice)).sum() for o, u in zip(outs, ups)), dev)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16, torch.bool,
                                   torch.int64])
def test_views_share_the_tensors_memory(rng, tdevice, dtype):
    """The engine's views of tensors (maskrnn.torch._view; on CUDA wrapped by pointer, bfloat16 through DLPack):
    strided, offset, broadcast and empty tensors read as torch reads them, and writes through a view reach the
    tensor."""
    if dtype == torch.bfloat16 and tdevice.type == "cpu":
        pytest.skip("bfloat16 runs on CUDA only (maskrnn.torch refuses it on the CPU before any view)")
    base = torch.tensor(rng.standard_normal((5, 6, 7)) * 10).to(dtype).to(tdevice)
    for t in (base, base.transpose(0, 2), base[1:4, ::2, 3:], base[2], base[:, 1:2].expand(5, 3, 7), base[:0]):
        v = mt._view(t)
        host = v.get() if hasattr(v, "get") else v
        if dtype == torch.bfloat16:  # no NumPy bfloat16 here: compare the bits
            host, want = np.asarray(host).view(np.uint16), t.cpu().view(torch.int16).numpy().view(np.uint16)
        else:
            want = t.cpu().numpy()
        assert host.shape == want.shape
        np.testing.assert_array_equal(host, want)
    if dtype != torch.bfloat16:
        mt._view(base[1:4, ::2])[...] = 0
        assert not base[1:4, ::2].any() and base[0].any()


@pytest.mark.parametrize("bad", [-1, 8])
def test_cpu_lengths_out_of_range_are_refused_on_any_device(rng, tdevice, bad):
    x, W, U, b, _, _, _ = problem(rng, "lstm", 3, 7, 2, 4, torch.float32, "post")
    lengths = torch.tensor([7, bad, 2])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 7\]"):
        mt.lstm(x.detach().to(tdevice), W.detach().to(tdevice), U.detach().to(tdevice), b.detach().to(tdevice),
                lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_padding_leaves_gradients_finite(rng, tdevice, cell):
    x, W, U, b, h0, c0, mask = problem(rng, cell, 4, 6, 3, 4, torch.float32, "holes")
    if cell == "gru_v1":
        b = torch.tensor(rng.standard_normal(12), dtype=torch.float32, requires_grad=True)
    grads = []
    for fill in (0.0, float("nan")):
        xx = x.detach().clone()
        xx[~mask] = fill
        leaves = [v.detach().to(tdevice).requires_grad_() for v in (xx, W, U, b, h0, c0)]
        outs = call(cell, *leaves[:4], mask.to(tdevice), leaves[4], leaves[5] if cell == "lstm" else None)
        loss = sum((o * o).sum() for o in outs)
        grads.append(torch.autograd.grad(loss, leaves[:5]))
    for clean, dirty in zip(*grads):
        assert torch.isfinite(dirty).all()
        torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


def torch_grads_in_keras_layout(cell, module, reverse=False):
    """The converters are linear in the weights, so they map torch's weight gradients to Keras layout too;
    except the LSTM bias, which is b_ih + b_hh: its gradient is that of either one, so b_hh's is zeroed."""
    sd = {k: p.grad for k, p in module.named_parameters()}
    if cell == "lstm":
        sd = {k: torch.zeros_like(v) if k.startswith("bias_hh") else v for k, v in sd.items()}
        return convert.lstm_weights_from_torch(sd, reverse=reverse)
    return convert.gru_weights_from_torch(sd, reverse=reverse)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_modules_match_torch_nn_on_packed_batches(rng, tdevice, cell, bidirectional):
    B, T, I, H = 5, 9, 4, 6
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, batch_first=True, bidirectional=bidirectional,
                                                              dtype=torch.float64).to(tdevice)
    kind = mt.Bidirectional if bidirectional else (mt.LSTM if cell == "lstm" else mt.GRU)
    ours = kind.from_torch(ref, return_sequences=True, return_state=True)
    x = torch.tensor(rng.standard_normal((B, T, I)), device=tdevice, requires_grad=True)
    lengths = torch.tensor(rng.integers(1, T + 1, B))
    lengths[0] = T
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_ref, state_ref = ref(packed)
    out_ref = torch.nn.utils.rnn.pad_packed_sequence(out_ref, batch_first=True, total_length=T)[0]
    states_ref = state_ref if cell == "lstm" else (state_ref,)
    # torch stacks (direction, B, H); maskrnn returns h[, c] per direction, forward first
    states_ref = [s[d] for d in range(2 if bidirectional else 1) for s in states_ref]
    got = ours(x, lengths=lengths.to(tdevice))
    valid = (torch.arange(T)[None, :] < lengths[:, None])[..., None].to(tdevice)
    # a bidirectional layer zeroes padded outputs as torch does; a single one repeats the last real output
    torch.testing.assert_close(got[0] * valid if not bidirectional else got[0], out_ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(got[1:], states_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)

    ups = [torch.tensor(rng.standard_normal(o.shape), device=tdevice) for o in (out_ref, *states_ref)]
    sum((o * u).sum() for o, u in zip((out_ref, *states_ref), ups)).backward()
    want, x.grad = x.grad, None
    sum((o * u).sum() for o, u in zip((got[0] * valid, *got[1:]), ups)).backward()
    torch.testing.assert_close(x.grad, want, rtol=1e-9, atol=1e-10)
    layers = [ours.forward_layer, ours.backward_layer] if bidirectional else [ours]
    for reverse, layer in enumerate(layers):
        for g, w in zip((layer.kernel.grad, layer.recurrent_kernel.grad, layer.bias.grad),
                        torch_grads_in_keras_layout(cell, ref, bool(reverse))):
            np.testing.assert_allclose(g.cpu().numpy(), w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional(rng, cell, merge_mode):
    B, T, I, H = 3, 6, 2, 4
    layer = (mt.LSTM if cell == "lstm" else mt.GRU)(I, H, return_sequences=True, return_state=True,
                                                      dtype=torch.float64)
    bi = mt.Bidirectional(layer, merge_mode=merge_mode)
    x = torch.tensor(rng.standard_normal((B, T, I)))
    mask = torch.from_numpy(rng.random((B, T)) > 0.3)
    res = bi(x, mask=mask)
    fl, bl = bi.forward_layer, bi.backward_layer
    assert bl.go_backwards and fl.zero_output_for_mask and bl.zero_output_for_mask
    f = call(cell, x, fl.kernel, fl.recurrent_kernel, fl.bias, mask, None, None, zero_output_for_mask=True)
    b = call(cell, x, bl.kernel, bl.recurrent_kernel, bl.bias, mask, None, None, zero_output_for_mask=True,
             go_backwards=True)
    fo, bo = f[0], torch.flip(b[0], [1])
    want = {"concat": torch.cat([fo, bo], -1), "sum": fo + bo, "mul": fo * bo, "ave": (fo + bo) / 2, None: None}
    n = 2 if merge_mode is None else 1
    if merge_mode is None:
        torch.testing.assert_close(res[0], fo)
        torch.testing.assert_close(res[1], bo)
    else:
        torch.testing.assert_close(res[0], want[merge_mode])
    for got, w in zip(res[n:], (*f[1:], *b[1:])):
        torch.testing.assert_close(got, w)


@pytest.mark.parametrize("cell", CELLS)
def test_autograd_guards(rng, cell):
    """In-place ops on the returned states leave the gradients alone (the engine's tape must not alias
    them); in-place changes to the weights before backward and double backward raise instead of lying."""
    x, W, U, b, h0, c0, mask = problem(rng, cell, 3, 5, 2, 3, torch.float64, "holes")
    if cell == "gru_v1":
        b = torch.tensor(rng.standard_normal(9), requires_grad=True)
    mask[:] = True
    mask[1:, 2] = False  # holes, but every row ends with a real step: no row reordering, nothing copied
    up = torch.tensor(rng.standard_normal((3, 5, 3)))

    def grads(touch_states):
        outs = call(cell, x, W, U, b, mask)
        loss = (outs[0] * up).sum()
        if touch_states:
            with torch.no_grad():
                for s in outs[1:]:
                    s.mul_(-3.0)
        return torch.autograd.grad(loss, [x, W, U, b])

    for clean, touched in zip(grads(False), grads(True)):
        torch.testing.assert_close(touched, clean, rtol=0, atol=0)
    with torch.no_grad():
        no_grad = call(cell, x, W, U, b, mask)
    for a, r in zip(no_grad, call(cell, x, W, U, b, mask)):
        torch.testing.assert_close(a, r.detach(), rtol=0, atol=0)
    loss = (call(cell, x, W, U, b, mask)[0] * up).sum()
    with torch.no_grad():
        U.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # Second order is refused at the first backward that would build a graph, not later, since a gradient
    # penalty's upstream gradient need not depend on the inputs (its term would then be silently zero).
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad((call(cell, x, W, U, b, mask)[0] ** 2 * up).sum(), x, create_graph=True)


def test_module_initializers_are_keras_defaults():
    H, I = 16, 5
    lstm, gru = mt.LSTM(I, H, dtype=torch.float64), mt.GRU(I, H)
    limit = (6.0 / (I + 4 * H)) ** 0.5
    assert 0 < lstm.kernel.abs().max() <= limit
    U = lstm.recurrent_kernel.detach()
    # orthogonal rows (drawn in float32, then cast)
    torch.testing.assert_close(U @ U.T, torch.eye(H, dtype=torch.float64), rtol=0, atol=1e-6)
    want = torch.zeros(4 * H, dtype=torch.float64)
    want[H:2 * H] = 1.0  # unit_forget_bias
    assert torch.equal(lstm.bias.detach(), want)
    assert gru.bias.shape == (2, 3 * H) and not gru.bias.detach().any()
    assert mt.GRU(I, H, reset_after=False).bias.shape == (3 * H,)
    assert mt.LSTM(I, H, use_bias=False).bias is None


def test_converters_round_trip(rng):
    m = torch.nn.GRU(3, 4, bidirectional=True)
    for reverse in (False, True):
        W, U, b = convert.gru_weights_from_torch(m, reverse=reverse)
        sd = convert.gru_weights_to_torch(W, U, b, reverse=reverse)
        for k, v in sd.items():
            np.testing.assert_array_equal(v, m.state_dict()[k].numpy())
    with pytest.raises(ValueError, match="single-layer"):
        convert.lstm_weights_from_torch(torch.nn.LSTM(3, 4, num_layers=2))


def test_training_example_learns(capsys):
    """A shortened run of examples/train_masked.py (the README states the full run's accuracy)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "train_masked.py"
    spec = importlib.util.spec_from_file_location("train_masked", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    acc = example.main(["--steps", "120", "--seed", "1"])
    assert "final accuracy:" in capsys.readouterr().out
    assert acc >= 0.85
