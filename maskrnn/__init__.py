"""maskrnn: masked LSTM/GRU scans with Keras masking semantics, on CUDA GPUs and on the CPU (Numba).

Public API (shapes in the glossary of ``maskrnn._scan``):
    lstm, gru               forward scans -> (outputs, h_T[, c_T])
    lstm_vjp, gru_vjp       forward scans that keep what backward needs, plus a pullback for the gradients
    pad_sequences           keras.utils.pad_sequences, identical
    info                    build and device information (``python -m maskrnn info``)
    get_mask                the mask a maskrnn.layers layer attached to its output
Submodules: maskrnn.layers (Keras-style layers), maskrnn.torch (PyTorch autograd and modules),
maskrnn.convert (torch.nn weights <-> Keras layout), maskrnn.reference (float64 reference).
"""

from ._dispatch import GRUGrads, LSTMGrads, gru, gru_vjp, lstm, lstm_vjp
from ._info import __version__, info
from .layers.base import get_mask
from .sequence import pad_sequences

__all__ = [
    "GRUGrads",
    "LSTMGrads",
    "__version__",
    "gru",
    "get_mask",
    "gru_vjp",
    "info",
    "lstm",
    "lstm_vjp",
    "pad_sequences",
]
