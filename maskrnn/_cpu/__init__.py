"""The CPU engine: Numba scan kernels with the contract of maskrnn/_scan.py."""

from .blas import gram, gram_runs, matmul, session
from .gru import gru_masked_bwd, gru_masked_fwd, gru_packed_bwd, gru_packed_fwd
from .infer import gru_infer, lstm_infer
from .lstm import lstm_masked_bwd, lstm_masked_fwd, lstm_packed_bwd, lstm_packed_fwd
from .pool import take as empty

__all__ = [
    "empty",
    "gram",
    "gram_runs",
    "gru_infer",
    "gru_masked_bwd",
    "gru_masked_fwd",
    "gru_packed_bwd",
    "gru_packed_fwd",
    "lstm_infer",
    "lstm_masked_bwd",
    "lstm_masked_fwd",
    "lstm_packed_bwd",
    "lstm_packed_fwd",
    "matmul",
    "session",
]
