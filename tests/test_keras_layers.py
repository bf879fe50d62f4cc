"""maskrnn.keras.LSTM/GRU against keras.layers.LSTM/GRU in the same process, with copied weights, on whichever
Keras backend is active (torch by default; tests/test_keras_jax.py runs this file again with KERAS_BACKEND=jax):
outputs within 3e-5 and gradients of a random loss within 1e-4 over post-padded, pre-padded, holed and
all-masked rows, go_backwards, return_state, initial_state, Bidirectional (every merge mode), both GRU
variants; model.fit, .keras saving, stateful layers, dropout, NaN in padding and the Keras fallbacks."""

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from maskrnn import keras as mk  # noqa: E402

BACKEND = keras.backend.backend()
OUT_TOL, GRAD_TOL = 3e-5, 1e-4
B, T, I, H = 6, 7, 3, 5
# On JAX each Keras reference call compiles its scan (seconds each): there the "mixed" batch alone, whose rows are
# post-padded, pre-padded, holed, all-masked and full, covers the integration; torch runs every kind, which
# also takes the packed kernels (post- or pre-padding alone).
MASK_KINDS = ["mixed"] if BACKEND == "jax" else ["post", "pre", "mixed"]
CLASSES = {"lstm": (mk.LSTM, keras.layers.LSTM, {}), "gru": (mk.GRU, keras.layers.GRU, {}),
           "gru_v1": (mk.GRU, keras.layers.GRU, {"reset_after": False})}


def numpy(y):
    return [numpy(v) for v in y] if isinstance(y, (list, tuple)) else keras.ops.convert_to_numpy(y)


def batch_mask(rng, kind):
    """(B,T) masks: post- or pre-padded rows (one of them empty), or every kind of row in one batch."""
    lengths = rng.integers(1, T + 1, B)
    lengths[1] = 0
    if kind == "post":
        return np.arange(T)[None, :] < lengths[:, None]
    if kind == "pre":
        return np.arange(T)[None, :] >= (T - lengths)[:, None]
    m = rng.random((B, T)) > 0.3  # holes
    m[0] = np.arange(T) < 3  # post-padded
    m[1] = False  # all masked
    m[2] = np.arange(T) >= T - 2  # pre-padded
    m[3] = True
    return m


def pair(cell, batch=None, **options):
    ours_cls, keras_cls, variant = CLASSES[cell]
    k = keras_cls(H, **variant, **options)
    k.build((batch, None, I))
    ours = ours_cls(H, **variant, **options)
    ours.build((batch, None, I))
    ours.set_weights(k.get_weights())
    return k, ours


def before_first_step(mask, go_backwards):
    """(B,T) True at the processing-order positions before a row's first real step. There Keras's JAX backend
    outputs the initial state, maskrnn (like Keras's torch/TF backends) zeros (SPEC.md section 2)."""
    m = mask[:, ::-1] if go_backwards else mask
    return np.cumsum(m, axis=1) == 0


def forward_and_grads(layer, x, mask, state, upstream):
    """Outputs and gradients of sum(output * upstream) in the trainable weights, x and the initial states."""
    weights = [numpy(v) for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]
    mask = keras.ops.convert_to_tensor(mask)  # stateless_call hands it to Keras's loop unconverted
    upstream = [keras.ops.convert_to_tensor(u) for u in upstream]

    def run(w, x, state):
        out, _ = layer.stateless_call(w, fixed, x, mask=mask, initial_state=state or None)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return sum((o * u).sum() for o, u in zip(out, upstream)), out

    if BACKEND == "jax":
        import jax

        (_, out), grads = jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True)(weights, x, state or [])
        return numpy(out), numpy(grads[0] + [grads[1]] + list(grads[2]))
    import torch

    leaves = [torch.tensor(a, requires_grad=True) for a in weights + [x] + (state or [])]
    loss, out = run(leaves[: len(weights)], leaves[len(weights)], leaves[len(weights) + 1 :])
    return numpy(out), numpy(list(torch.autograd.grad(loss, leaves)))


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.max(np.abs(g - w), initial=0.0) < tol


