"""Embedding, Masking and Dense with Keras's masking behaviour (keras-masking-spec.md sections 2, 3, 8)."""

import numpy as np

from .base import Layer

_ACTIVATIONS = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "softmax": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(
        -1, keepdims=True),
}


def _xp(a):
    return np if isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__") else __import__("cupy")


class Embedding(Layer):
    """Lookup table (input_dim, output_dim). With mask_zero=True the mask is ``ids != 0`` (row 0 is still
    looked up, as in Keras)."""

    def __init__(self, input_dim, output_dim, mask_zero=False, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        for name, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={v} (of type {type(v)}).")
        self.input_dim, self.output_dim, self.mask_zero = int(input_dim), int(output_dim), bool(mask_zero)
        self.embeddings_initializer = embeddings_initializer
        self.supports_masking = self.mask_zero

    def build(self, input_shape):
        self.embeddings = self.add_weight((self.input_dim, self.output_dim), self.embeddings_initializer,
                                          name="embeddings")

    def call(self, inputs):
        xp = _xp(inputs)
        return xp.asarray(self.embeddings)[xp.asarray(inputs).astype("int32")]

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return _xp(inputs).asarray(inputs) != 0


class Masking(Layer):
    """A step is masked when all its features equal mask_value; masked steps are zeroed in the output."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = mask_value
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return _xp(inputs).any(inputs != self.mask_value, axis=-1)

    def call(self, inputs):
        xp = _xp(inputs)
        keep = xp.any(inputs != self.mask_value, axis=-1, keepdims=True)
        return xp.where(keep, inputs, 0).astype(inputs.dtype)


class Dense(Layer):
    """inputs @ kernel + bias over the last axis; passes the mask through."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not callable(activation) and activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(a for a in _ACTIVATIONS if a)}, None or a callable")
        self.units, self.use_bias = int(units), use_bias
        self.activation = activation if callable(activation) else _ACTIVATIONS[activation]
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.supports_masking = True

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), self.kernel_initializer, name="kernel")
        self.bias = self.add_weight((self.units,), self.bias_initializer, name="bias") if self.use_bias else None

    def call(self, inputs):
        xp = _xp(inputs)
        y = xp.asarray(inputs) @ xp.asarray(self.kernel)
        if self.bias is not None:
            y = y + xp.asarray(self.bias)
        return self.activation(y)
