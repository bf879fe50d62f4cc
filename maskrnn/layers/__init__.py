"""Keras-style layers with Keras's masking semantics (SPEC.md section 3; keras-masking-spec.md)."""

from . import initializers
from .base import Layer, Sequential, attach_mask, get_mask
from .core import Dense, Embedding, Masking
from .recurrent import GRU, LSTM, Bidirectional

__all__ = ["GRU", "LSTM", "Bidirectional", "Dense", "Embedding", "Layer", "Masking", "Sequential", "attach_mask",
           "get_mask", "initializers"]
