"""maskrnn: masked LSTM/GRU scans with Keras masking semantics, on CUDA GPUs and on the CPU (Numba).

Public API (shapes in the glossary of ``maskrnn._scan``):
    lstm, gru               forward scans -> (outputs, h_T[, c_T])
    lstm_vjp, gru_vjp       forward scans that keep what backward needs, plus a pullback for the gradients
    pad_sequences           keras.utils.pad_sequences, identical
    info                    build and device information (``python -m maskrnn info``)
"""

from ._dispatch import GRUGrads, LSTMGrads, gru, gru_vjp, lstm, lstm_vjp
from ._info import __version__, info
from .sequence import pad_sequences

__all__ = [
    "GRUGrads",
    "LSTMGrads",
    "__version__",
    "gru",
    "gru_vjp",
    "info",
    "lstm",
    "lstm_vjp",
    "pad_sequences",
]
