"""Keras LSTM, GRU and Bidirectional layers on maskrnn's engines (the inputs' device decides which).

Two deliberate improvements over Keras 3.15 (SPEC.md section 2): a go_backwards layer that returns sequences
attaches the *reversed* mask to its (reversed) output, and the input's mask is used even when initial_state
is passed (Keras then silently drops it).
"""

import numpy as np

import maskrnn

from .base import Layer, _is_sequence
from .core import _xp


class _RNN(Layer):
    GATES = 0
    N_STATES = 0

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 return_sequences=False, return_state=False, go_backwards=False, zero_output_for_mask=False,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Received an invalid value for argument `units`, expected a positive integer, "
                             f"got {units}.")
        if activation != "tanh" or recurrent_activation != "sigmoid":
            raise ValueError("maskrnn implements Keras 3's default activations: activation='tanh', "
                             "recurrent_activation='sigmoid'")
        self.units = int(units)
        self.use_bias = use_bias
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer
        self.bias_initializer = bias_initializer
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.zero_output_for_mask = go_backwards, zero_output_for_mask
        self.supports_masking = True

    def get_config(self):
        return dict(units=self.units, use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                    recurrent_initializer=self.recurrent_initializer, bias_initializer=self.bias_initializer,
                    return_sequences=self.return_sequences, return_state=self.return_state,
                    go_backwards=self.go_backwards, zero_output_for_mask=self.zero_output_for_mask,
                    dtype=self.dtype, **self._cell_config())

    def build(self, input_shape):
        G = self.GATES * self.units
        self.kernel = self.add_weight((input_shape[-1], G), self.kernel_initializer, name="kernel")
        self.recurrent_kernel = self.add_weight((self.units, G), self.recurrent_initializer, name="recurrent_kernel")
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(self._bias_shape(), self._bias_initializer(), name="bias")

    def _bias_initializer(self):
        return self.bias_initializer

    def call(self, sequences, initial_state=None, mask=None, training=None):
        xp = _xp(sequences)
        x = xp.asarray(sequences).astype(self.dtype, copy=False)
        if _is_sequence(mask):
            mask = mask[0]
        if mask is not None:
            mask = xp.asarray(mask).astype(bool)  # Keras casts any mask to bool
            if mask.ndim == 3:
                mask = mask[..., 0]
        weights = [None if w is None else xp.asarray(w) for w in (self.kernel, self.recurrent_kernel, self.bias)]
        if initial_state is not None:
            states = initial_state if _is_sequence(initial_state) else [initial_state]
            states = [xp.asarray(s).astype(self.dtype, copy=False) for s in states]
            initial_state = states if self.N_STATES == 2 else states[0]
        out, *states = self._op(x, *weights, mask=mask, initial_state=initial_state,
                                go_backwards=self.go_backwards, zero_output_for_mask=self.zero_output_for_mask)
        y = out if self.return_sequences else out[:, -1]
        return (y, *states) if self.return_state else y  # a tuple, as Keras returns

    def compute_mask(self, inputs, mask=None):
        if _is_sequence(mask):
            mask = mask[0]
        out_mask = mask if self.return_sequences else None
        if out_mask is not None and self.go_backwards:
            out_mask = out_mask[:, ::-1]  # aligned with the reversed output (Keras leaves it unreversed)
        if self.return_state:
            return [out_mask] + [None] * self.N_STATES
        return out_mask


class LSTM(_RNN):
    """keras.layers.LSTM: weights kernel (I,4u), recurrent_kernel (u,4u), bias (4u,), gates i, f, c, o."""

    GATES, N_STATES = 4, 2

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        self.unit_forget_bias = unit_forget_bias
        super().__init__(units, **kwargs)

    def _cell_config(self):
        return dict(unit_forget_bias=self.unit_forget_bias)

    def _bias_shape(self):
        return (4 * self.units,)

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        from . import initializers

        base, u = initializers.get(self.bias_initializer), self.units

        def init(shape, rng):  # Keras sets the forget block to exactly 1
            b = np.asarray(initializers.call(base, shape, rng), dtype=float)
            b[u: 2 * u] = 1.0
            return b

        return init

    @staticmethod
    def _op(x, kernel, recurrent_kernel, bias, **kw):
        return maskrnn.lstm(x, kernel, recurrent_kernel, bias, **kw)


