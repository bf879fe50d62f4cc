"""The Keras masking guide ("Understanding masking & padding") run on maskrnn.layers, with its values checked,
plus Keras's own LSTM/GRU masking test vectors through the layers."""

import warnings

import numpy as np
import pytest
from conftest import to_device, to_host

import maskrnn
from maskrnn import layers, reference
from maskrnn.layers import get_mask, initializers

RAW = [[711, 632, 71], [73, 8, 3215, 55, 927], [83, 91, 1, 645, 1253, 927]]
GUIDE_MASK = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)


@pytest.fixture
def padded():
    return maskrnn.pad_sequences(RAW, padding="post")


def test_pad_sequences_output(padded):
    np.testing.assert_array_equal(padded, [[711, 632, 71, 0, 0, 0], [73, 8, 3215, 55, 927, 0],
                                           [83, 91, 1, 645, 1253, 927]])


def test_embedding_and_masking_masks(padded):
    embedding = layers.Embedding(input_dim=5000, output_dim=16, mask_zero=True)
    masked_output = embedding(padded)
    np.testing.assert_array_equal(masked_output._keras_mask, GUIDE_MASK)
    assert masked_output.shape == (3, 6, 16)
    unmasked_embedding = np.tile(padded[..., None], [1, 1, 10]).astype("float32")
    masked_embedding = layers.Masking()(unmasked_embedding)
    np.testing.assert_array_equal(maskrnn.get_mask(masked_embedding), GUIDE_MASK)


def test_masking_zeroes_masked_steps_only():
    x = np.array([[[-1, -1], [5, -1], [-1, 7]]], "float32")
    y = layers.Masking(mask_value=-1)(x)
    np.testing.assert_array_equal(y, [[[0, 0], [5, -1], [-1, 7]]])
    np.testing.assert_array_equal(y._keras_mask, [[False, True, True]])


def test_sequential_and_functional_propagation(padded, rng):
    emb = layers.Embedding(input_dim=5000, output_dim=16, mask_zero=True, seed=1)
    lstm = layers.LSTM(32, seed=2)
    model = layers.Sequential([emb, lstm])
    y = model(padded)
    x = emb(padded)  # functional style: the mask rides on x
    np.testing.assert_array_equal(y, lstm(x))
    np.testing.assert_allclose(y, lstm(np.asarray(x), mask=GUIDE_MASK), rtol=0, atol=0)
    unmasked = lstm(np.asarray(x))
    assert not np.allclose(y[:2], unmasked[:2])  # the mask was really used
    ref = reference.lstm(np.asarray(x), lstm.kernel, lstm.recurrent_kernel, lstm.bias, mask=GUIDE_MASK)
    np.testing.assert_allclose(y, ref[0][:, -1], atol=1e-5)


