"""Bad input to maskrnn.torch, maskrnn.layers and maskrnn.convert (issue 11 item 3): each case checks the
exception type and that the message names the argument and what was expected. The functional ops' cases are
in test_errors.py."""

import re

import numpy as np
import pytest

from maskrnn import convert, layers

torch = pytest.importorskip("torch")
import maskrnn.torch as mt  # noqa: E402

nn = torch.nn
B, T, I, H = 2, 3, 4, 5


def args(dtype=torch.float32, G=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g).to(dtype) for s in ((B, T, I), (I, G * H), (H, G * H))]


def packed():
    return nn.utils.rnn.pack_padded_sequence(torch.randn(B, T, I), [3, 2], batch_first=True)


def two_states():
    return [torch.zeros(B, H)] * 2


TORCH_CASES = {
    "bf16 x": (lambda: mt.lstm(*args(torch.bfloat16)), TypeError,
               "x has dtype torch.bfloat16; on the CPU maskrnn computes in torch.float32 or torch.float64"),
    "fp16 x": (lambda: mt.gru(*args(torch.float16, 3)), TypeError, "x has dtype torch.float16"),
    "bf16 kernel": (lambda: mt.lstm(args()[0], args(torch.bfloat16)[1], args()[2]), TypeError,
                    "kernel has dtype torch.bfloat16"),
    "packed x": (lambda: mt.LSTM(I, H)(packed()), TypeError, "x is a PackedSequence; pass the padded tensor with "
                 "lengths= or mask="),
    "packed x gru": (lambda: mt.gru(packed(), *args(G=3)[1:]), TypeError, "maskrnn.torch.nn"),
    "numpy x": (lambda: mt.lstm(np.zeros((B, T, I), np.float32), *args()[1:]), TypeError,
                "x must be a torch.Tensor, got ndarray (maskrnn.lstm takes NumPy/CuPy arrays)"),
    "kernel None": (lambda: mt.lstm(args()[0], None, args()[2]), TypeError, "kernel is required"),
    "lstm state not a pair": (lambda: mt.lstm(*args(), initial_state=torch.zeros(B, H)), ValueError,
                              "initial_state for lstm must be a pair (h0, c0)"),
    "gru two states": (lambda: mt.gru(*args(G=3), initial_state=two_states()), ValueError,
                       "initial_state for gru must be h0"),
    "negative units": (lambda: mt.LSTM(4, -1), ValueError, "units must be an integer >= 1, got -1"),
    "float units": (lambda: mt.GRU(4, 2.5), ValueError, "units must be an integer >= 1"),
    "negative input_size": (lambda: mt.GRU(-1, 3), ValueError, "input_size must be an integer >= 0"),
    "bi lstm with 2 states": (lambda: mt.Bidirectional(mt.LSTM(I, H))(args()[0], initial_state=two_states()),
                              ValueError, "Bidirectional LSTM must hold 4 tensors (fwd_h, fwd_c, bwd_h, bwd_c), "
                              "got 2"),
    "bi gru with 3 states": (lambda: mt.Bidirectional(mt.GRU(I, H))(args()[0], initial_state=[torch.zeros(B, H)] * 3),
                             ValueError, "Bidirectional GRU must hold 2 tensors (fwd_h, bwd_h), got 3"),
    "bi of a linear": (lambda: mt.Bidirectional(nn.Linear(2, 2)), TypeError, "layer must be a maskrnn.torch LSTM"),
    "bi mismatched layers": (lambda: mt.Bidirectional(mt.LSTM(I, H), backward_layer=mt.LSTM(I, H, time_major=True,
                                                                                        go_backwards=True)),
                             ValueError, "backward_layer must be the same kind of layer as layer, with the opposite "
                             "go_backwards"),
    "bi same direction": (lambda: mt.Bidirectional(mt.GRU(I, H), backward_layer=mt.GRU(I, H)), ValueError,
                          "backward_layer must be"),
    "bi from rnn": (lambda: mt.Bidirectional.from_torch(nn.RNN(I, H, bidirectional=True)), TypeError,
                    "module must be a torch.nn.LSTM or torch.nn.GRU, got RNN"),
    "bi from one-way": (lambda: mt.Bidirectional.from_torch(nn.GRU(I, H)), ValueError,
                        "module must be bidirectional"),
    "lstm from gru": (lambda: mt.LSTM.from_torch(nn.GRU(I, H)), TypeError, "module must be a torch.nn.LSTM, got GRU"),
    "gru from lstm": (lambda: mt.GRU.from_torch(nn.LSTM(I, H)), TypeError, "module must be a torch.nn.GRU, got LSTM"),
    "lstm from rnn": (lambda: mt.LSTM.from_torch(nn.RNN(I, 1)), TypeError, "module must be a torch.nn.LSTM, got RNN"),
    "from two-way": (lambda: mt.LSTM.from_torch(nn.LSTM(I, H, bidirectional=True)), ValueError,
                     "module is bidirectional; use maskrnn.torch.Bidirectional.from_torch"),
    "from two layers": (lambda: mt.GRU.from_torch(nn.GRU(I, H, num_layers=2)), ValueError, "num_layers=2"),
    "from proj_size": (lambda: mt.LSTM.from_torch(nn.LSTM(I, H, proj_size=2)), ValueError, "proj_size"),
    "gru v1 from torch": (lambda: mt.GRU.from_torch(nn.GRU(I, H), reset_after=False), ValueError,
                          "reset_after=False cannot hold its weights"),
    "load wrong kernel": (lambda: mt.LSTM(I, H).load_keras_weights(np.zeros((I, 1)), np.zeros((H, 4 * H)),
                                                                    np.zeros(4 * H)),
                          ValueError, "kernel must have shape (4, 20), got (4, 1)"),
    "load scalar bias": (lambda: mt.LSTM(I, H).load_keras_weights(np.zeros((I, 4 * H)), np.zeros((H, 4 * H)), 1.0),
                         ValueError, "bias must have shape (20,), got ()"),
    "load missing bias": (lambda: mt.GRU(I, H).load_keras_weights(np.zeros((I, 3 * H)), np.zeros((H, 3 * H))),
                          ValueError, "bias must be shape (2, 15), got None"),
    "load unwanted bias": (lambda: mt.GRU(I, H, use_bias=False).load_keras_weights(
        np.zeros((I, 3 * H)), np.zeros((H, 3 * H)), np.zeros((2, 3 * H))), ValueError,
        "bias must be None (use_bias=False), got shape (2, 15)"),
    "load transposed recurrent": (lambda: mt.GRU(I, H).load_keras_weights(
        np.zeros((I, 3 * H)), np.zeros((3 * H, H)), np.zeros((2, 3 * H))), ValueError,
        "recurrent_kernel must have shape (5, 15), got (15, 5)"),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_bad_input(case):
    fn, error, message = TORCH_CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        fn()


def test_autocast_bf16_is_refused_with_the_way_out():
    x, W, U = args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nn.Linear(I, I)(x)  # bf16 under autocast
        with pytest.raises(TypeError, match=r"x has dtype torch.bfloat16.*torch.autocast is on"):
            mt.lstm(y, W, U)
        with pytest.raises(TypeError, match="x has dtype torch.bfloat16"):
            mt.GRU(I, H)(y)


def test_vmap_is_refused():
    x, W, U = args()
    with pytest.raises(RuntimeError, match=r"does not support torch.func transforms.*x is a transformed tensor"):
        torch.vmap(lambda x: mt.lstm(x, W, U)[0])(x[None].expand(3, -1, -1, -1))
    with pytest.raises(RuntimeError, match="kernel is a transformed tensor"):
        torch.vmap(lambda W: mt.gru(x, W, U[:, :15])[0])(W[None, :, :15].expand(2, -1, -1))


def test_layers_set_weights_names_the_weight():
    lstm = layers.LSTM(H)
    lstm(np.zeros((B, T, I), np.float32))
    kernel, recurrent, bias = lstm.get_weights()
    with pytest.raises(ValueError, match=re.escape("weight 2 (bias) has shape (), expected (20,)")):
        lstm.set_weights([kernel, recurrent, np.float32(1.0)])
    with pytest.raises(ValueError, match=re.escape("weight 0 (kernel) has shape (4, 1), expected (4, 20)")):
        lstm.set_weights([kernel[:, :1], recurrent, bias])
    np.testing.assert_array_equal(lstm.get_weights()[0], kernel)  # a refused call changes nothing
    bi = layers.Bidirectional(layers.GRU(H))
    bi(np.zeros((B, T, I), np.float32))
    w = bi.get_weights()
    with pytest.raises(ValueError, match=re.escape("(backward_gru/recurrent_kernel) has shape (15, 5)")):
        bi.set_weights(w[:4] + [w[4].T] + w[5:])


@pytest.mark.parametrize(("cell", "states", "message"), [
    ("lstm", 2, "Bidirectional LSTM must hold 4 arrays (fwd_h, fwd_c, bwd_h, bwd_c), got 2"),
    ("gru", 3, "Bidirectional GRU must hold 2 arrays (fwd_h, bwd_h), got 3"),
])
def test_layers_bidirectional_state_count(cell, states, message):
    bi = layers.Bidirectional((layers.LSTM if cell == "lstm" else layers.GRU)(H))
    with pytest.raises(ValueError, match=re.escape(message)):
        bi(np.zeros((B, T, I), np.float32), initial_state=[np.zeros((B, H), np.float32)] * states)


CONVERT_CASES = {
    "gru into lstm": (lambda: convert.lstm_weights_from_torch(nn.GRU(I, H)), TypeError,
                      "module must be a torch.nn.LSTM, got GRU"),
    "lstm state dict into gru": (lambda: convert.gru_weights_from_torch(nn.LSTM(I, H).state_dict()), ValueError,
                                 "weight_ih_l0 must have shape (15, 4) for a torch.nn.GRU"),
    "gru state dict into lstm": (lambda: convert.lstm_weights_from_torch(nn.GRU(I, H).state_dict()), ValueError,
                                 "weight_ih_l0 must have shape (20, 4) for a torch.nn.LSTM"),
    "one bias": (lambda: convert.lstm_weights_from_torch(
        {k: v for k, v in nn.LSTM(I, H).state_dict().items() if k != "bias_hh_l0"}), ValueError,
        "bias_ih_l0 and bias_hh_l0 must both be present"),
    "rnn into gru": (lambda: convert.gru_weights_from_torch(nn.RNN(I, H)), TypeError, "module must be a torch.nn.GRU"),
    "to torch bad kernel": (lambda: convert.lstm_weights_to_torch(np.zeros((I, 3 * H)), np.zeros((H, 4 * H))),
                            ValueError, "kernel must have shape (input_size, 20)"),
    "to torch bad recurrent": (lambda: convert.gru_weights_to_torch(np.zeros((I, 3 * H)), np.zeros((H, 4 * H))),
                               ValueError, "recurrent_kernel must have shape (units, 3*units), got (5, 20)"),
    "to torch v1 bias": (lambda: convert.gru_weights_to_torch(np.zeros((I, 3 * H)), np.zeros((H, 3 * H)),
                                                              np.zeros(3 * H)),
                         ValueError, "bias must have shape (2, 15)"),
    "to torch scalar bias": (lambda: convert.lstm_weights_to_torch(np.zeros((I, 4 * H)), np.zeros((H, 4 * H)), 0.5),
                             ValueError, "bias must have shape (20,), got ()"),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_bad_input(case):
    fn, error, message = CONVERT_CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        fn()