class GRU(_RNN):
    """keras.layers.GRU: gates z, r, h; reset_after=True (default) has bias (2, 3u), False (3u,)."""

    GATES, N_STATES = 3, 1

    def __init__(self, units, reset_after=True, **kwargs):
        self.reset_after = reset_after
        super().__init__(units, **kwargs)

    def _cell_config(self):
        return dict(reset_after=self.reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _op(self, x, kernel, recurrent_kernel, bias, **kw):
        return maskrnn.gru(x, kernel, recurrent_kernel, bias, reset_after=self.reset_after, **kw)


_MERGES = {
    "concat": lambda xp, f, b: xp.concatenate([f, b], axis=-1),
    "sum": lambda xp, f, b: f + b,
    "mul": lambda xp, f, b: f * b,
    "ave": lambda xp, f, b: (f + b) / 2,
}


class Bidirectional(Layer):
    """keras.layers.Bidirectional: forward and backward layers re-created from ``layer``'s config (fresh
    weights; the backward one with go_backwards flipped) unless ``backward_layer`` is given;
    zero_output_for_mask forced to return_sequences on both; both see the same, unreversed mask.
    Weights: forward layer's then backward layer's."""

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        super().__init__(**kwargs)
        if merge_mode not in ("concat", "sum", "mul", "ave", None):
            raise ValueError(f"Invalid merge mode. Received: {merge_mode}. Merge mode should be one of "
                             '{"sum", "mul", "ave", "concat", None}')
        config = layer.get_config()
        self.forward_layer = type(layer)(**config, name=f"forward_{layer.name}")
        if backward_layer is None:
            backward_layer = type(layer)(**dict(config, go_backwards=not layer.go_backwards),
                                         name=f"backward_{layer.name}")
        elif (backward_layer.go_backwards == layer.go_backwards
              or backward_layer.return_sequences != layer.return_sequences
              or backward_layer.return_state != layer.return_state):
            raise ValueError("backward_layer must have the opposite go_backwards and the same return_sequences "
                             "and return_state as layer")
        self.backward_layer = backward_layer
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state
        self.supports_masking = True

    def build(self, input_shape):
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)

    def call(self, sequences, initial_state=None, mask=None, training=None):
        fwd_state = bwd_state = None
        if initial_state is not None:
            n = self.forward_layer.N_STATES
            initial_state = list(initial_state) if _is_sequence(initial_state) else [initial_state]
            if len(initial_state) != 2 * n:
                names = "fwd_h, fwd_c, bwd_h, bwd_c" if n == 2 else "fwd_h, bwd_h"
                raise ValueError(f"initial_state of a Bidirectional {type(self.forward_layer).__name__} must hold "
                                 f"{2 * n} arrays ({names}), got {len(initial_state)}")
            fwd_state, bwd_state = initial_state[:n], initial_state[n:]
        y = self.forward_layer.call(sequences, initial_state=fwd_state, mask=mask)
        y_rev = self.backward_layer.call(sequences, initial_state=bwd_state, mask=mask)
        states = ()
        if self.return_state:
            y, states = y[0], y[1:] + y_rev[1:]
            y_rev = y_rev[0]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        xp = _xp(y)
        out = (y, y_rev) if self.merge_mode is None else (_MERGES[self.merge_mode](xp, y, y_rev),)
        return out + states if (self.return_state or self.merge_mode is None) else out[0]

    def compute_mask(self, inputs, mask=None):
        if _is_sequence(mask):
            mask = mask[0]
        out_mask = mask if self.return_sequences else None
        masks = [out_mask, out_mask] if self.merge_mode is None else [out_mask]
        if self.return_state:
            return masks + [None] * (2 * self.forward_layer.N_STATES)
        return masks if self.merge_mode is None else out_mask