def test_mask_passed_by_hand():
    class MyLayer(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.embedding = layers.Embedding(input_dim=5000, output_dim=16, mask_zero=True)
            self.lstm = layers.LSTM(32)

        def call(self, inputs):
            x = self.embedding(inputs)
            mask = self.embedding.compute_mask(inputs)
            return self.lstm(x, mask=mask)

    x = (np.random.default_rng(0).random((32, 10)) * 100).astype("int32")
    x[:, 7:] = 0
    layer = MyLayer()
    out = layer(x)
    assert out.shape == (32, 32)
    emb = np.asarray(layer.embedding(x))
    ref = reference.lstm(emb, layer.lstm.kernel, layer.lstm.recurrent_kernel, layer.lstm.bias, mask=x != 0)
    np.testing.assert_allclose(out, ref[0][:, -1], atol=1e-5)


def test_temporal_split_returns_one_mask_per_output(padded):
    class TemporalSplit(layers.Layer):
        def call(self, inputs):
            return np.split(inputs, 2, axis=1)

        def compute_mask(self, inputs, mask=None):
            if mask is None:
                return None
            return np.split(mask, 2, axis=1)

    masked_embedding = layers.Masking()(np.tile(padded[..., None], [1, 1, 10]).astype("float32"))
    first_half, second_half = TemporalSplit()(masked_embedding)
    np.testing.assert_array_equal(first_half._keras_mask, GUIDE_MASK[:, :3])
    np.testing.assert_array_equal(second_half._keras_mask, GUIDE_MASK[:, 3:])


def test_custom_embedding():
    class CustomEmbedding(layers.Layer):
        def __init__(self, input_dim, output_dim, mask_zero=False, **kwargs):
            super().__init__(**kwargs)
            self.input_dim, self.output_dim, self.mask_zero = input_dim, output_dim, mask_zero

        def build(self, input_shape):
            self.embeddings = self.add_weight(shape=(self.input_dim, self.output_dim), initializer="random_normal")

        def call(self, inputs):
            return np.take(self.embeddings, inputs.astype("int32"), axis=0)

        def compute_mask(self, inputs, mask=None):
            if not self.mask_zero:
                return None
            return inputs != 0

    layer = CustomEmbedding(10, 32, mask_zero=True)
    x = (np.random.default_rng(3).random((3, 10)) * 9).astype("int32")
    y = layer(x)
    np.testing.assert_array_equal(layer.compute_mask(x), x != 0)
    np.testing.assert_array_equal(y._keras_mask, x != 0)
    np.testing.assert_array_equal(y, layer.embeddings[x])
    assert layer.supports_masking  # overriding compute_mask opts in, as in Keras


def test_my_activation_passes_the_mask_along():
    class MyActivation(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs):
            return np.maximum(inputs, 0)

    ids = np.random.default_rng(4).integers(0, 5000, size=(32, 100))
    ids[:, 60:] = 0
    x = layers.Embedding(input_dim=5000, output_dim=16, mask_zero=True)(ids)
    x = MyActivation()(x)
    np.testing.assert_array_equal(x._keras_mask, ids != 0)
    lstm = layers.LSTM(32)
    y = lstm(x)
    np.testing.assert_allclose(y, lstm(np.asarray(x)[:, :60]), atol=1e-6)  # trailing masked steps change nothing


def test_temporal_softmax_receives_the_mask():
    class TemporalSoftmax(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            assert mask is not None
            broadcast_float_mask = mask[..., None].astype("float32")
            inputs_exp = np.exp(inputs) * broadcast_float_mask
            inputs_sum = np.sum(inputs_exp * broadcast_float_mask, axis=-1, keepdims=True)
            return inputs_exp / inputs_sum

    ids = np.random.default_rng(5).integers(0, 10, size=(32, 100))
    x = layers.Embedding(input_dim=10, output_dim=32, mask_zero=True)(ids)
    x = layers.Dense(1)(x)
    np.testing.assert_array_equal(x._keras_mask, ids != 0)
    with np.errstate(invalid="ignore"):
        y = TemporalSoftmax()(x)[..., 0]
    real = ids != 0
    np.testing.assert_allclose(y[real], 1.0, rtol=1e-6)  # softmax over a single feature
    assert np.isnan(y[~real]).all()  # 0/0 at masked steps, as the guide's code gives


def test_layer_without_mask_support_drops_the_mask(padded):
    class Flatten(layers.Layer):
        def call(self, inputs):
            return inputs.reshape(len(inputs), -1)

    x = layers.Embedding(5000, 4, mask_zero=True)(padded)
    with pytest.warns(UserWarning, match="does not support masking"):
        y = Flatten()(x)
    assert maskrnn.get_mask(y) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Flatten()(np.zeros((2, 3)))


def test_keras_lstm_and_gru_test_vectors():
    """keras/src/layers/rnn/{lstm,gru}_test.py::test_masking through the layers."""
    x = np.arange(24, dtype="float32").reshape(2, 4, 3)
    kw = dict(kernel_initializer=initializers.Constant(0.01), recurrent_initializer=initializers.Constant(0.02),
              bias_initializer=initializers.Constant(0.03))
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    out = layers.LSTM(2, **kw)(x, mask=mask)
    np.testing.assert_allclose(out, [[0.11755939] * 2, [0.28556206] * 2], atol=1e-6)
    seq = layers.LSTM(2, return_sequences=True, **kw)(x, mask=mask)
    np.testing.assert_allclose(seq[..., 0], [[0.0158891, 0.05552048, 0.11755939, 0.11755939],
                                             [0.14185596, 0.28556206, 0.28556206, 0.28556206]], atol=1e-6)
    np.testing.assert_array_equal(seq._keras_mask, mask)
    out = layers.LSTM(2, return_sequences=True, zero_output_for_mask=True, **kw)(x, mask=mask)
    np.testing.assert_allclose(out[1, :, 0], [0.14185596, 0.28556206, 0, 0], atol=1e-6)
    out = layers.LSTM(2, go_backwards=True, **kw)(x, mask=np.array([[0, 1, 1, 1], [0, 0, 1, 1]], bool))
    np.testing.assert_allclose(out, [[0.15341201] * 2, [0.3844719] * 2], atol=1e-6)
    gmask = np.array([[True, True, False, True], [True, False, False, True]])
    np.testing.assert_allclose(layers.GRU(2, **kw)(x, mask=gmask), [[0.19393763] * 2, [0.30818558] * 2], atol=1e-6)
    seq = layers.GRU(2, return_sequences=True, **kw)(x, mask=gmask)
    np.testing.assert_allclose(seq[1, :, 0], [0.16051409, 0.16051409, 0.16051409, 0.30818558], atol=1e-6)
    np.testing.assert_allclose(layers.GRU(2, go_backwards=True, **kw)(x, mask=gmask),
                               [[0.11669192] * 2, [0.28380975] * 2], atol=1e-6)
    bi = layers.Bidirectional(layers.GRU(2, **kw))(x, mask=gmask)
    np.testing.assert_allclose(bi, [[0.19393763, 0.19393763, 0.11669192, 0.11669192],
                                    [0.30818558, 0.30818558, 0.28380975, 0.28380975]], atol=1e-6)


def test_improvements_over_keras():
    x = np.random.default_rng(6).standard_normal((2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    back = layers.LSTM(4, return_sequences=True, go_backwards=True)
    y = back(x, mask=mask)
    np.testing.assert_array_equal(y._keras_mask, mask[:, ::-1])  # aligned with the reversed outputs
    lstm = layers.LSTM(4, return_sequences=True)
    xm = layers.Masking()(np.where(mask[..., None], x, 0))
    state = [np.full((2, 4), 0.3, "float32"), np.zeros((2, 4), "float32")]
    with_state = lstm(xm, initial_state=state)  # Keras would drop the mask here
    np.testing.assert_array_equal(with_state, lstm(np.asarray(xm), initial_state=state, mask=mask))


def test_weights_round_trip_and_errors():
    lstm = layers.LSTM(3)
    lstm(np.zeros((1, 2, 4), "float32"))
    w = lstm.get_weights()
    assert [a.shape for a in w] == [(4, 12), (3, 12), (12,)]
    np.testing.assert_array_equal(w[2][3:6], 1.0)  # unit_forget_bias
    lstm.set_weights([a + 1 for a in w])
    np.testing.assert_array_equal(lstm.get_weights()[0], w[0] + 1)
    with pytest.raises(ValueError, match="has shape"):
        lstm.set_weights([w[1], w[0], w[2]])
    with pytest.raises(ValueError, match="positive integer"):
        layers.GRU(0)
    with pytest.raises(ValueError, match="Invalid merge mode"):
        layers.Bidirectional(layers.LSTM(2), merge_mode="max")
    with pytest.raises(ValueError, match="Unrecognized keyword"):
        layers.LSTM(2, time_major=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_mask_dtype_and_explicit_mask(rng, cell):
    x = rng.standard_normal((3, 6, 2)).astype("float32")
    mask = rng.random((3, 6)) > 0.4
    layer = (layers.LSTM if cell == "lstm" else layers.GRU)(4, return_sequences=True, seed=0)
    want = layer(x, mask=mask)
    for other in (mask.astype("int32"), mask.astype("float32"), mask[..., None]):  # Keras casts masks to bool
        np.testing.assert_array_equal(layer(x, mask=other), want)
    attached = layers.attach_mask(x.copy(), ~mask)
    np.testing.assert_array_equal(layer(attached, mask=mask), want)  # an explicit mask wins over the attached one
    np.testing.assert_array_equal(layers.Sequential([layer])(x, mask=mask), want)


def test_output_masks_of_state_and_pair_outputs(rng):
    x = layers.attach_mask(rng.standard_normal((2, 5, 3)).astype("float32"), rng.random((2, 5)) > 0.3)
    out, h, c = layers.LSTM(4, return_sequences=True, return_state=True)(x)
    np.testing.assert_array_equal(get_mask(out), get_mask(x))
    assert get_mask(h) is None and get_mask(c) is None
    assert get_mask(layers.LSTM(4)(x)) is None
    fwd, bwd = layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode=None)(x)
    np.testing.assert_array_equal(get_mask(fwd), get_mask(x))  # both halves in original time order
    np.testing.assert_array_equal(get_mask(bwd), get_mask(x))
    assert get_mask(layers.Bidirectional(layers.GRU(4))(x)) is None


def test_embedding_masking_dense_details():
    emb = layers.Embedding(3, 2, mask_zero=True)
    ids = np.array([[0.4, 0.0, 2.0]])
    y = emb(ids)
    np.testing.assert_array_equal(y._keras_mask, [[True, False, True]])  # computed on raw ids, as in Keras
    np.testing.assert_array_equal(y[0, 0], emb.embeddings[0])  # 0.4 looks up row 0
    assert not layers.Embedding(3, 2).supports_masking
    with pytest.raises(ValueError, match="`input_dim` must be a positive integer"):
        layers.Embedding(0, 2)
    x = np.array([[[np.nan, 0], [0, 0]]], "float32")
    y = layers.Masking()(x)
    np.testing.assert_array_equal(y._keras_mask, [[True, False]])  # NaN != 0: never masked, passes through
    assert np.isnan(y[0, 0, 0])
    assert layers.Masking()(np.array([[[1], [0]]], "int32")).dtype == np.int32
    dense = layers.Dense(3, activation=np.negative, bias_initializer="ones")
    z = dense(emb(ids))
    np.testing.assert_allclose(z, -(np.asarray(emb(ids)) @ dense.kernel + 1), rtol=1e-6)
    np.testing.assert_array_equal(z._keras_mask, [[True, False, True]])


def test_initializers_and_seed():
    a, b = layers.LSTM(8, seed=3), layers.LSTM(8, seed=3)
    for layer in (a, b):
        layer.build((1, 1, 5))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert all(w.dtype == np.float32 for w in a.get_weights())
    kernel, recurrent, bias = a.get_weights()
    assert np.abs(kernel).max() <= np.sqrt(6 / (5 + 32))  # glorot_uniform
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(8), atol=1e-5)  # orthogonal rows
    np.testing.assert_array_equal(bias, np.repeat([0, 1, 0, 0], 8))  # zeros, forget block exactly 1
    gru = layers.GRU(8, bias_initializer="ones", seed=0)
    gru.build((1, 1, 5))
    np.testing.assert_array_equal(gru.bias, np.ones((2, 24)))
    w = layers.Layer(seed=1).add_weight((400, 50), initializer="random_normal")
    assert abs(w.std() - 0.05) < 2e-3 and w.shape == (400, 50)
    with pytest.raises(ValueError, match="unknown initializer"):
        layers.Layer().add_weight((2,), initializer="nope")


def test_bidirectional_backward_layer(rng):
    x = rng.standard_normal((2, 5, 3)).astype("float32")
    back = layers.LSTM(4, go_backwards=True, return_sequences=True, seed=1)
    bi = layers.Bidirectional(layers.LSTM(4, return_sequences=True), backward_layer=back, merge_mode="sum")
    y = bi(x)
    fwd = bi.forward_layer(x)
    assert bi.backward_layer is back and back.zero_output_for_mask  # forced to return_sequences
    np.testing.assert_allclose(y, fwd + back(x)[:, ::-1], atol=1e-6)
    assert len(bi.get_weights()) == 6
    with pytest.raises(ValueError, match="opposite go_backwards"):
        layers.Bidirectional(layers.LSTM(4), backward_layer=layers.LSTM(4))


def test_masks_ride_on_device_arrays(device, rng):
    ids = rng.integers(0, 9, (3, 6))
    ids[0, 4:] = 0
    emb, gru = layers.Embedding(9, 4, mask_zero=True), layers.GRU(5, return_sequences=True, return_state=True)
    out, h = gru(emb(to_device(ids, device)))
    assert isinstance(out, np.ndarray) == (device == "cpu")  # CuPy in, CuPy out
    np.testing.assert_array_equal(to_host(get_mask(out)), ids != 0)
    assert get_mask(h) is None
    np.testing.assert_allclose(to_host(out), gru(emb(ids))[0], atol=1e-5)