def compare(k, ours, x, mask, state, rng, jax_prefix=None):
    """Forward and gradients of ours against Keras's layer. jax_prefix: (B,T) positions whose outputs follow
    Keras's torch/TF convention rather than its JAX one (zeroed in Keras's outputs and in the upstream)."""
    shapes = [o.shape for o in numpy(ours(x, mask=mask, initial_state=state))]
    upstream = [rng.standard_normal(s).astype("float32") for s in shapes]
    fix = None
    if BACKEND == "jax" and jax_prefix is not None:
        fix = jax_prefix[..., None] if len(shapes[0]) == 3 else jax_prefix.all(axis=1)[:, None]
        upstream[0] = np.where(fix, 0, upstream[0]).astype("float32")
    want, want_grads = forward_and_grads(k, x, mask, state, upstream)
    got, got_grads = forward_and_grads(ours, x, mask, state, upstream)
    if fix is not None:
        want[0] = np.where(fix, 0, want[0])
    assert_close(got, want, OUT_TOL)
    assert_close(got_grads, want_grads, GRAD_TOL)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1"])
def test_layer_matches_keras(rng, cell, mask_kind, go_backwards, with_state):
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = batch_mask(rng, mask_kind)
    state = None
    if with_state:
        state = [rng.standard_normal((B, H)).astype("float32") for _ in range(2 if cell == "lstm" else 1)]
    prefix = before_first_step(mask, go_backwards) if with_state else None
    for zero_output in (False, True):
        k, ours = pair(cell, return_sequences=True, return_state=True, go_backwards=go_backwards,
                       zero_output_for_mask=zero_output)
        compare(k, ours, x, mask, state, rng, None if zero_output else prefix)
        # The last output alone (ours takes it from the final state, where Keras slices the outputs).
        k, ours = pair(cell, go_backwards=go_backwards, zero_output_for_mask=zero_output)
        compare(k, ours, x, mask, state, rng, None if zero_output else prefix)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_matches_keras(rng, cell, merge_mode):
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = batch_mask(rng, "mixed")
    n_states = 2 if cell == "lstm" else 1
    state = [rng.standard_normal((B, H)).astype("float32") for _ in range(2 * n_states)]
    for return_sequences in (True, False):
        ours_cls, keras_cls, _ = CLASSES[cell]
        options = dict(return_sequences=return_sequences, return_state=True)
        k = keras.layers.Bidirectional(keras_cls(H, **options), merge_mode=merge_mode)
        ours = keras.layers.Bidirectional(ours_cls(H, **options), merge_mode=merge_mode)
        assert isinstance(ours.backward_layer, ours_cls) and ours.backward_layer.go_backwards
        for layer in (k, ours):
            layer.build((None, None, I))
        ours.set_weights(k.get_weights())
        # Keras's JAX backend differs on all-masked rows with an initial state unless the outputs are zeroed
        # there, which Bidirectional forces with return_sequences (SPEC.md section 2).
        compare(k, ours, x, mask, state if return_sequences or BACKEND != "jax" else None, rng)


def test_dropout_in_training_matches_keras(rng):
    """Input dropout: the same seed draws the same mask, applied before the projection, as Keras's loop does."""
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = batch_mask(rng, "mixed")
    k, ours = pair("lstm", return_sequences=True, dropout=0.4, seed=7)
    got, want = numpy(ours(x, mask=mask, training=True)), numpy(k(x, mask=mask, training=True))
    assert np.max(np.abs(got - want)) < OUT_TOL
    assert np.max(np.abs(got - numpy(ours(x, mask=mask)))) > 1e-3  # the dropout did act
    np.testing.assert_allclose(numpy(ours(x, mask=mask)), numpy(k(x, mask=mask)), atol=OUT_TOL)


def test_stateful_layer_matches_keras(rng):
    k, ours = pair("gru", batch=B, stateful=True, return_sequences=True)
    for _ in range(3):
        x = rng.standard_normal((B, T, I)).astype("float32")
        mask = batch_mask(rng, "mixed")
        want = numpy(k(x, mask=mask))
        if BACKEND == "jax":  # the carried state is an initial state: see before_first_step
            want = np.where(before_first_step(mask, False)[..., None], 0, want)
        np.testing.assert_allclose(numpy(ours(x, mask=mask)), want, atol=OUT_TOL)
        assert_close(numpy(ours.states), numpy(k.states), OUT_TOL)
    ours.reset_state()
    assert not np.any(numpy(ours.states[0]))


def masked_model(layer, n_classes=3):
    return keras.Sequential([keras.Input((T, I)), keras.layers.Masking(), layer, keras.layers.Dense(n_classes)])


