"""Keras's layer protocol and mask propagation (keras-masking-spec.md section 8), for NumPy and CuPy arrays.

A mask travels attached to an array as ``y._keras_mask`` (read it with ``maskrnn.get_mask(y)``). NumPy and
CuPy arrays take no attributes, so outputs are returned as views of a thin subclass that has that slot;
arrays derived from them (slices, arithmetic) carry no mask, as in Keras.
"""

import functools
import inspect
import warnings

import numpy as np

from . import initializers

_SUBCLASSES = {}


def _tensor_class(base):
    """The subclass of ``base`` (numpy.ndarray or cupy.ndarray) whose instances hold a ``_keras_mask``."""
    if base not in _SUBCLASSES:

        def __array_finalize__(self, obj):
            self._keras_mask = None

        _SUBCLASSES[base] = type(f"Masked{base.__module__.split('.')[0].capitalize()}Array", (base,),
                                 {"__array_finalize__": __array_finalize__})
    return _SUBCLASSES[base]


def attach_mask(y, mask):
    """Returns y (a view of it, for arrays that take no attributes) with ``y._keras_mask = mask``."""
    try:
        y._keras_mask = mask
        return y
    except AttributeError:
        base = np.ndarray if isinstance(y, np.ndarray) else type(y)
        y = y.view(_tensor_class(base))
        y._keras_mask = mask
        return y


def get_mask(y):
    """The mask attached to ``y`` by the layer that produced it (None when there is none)."""
    return getattr(y, "_keras_mask", None)


def _is_sequence(x):
    return isinstance(x, (list, tuple))


class Layer:
    """Keras's Layer protocol: ``build``, ``call``, ``compute_mask``, ``supports_masking``, ``add_weight``,
    ``get_weights``/``set_weights``. Calling a layer builds it on first use, passes the input's mask to
    ``call`` when ``call`` takes a ``mask`` argument, and attaches ``compute_mask``'s result to the output.
    A layer that neither supports masking nor overrides ``compute_mask`` drops an incoming mask (with
    Keras's warning)."""

    def __init_subclass__(cls, **kwargs):
        # As Keras: calling build (directly or on first __call__) marks the layer built, once.
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:
            build = cls.__dict__["build"]

            @functools.wraps(build)
            def build_once(self, input_shape):
                if not self.built:
                    build(self, input_shape)
                    self.built = True

            cls.build = build_once

    def __init__(self, name=None, seed=None, dtype="float32", **kwargs):
        if kwargs:
            raise ValueError(f"Unrecognized keyword arguments passed to {type(self).__name__}: {kwargs}")
        self.name = name or type(self).__name__.lower()
        self.dtype = dtype
        self.built = False
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._weights, self._weight_names = [], []
        self._supports_masking = type(self).compute_mask is not Layer.compute_mask

    @property
    def supports_masking(self):
        return self._supports_masking

    @supports_masking.setter
    def supports_masking(self, value):
        self._supports_masking = bool(value)

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return inputs

    def compute_mask(self, inputs, mask=None):
        return mask

    def add_weight(self, shape=None, initializer="glorot_uniform", dtype=None, name=None, trainable=True):
        value = np.asarray(initializers.call(initializers.get(initializer), tuple(shape), self._rng),
                           dtype=dtype or self.dtype)
        self._weights.append(value)
        self._weight_names.append(name or f"weight_{len(self._weights) - 1}")
        return value

    def _sublayers(self):
        return [v for v in vars(self).values() if isinstance(v, Layer)]

    @property
    def weights(self):
        return self._weights + [w for layer in self._sublayers() for w in layer.weights]

    @property
    def weight_names(self):
        """Names of ``weights``, in their order ("<sublayer>/<name>" for a sublayer's)."""
        return self._weight_names + [f"{layer.name}/{n}" for layer in self._sublayers() for n in layer.weight_names]

    def get_weights(self):
        return [np.array(w) for w in self.weights]

    def set_weights(self, weights):
        own = self.weights
        if len(weights) != len(own):
            raise ValueError(f"{self.name} expects {len(own)} weight arrays, got {len(weights)}")
        news = [np.asarray(new) for new in weights]
        for i, (name, w, new) in enumerate(zip(self.weight_names, own, news)):
            if new.shape != w.shape:  # checked before any is set, and never broadcast
                raise ValueError(f"{self.name}: weight {i} ({name}) has shape {new.shape}, expected {w.shape}")
        for w, new in zip(own, news):
            w[...] = new

    def _call_takes(self, name):
        params = inspect.signature(self.call).parameters
        return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def __call__(self, inputs, *args, **kwargs):
        if "mask" in kwargs:
            mask = kwargs.pop("mask")
        elif _is_sequence(inputs):
            mask = [get_mask(x) for x in inputs]
            mask = None if all(m is None for m in mask) else mask
        else:
            mask = get_mask(inputs)
        if not self.built:
            self.build([np.shape(x) for x in inputs] if _is_sequence(inputs) else np.shape(inputs))
        if self._call_takes("mask"):
            kwargs["mask"] = mask
        outputs = self.call(inputs, *args, **kwargs)
        if self.supports_masking:
            out_mask = self.compute_mask(inputs, mask)
        else:
            if mask is not None:
                warnings.warn(f"Layer '{self.name}' (of type {type(self).__name__}) was passed an input with a "
                              "mask attached to it. However, this layer does not support masking and will "
                              "therefore destroy the mask information. Downstream layers will not see the mask.",
                              stacklevel=2)
            out_mask = None
        if _is_sequence(outputs):
            masks = out_mask if _is_sequence(out_mask) else [out_mask] * len(outputs)
            return type(outputs)(attach_mask(y, m) for y, m in zip(outputs, masks))
        return attach_mask(outputs, out_mask)


class Sequential(Layer):
    """A stack of layers; each one receives the previous one's output and the mask attached to it."""

    def __init__(self, layers=None, **kwargs):
        super().__init__(**kwargs)
        self.layers = list(layers or [])
        self.supports_masking = True

    def add(self, layer):
        self.layers.append(layer)

    def _sublayers(self):
        return self.layers

    def __call__(self, inputs, mask=None):
        x = inputs if mask is None else attach_mask(inputs, mask)
        for layer in self.layers:
            x = layer(x)
        return x
