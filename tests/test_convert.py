"""maskrnn.convert: torch.nn.LSTM/GRU weights in the Keras layout give torch's numbers through maskrnn.layers
(post-padded batches through pack_padded_sequence, both directions), round trips, and the refusals."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from maskrnn import convert, layers  # noqa: E402

B, T, I, H = 5, 7, 3, 6
TOL = 1e-5  # float32
CONVERTERS = {"lstm": (torch.nn.LSTM, layers.LSTM, convert.lstm_weights_from_torch, convert.lstm_weights_to_torch),
              "gru": (torch.nn.GRU, layers.GRU, convert.gru_weights_from_torch, convert.gru_weights_to_torch)}


def batch(rng):
    x = rng.standard_normal((B, T, I)).astype("float32")
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T  # pad_packed_sequence pads to the longest row
    x[np.arange(T)[None, :] >= lengths[:, None]] = np.nan  # torch never reads padding; neither may we
    return x, lengths


def run_torch(module, x, lengths):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(np.nan_to_num(x)), torch.from_numpy(lengths),
                                                     batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, state = module(packed)
    out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0].numpy()
    states = state if isinstance(state, tuple) else (state,)
    return out, [s.numpy() for s in states]


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_with_converted_weights_matches_torch(rng, cell, bias):
    torch_cls, layer_cls, from_torch, _ = CONVERTERS[cell]
    module = torch_cls(I, H, batch_first=True, bias=bias)
    x, lengths = batch(rng)
    want, states = run_torch(module, x, lengths)
    layer = layer_cls(H, return_sequences=True, return_state=True, zero_output_for_mask=True, use_bias=bias)
    layer.build((B, T, I))
    layer.set_weights([w for w in from_torch(module) if w is not None])
    mask = np.arange(T)[None, :] < lengths[:, None]
    out, *got_states = layer(x, mask=mask)
    assert max_diff(out, want) < TOL  # zero_output_for_mask=True zero-fills padding as pad_packed_sequence does
    for got, s in zip(got_states, states):
        assert max_diff(got, s[0]) < TOL


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_with_converted_weights_matches_torch(rng, cell):
    torch_cls, layer_cls, from_torch, _ = CONVERTERS[cell]
    module = torch_cls(I, H, batch_first=True, bidirectional=True)
    x, lengths = batch(rng)
    want, states = run_torch(module, x, lengths)
    bi = layers.Bidirectional(layer_cls(H, return_sequences=True, return_state=True))
    bi.build((B, T, I))
    bi.set_weights([*from_torch(module), *from_torch(module.state_dict(), reverse=True)])
    out, *got_states = bi(x, mask=np.arange(T)[None, :] < lengths[:, None])
    assert max_diff(out, want) < TOL  # Keras's Bidirectional zero-fills padding, like torch
    # maskrnn: (fwd_h[, fwd_c], bwd_h[, bwd_c]); torch: h_n (2, B, H)[, c_n (2, B, H)]
    n = len(states)
    for k, s in enumerate(states):
        assert max_diff(got_states[k], s[0]) < TOL
        assert max_diff(got_states[n + k], s[1]) < TOL


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_round_trip_through_torch(rng, cell, reverse):
    torch_cls, _, from_torch, to_torch = CONVERTERS[cell]
    module = torch_cls(I, H, batch_first=True, bidirectional=True)
    weights = from_torch(module, reverse=reverse)
    sd = to_torch(*weights, reverse=reverse)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    suffix = "_l0_reverse" if reverse else "_l0"
    assert sorted(sd) == sorted(f"{n}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    for got, w in zip(from_torch(sd, reverse=reverse), weights):
        np.testing.assert_array_equal(got, w)
    twin = torch_cls(I, H, batch_first=True, bidirectional=True)
    twin.load_state_dict({**module.state_dict(), **{k: torch.from_numpy(v) for k, v in sd.items()}})
    x, lengths = batch(rng)
    for a, b in zip(run_torch(module, x, lengths)[1], run_torch(twin, x, lengths)[1]):
        assert max_diff(a, b) < 1e-6  # the LSTM's two biases come back summed into bias_ih


def test_gate_orders():
    """Blocks land where SPEC.md section 1 says: torch LSTM (i,f,g,o) -> (i,f,c,o); torch GRU (r,z,n) -> (z,r,h)."""
    h = 2
    lstm = torch.nn.LSTM(1, h)
    gru = torch.nn.GRU(1, h)
    with torch.no_grad():
        for m, n in ((lstm, 4), (gru, 3)):
            gate = torch.arange(n, dtype=torch.float32).repeat_interleave(h)
            m.weight_ih_l0.copy_(gate[:, None])
            m.bias_ih_l0.copy_(gate)
            m.bias_hh_l0.copy_(10 * gate)
    kernel, _, bias = convert.lstm_weights_from_torch(lstm)
    np.testing.assert_array_equal(kernel[0], np.repeat([0, 1, 2, 3], h))
    np.testing.assert_array_equal(bias, 11 * np.repeat([0, 1, 2, 3], h))
    kernel, _, bias = convert.gru_weights_from_torch(gru)
    np.testing.assert_array_equal(kernel[0], np.repeat([1, 0, 2], h))
    np.testing.assert_array_equal(bias, [np.repeat([1, 0, 2], h), 10 * np.repeat([1, 0, 2], h)])


def test_refusals():
    with pytest.raises(ValueError, match="single-layer"):
        convert.lstm_weights_from_torch(torch.nn.LSTM(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="single-layer"):
        convert.gru_weights_from_torch(torch.nn.GRU(3, 4, num_layers=2).state_dict())
    with pytest.raises(ValueError, match="not bidirectional"):
        convert.gru_weights_from_torch(torch.nn.GRU(3, 4), reverse=True)
    with pytest.raises(ValueError, match="proj_size"):
        convert.lstm_weights_from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="reset_after=True"):
        convert.gru_weights_to_torch(np.zeros((3, 12)), np.zeros((4, 12)), np.zeros(12))
