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


def pair(cell, load=True, **options):
    """A Keras layer and a maskrnn layer holding the same weights (load=False: each its own initial weights)."""
    ours_cls, keras_cls = (layers.LSTM, keras.layers.LSTM) if cell == "lstm" else (layers.GRU, keras.layers.GRU)
    if cell != "lstm":
        options["reset_after"] = cell == "gru"
    k = keras_cls(H, **options)
    k.build((B, T, I))
    ours = ours_cls(H, **options)
    ours.build((B, T, I))
    if load:
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


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1"])
def test_bias_options_and_initializers_match_keras(rng, cell):
    k, ours = pair(cell, use_bias=False, return_sequences=True)
    assert len(ours.get_weights()) == len(k.get_weights()) == 2
    x, mask, _ = data(rng, cell, "holes", with_state=False)
    assert np.max(np.abs(ours(x, mask=mask) - numpy(k(x, mask=mask)))) < TOL
    # Deterministic initializers give Keras's exact weights (random ones draw from another generator).
    inits = dict(kernel_initializer="ones", recurrent_initializer="zeros", bias_initializer="ones")
    cases = [inits] + ([dict(inits, bias_initializer="zeros", unit_forget_bias=False)] if cell == "lstm" else [])
    for options in cases:
        k, fresh = pair(cell, load=False, **options)
        for a, b in zip(fresh.get_weights(), k.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_sequential_model_matches_keras(rng):
    def stack(lib):
        return [lib.Embedding(30, 6, mask_zero=True), lib.LSTM(H, return_sequences=True),
                lib.Bidirectional(lib.GRU(H, return_sequences=True)), lib.Dense(2)]

    ids = rng.integers(1, 30, (B, T))
    ids[rng.random((B, T)) < 0.3] = 0  # holes
    ids[0, :3] = 0  # pre-padding
    ids[1] = 0  # an all-masked row
    k = keras.Sequential(stack(keras.layers))
    want = k(ids)
    ours = layers.Sequential(stack(layers))
    ours(ids)
    ours.set_weights(k.get_weights())
    got = ours(ids)
    assert np.max(np.abs(got - numpy(want))) < TOL
    np.testing.assert_array_equal(layers.get_mask(got), ids != 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_documented_differences_from_keras(rng, cell):
    """SPEC.md section 2: maskrnn uses the attached mask with initial_state, and a go_backwards layer attaches
    the reversed mask; Keras 3.15 drops the former and leaves the latter unreversed."""
    k, ours = pair(cell, return_sequences=True)
    x, mask, state = data(rng, cell, "holes", with_state=True)
    x = np.where(mask[..., None], x, 0).astype("float32")
    keras_implicit = numpy(k(keras.layers.Masking()(x), initial_state=state))
    np.testing.assert_array_equal(keras_implicit, numpy(k(x, initial_state=state)))  # Keras: mask ignored
    got = ours(layers.Masking()(x), initial_state=state)
    assert np.max(np.abs(got - numpy(k(x, mask=mask, initial_state=state)))) < TOL
    kb, back = pair(cell, return_sequences=True, go_backwards=True)
    want = kb(keras.layers.Masking()(x))
    got = back(layers.Masking()(x))
    assert np.max(np.abs(got - numpy(want))) < TOL
    np.testing.assert_array_equal(numpy(want._keras_mask), mask)
    np.testing.assert_array_equal(layers.get_mask(got), mask[:, ::-1])


@pytest.mark.parametrize("mask_value", [0.0, -1.0, np.nan])
def test_masking_matches_keras(rng, mask_value):
    x = rng.integers(-1, 2, (B, T, 2)).astype("float32")
    x[0, 1] = mask_value
    x[2, 3, 0] = np.nan
    want, got = keras.layers.Masking(mask_value=mask_value)(x), layers.Masking(mask_value=mask_value)(x)
    np.testing.assert_array_equal(got, numpy(want))
    np.testing.assert_array_equal(layers.get_mask(got), numpy(want._keras_mask))