def padded_data(rng, n=32, pad=0.0):
    x = rng.standard_normal((n, T, I)).astype("float32")
    lengths = rng.integers(1, T + 1, n)
    x[np.arange(T)[None, :] >= lengths[:, None]] = pad
    return x, rng.integers(0, 3, n)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fit_gives_keras_weights(rng, cell):
    k_layer, ours_layer = pair(cell, return_sequences=False)
    k_model, ours_model = masked_model(k_layer), masked_model(ours_layer)
    ours_model.set_weights(k_model.get_weights())
    x, y = padded_data(rng)
    initial = ours_model.get_weights()
    for model in (k_model, ours_model):
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_close(ours_model.get_weights(), k_model.get_weights(), GRAD_TOL)
    assert all(np.max(np.abs(w - w0)) > 1e-3 for w, w0 in zip(ours_model.get_weights(), initial))


def test_keras_file_round_trip(rng, tmp_path):
    inputs = keras.Input((None, I))
    h = keras.layers.Masking()(inputs)
    h = mk.LSTM(H, return_sequences=True, zero_output_for_mask=True, go_backwards=True)(h)
    h = keras.layers.Bidirectional(mk.GRU(H, reset_after=False), merge_mode="ave")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x, _ = padded_data(rng, n=B)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert type(loaded.layers[3].forward_layer) is mk.GRU
    assert loaded.layers[2].get_config() == model.layers[2].get_config()
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(model(x)))
    assert mk.LSTM.from_config(model.layers[2].get_config()).get_config() == model.layers[2].get_config()


class NaNPadding(keras.layers.Layer):
    """Masks the steps that hold NaN and leaves them in the data (Masking would zero them)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x):
        return x

    def compute_mask(self, x, mask=None):
        return keras.ops.logical_not(keras.ops.any(keras.ops.isnan(x), axis=-1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_in_padding_stays_out_of_training(rng, cell):
    x, y = padded_data(rng, pad=np.nan)
    k_layer, ours_layer = pair(cell)
    models = [keras.Sequential([keras.Input((T, I)), NaNPadding(), layer, keras.layers.Dense(3)])
              for layer in (k_layer, ours_layer)]
    models[1].set_weights(models[0].get_weights())
    losses = []
    for model in models:
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses.append(model.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][-1])
    assert np.isfinite(losses[1]) and all(np.isfinite(w).all() for w in models[1].get_weights())
    assert not np.isfinite(models[0].get_weights()[0]).all()  # Keras's own layer: NaN weights (where-gradient)


@pytest.mark.parametrize("option, value, named", [("activation", "relu", "activation"),
                                                  ("recurrent_activation", "hard_sigmoid", "recurrent_activation"),
                                                  ("recurrent_dropout", 0.2, "recurrent_dropout"),
                                                  ("unroll", True, "unroll")])
def test_unsupported_configuration_runs_keras_loop_with_one_warning(rng, option, value, named):
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = batch_mask(rng, "mixed")
    k, ours = pair("lstm", return_sequences=True, **{option: value})
    with pytest.warns(UserWarning, match=named):
        got = numpy(ours(x, mask=mask))
    np.testing.assert_allclose(got, numpy(k(x, mask=mask)), atol=OUT_TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x, mask=mask)  # warned once per layer


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_documented_differences_from_keras(rng, cell):
    """SPEC.md section 2, as in maskrnn.layers: the input's mask is used with initial_state (Keras drops it), a
    go_backwards layer returning sequences attaches the reversed mask (Keras's is unreversed)."""
    x = rng.standard_normal((B, T, I)).astype("float32")
    mask = batch_mask(rng, "post")
    x[~mask] = 0
    state = [np.zeros((B, H), "float32") for _ in range(2 if cell == "lstm" else 1)]
    k, ours = pair(cell, return_sequences=True)
    got = numpy(ours(keras.layers.Masking()(x), initial_state=state))
    np.testing.assert_allclose(got, numpy(k(x, mask=mask, initial_state=state)), atol=OUT_TOL)
    assert np.max(np.abs(numpy(k(keras.layers.Masking()(x), initial_state=state)) - got)) > 1e-3
    k, ours = pair(cell, return_sequences=True, go_backwards=True)
    np.testing.assert_array_equal(numpy(ours(keras.layers.Masking()(x))._keras_mask), mask[:, ::-1])
    np.testing.assert_array_equal(numpy(k(keras.layers.Masking()(x))._keras_mask), mask)


def test_embedding_mask_reaches_the_loss(rng):
    """Keras's own propagation: Embedding(mask_zero) -> LSTM(return_sequences) hands the mask on."""
    ids = rng.integers(1, 20, (B, T))
    ids[batch_mask(rng, "mixed") == 0] = 0
    emb = keras.layers.Embedding(20, I, mask_zero=True)
    out = mk.LSTM(H, return_sequences=True)(emb(ids))
    np.testing.assert_array_equal(numpy(out._keras_mask), ids != 0)
