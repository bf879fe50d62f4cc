"""Keras initializers by name, with Keras's defaults (fan-based ones use the last two axes as (fan_in, fan_out)).
Each is called as ``init(shape, rng=numpy Generator)``; a number or a callable is accepted too."""

import inspect

import numpy as np


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(shape, rng):
    limit = np.sqrt(6.0 / sum(_fans(shape)))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape, rng):
    return _truncated_normal(shape, rng, np.sqrt(2.0 / sum(_fans(shape))))


def he_uniform(shape, rng):
    limit = np.sqrt(6.0 / _fans(shape)[0])
    return rng.uniform(-limit, limit, shape)


def he_normal(shape, rng):
    return _truncated_normal(shape, rng, np.sqrt(2.0 / _fans(shape)[0]))


def lecun_uniform(shape, rng):
    limit = np.sqrt(3.0 / _fans(shape)[0])
    return rng.uniform(-limit, limit, shape)


def _truncated_normal(shape, rng, stddev):
    # Keras scales by 1/0.8796... so the truncated (at 2 sigma) distribution has the asked-for stddev.
    std = stddev / 0.87962566103423978
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


def orthogonal(shape, rng, gain=1.0):
    """Keras Orthogonal: rows (or columns) of the flattened (prod(shape[:-1]), shape[-1]) matrix orthonormal."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)


def zeros(shape, rng):
    return np.zeros(shape)


def ones(shape, rng):
    return np.ones(shape)


def random_normal(shape, rng):
    return rng.normal(0.0, 0.05, shape)


def random_uniform(shape, rng):
    return rng.uniform(-0.05, 0.05, shape)


_BY_NAME = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_uniform,
                                      orthogonal, zeros, ones, random_normal, random_uniform)}
_BY_NAME["uniform"] = random_uniform
_BY_NAME["normal"] = random_normal


class Constant:
    """keras.initializers.Constant: every entry ``value``."""

    def __init__(self, value=0.0):
        self.value = value

    def __call__(self, shape, rng=None):
        return np.full(shape, self.value)


def call(init, shape, rng):
    """Calls a maskrnn initializer (which takes ``rng``) or a Keras-style one (``init(shape, dtype=None)``)."""
    if "rng" in inspect.signature(init).parameters:
        return init(shape, rng=rng)
    return init(shape)


def get(initializer):
    if isinstance(initializer, str):
        key = initializer.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown initializer {initializer!r}; known: {sorted(_BY_NAME)}")
        return _BY_NAME[key]
    if isinstance(initializer, (int, float)):
        return Constant(initializer)
    if callable(initializer):
        return initializer
    raise TypeError(f"initializer must be a name, a number or a callable, got {type(initializer).__name__}")
