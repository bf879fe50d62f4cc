"""maskrnn.layers against Keras 3 itself (torch backend, CPU) with copied weights: LSTM, GRU (both variants)
and Bidirectional over post-padded, pre-padded, holed and all-masked batches; max abs diff < 3e-5 (float32)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from conftest import make_mask  # noqa: E402

from maskrnn import layers  # noqa: E402

TOL = 3e-5
B, T, I, H = 4, 7, 3, 5


def numpy(y):
    return [numpy(v) for v in y] if isinstance(y, (list, tuple)) else keras.ops.convert_to_numpy(y)


def pair(cell, **options):
    """A Keras layer and a maskrnn layer holding the same weights."""
    ours_cls, keras_cls = (layers.LSTM, keras.layers.LSTM) if cell == "lstm" else (layers.GRU, keras.layers.GRU)
    if cell != "lstm":
        options["reset_after"] = cell == "gru"
    k = keras_cls(H, **options)
    k.build((B, T, I))
    ours = ours_cls(H, **options)
    ours.build((B, T, I))
    ours.set_weights(k.get_weights())
    return k, ours


def data(rng, cell, mask_kind, with_state):
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = make_mask(rng, mask_kind, B, T)
    if mask_kind == "holes":
        mask[1] = False  # an all-masked row besides row 0
    state = None
    if with_state:
        state = [rng.standard_normal((B, H)).astype("float32") for _ in range(2 if cell == "lstm" else 1)]
    return x, mask, state


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes", "empty"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1"])
def test_recurrent_layer_matches_keras(rng, cell, mask_kind, with_state, go_backwards, return_state, zero_output):
    options = dict(return_sequences=True, return_state=return_state, go_backwards=go_backwards,
                   zero_output_for_mask=zero_output)
    k, ours = pair(cell, **options)
    x, mask, state = data(rng, cell, mask_kind, with_state)
    want = numpy(k(x, mask=mask, initial_state=state))
    got = ours(x, mask=mask, initial_state=state)
    for g, w in zip(got if return_state else [got], want if return_state else [want]):
        assert np.max(np.abs(np.asarray(g) - w)) < TOL
    k_last, ours_last = pair(cell, go_backwards=go_backwards, zero_output_for_mask=zero_output)
    assert np.max(np.abs(ours_last(x, mask=mask) - numpy(k_last(x, mask=mask)))) < TOL


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_matches_keras(rng, cell, mask_kind, return_sequences, merge_mode):
    cls = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    ours_cls = layers.LSTM if cell == "lstm" else layers.GRU
    options = dict(return_sequences=return_sequences, return_state=True)
    k = keras.layers.Bidirectional(cls(H, **options), merge_mode=merge_mode)
    k.build((B, T, I))
    ours = layers.Bidirectional(ours_cls(H, **options), merge_mode=merge_mode)
    ours.build((B, T, I))
    ours.set_weights(k.get_weights())
    x, mask, state = data(rng, cell, mask_kind, with_state=True)
    states = state + [s[::-1].copy() for s in state]
    for init in (None, states):
        want = numpy(k(x, mask=mask, initial_state=init))
        got = ours(x, mask=mask, initial_state=init)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert np.max(np.abs(np.asarray(g) - w)) < TOL


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras_weights_load_unchanged(rng, cell):
    emb_k = keras.layers.Embedding(50, 6, mask_zero=True)
    dense_k = keras.layers.Dense(3)
    ids = rng.integers(0, 50, (B, T))
    ids[:, 5:] = 0
    x_k = emb_k(ids)
    dense_k(x_k)
    emb, dense = layers.Embedding(50, 6, mask_zero=True), layers.Dense(3)
    x = emb(ids)
    dense(x)
    emb.set_weights(emb_k.get_weights())
    dense.set_weights(dense_k.get_weights())
    np.testing.assert_allclose(dense(emb(ids)), numpy(dense_k(emb_k(ids))), atol=1e-6)
    np.testing.assert_array_equal(emb(ids)._keras_mask, numpy(emb_k.compute_mask(ids)))
