"""Weight converters between torch.nn.LSTM/GRU (single layer) and the Keras layout of SPEC.md section 1.

PyTorch LSTM gates are (i, f, g, o), the Keras order (i, f, c, o); its two biases add up. PyTorch's GRU is
Keras's reset_after=True GRU with gates (r, z, n) instead of (z, r, h) and biases (input, recurrent).
Weights come back as NumPy arrays: kernel (I, GH), recurrent_kernel (H, GH), bias (4H,) or (2, 3H).
"""

import numpy as np

_CELLS = {"lstm": ("LSTM", 4), "gru": ("GRU", 3)}


def _state(module_or_state_dict, reverse, cell):
    mode, G = _CELLS[cell]
    sd = module_or_state_dict
    if hasattr(sd, "state_dict"):
        if getattr(sd, "mode", mode) != mode:  # torch.nn.RNNBase's cell type: LSTM, GRU, RNN_TANH, RNN_RELU
            raise TypeError(f"module must be a torch.nn.{mode}, got {type(sd).__name__} (mode {sd.mode!r})")
        num_layers = getattr(sd, "num_layers", 1)
        if num_layers != 1:
            raise ValueError(f"only single-layer modules convert, got num_layers={num_layers}")
        if getattr(sd, "proj_size", 0):
            raise ValueError("LSTMs with proj_size have no Keras equivalent")
        sd = sd.state_dict()
    if any(k.endswith("_l1") or "_l1_" in k for k in sd):
        raise ValueError("only single-layer modules convert (found weights of layer 1)")
    suffix = "_l0_reverse" if reverse else "_l0"
    if f"weight_ih{suffix}" not in sd:
        raise ValueError(f"weight_ih{suffix} not in the state dict" + (" (not bidirectional?)" if reverse else ""))

    def get(name):
        v = sd.get(f"{name}{suffix}")
        return None if v is None else np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)

    w_ih, w_hh, b_ih, b_hh = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")
    # Shapes decide the cell type of a state dict: a wrong one would otherwise convert into garbage.
    H = w_hh.shape[-1] if w_hh.ndim == 2 else 0
    want = {"weight_ih": (G * H, w_ih.shape[-1] if w_ih.ndim == 2 else 0), "weight_hh": (G * H, H),
            "bias_ih": (G * H,), "bias_hh": (G * H,)}
    for name, w in zip(want, (w_ih, w_hh, b_ih, b_hh)):
        if w is not None and (H == 0 or w.shape != want[name]):
            raise ValueError(f"{name}{suffix} must have shape {want[name]} for a torch.nn.{mode} "
                             f"({G} gates x hidden_size rows), got {w.shape}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"bias_ih{suffix} and bias_hh{suffix} must both be present or both absent")
    return w_ih, w_hh, b_ih, b_hh


def _gru_perm(H):
    """Index that reorders Keras (z, r, h) blocks into PyTorch (r, z, n), and back (it is its own inverse)."""
    return np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])


def lstm_weights_from_torch(module_or_state_dict, reverse=False):
    """torch.nn.LSTM (or its state dict) -> (kernel, recurrent_kernel, bias or None). reverse=True takes the
    backward direction of a bidirectional module."""
    w_ih, w_hh, b_ih, b_hh = _state(module_or_state_dict, reverse, "lstm")
    bias = None if b_ih is None else b_ih + b_hh
    return w_ih.T.copy(), w_hh.T.copy(), bias


def gru_weights_from_torch(module_or_state_dict, reverse=False):
    """torch.nn.GRU (or its state dict) -> (kernel, recurrent_kernel, bias (2, 3H) or None) for reset_after=True."""
    w_ih, w_hh, b_ih, b_hh = _state(module_or_state_dict, reverse, "gru")
    perm = _gru_perm(w_hh.shape[1])
    bias = None if b_ih is None else np.stack([b_ih[perm], b_hh[perm]])
    return w_ih[perm].T.copy(), w_hh[perm].T.copy(), bias


def _keras(kernel, recurrent_kernel, bias, cell):
    """Keras-layout weights as arrays, after checking their shapes against each other."""
    G = _CELLS[cell][1]
    W, U = np.asarray(kernel), np.asarray(recurrent_kernel)
    if U.ndim != 2 or U.shape[0] == 0 or U.shape[1] != G * U.shape[0]:
        raise ValueError(f"recurrent_kernel must have shape (units, {G}*units), got {U.shape}")
    H = U.shape[0]
    if W.ndim != 2 or W.shape[1] != G * H:
        raise ValueError(f"kernel must have shape (input_size, {G * H}) (units={H} from recurrent_kernel), "
                         f"got {W.shape}")
    if bias is not None:
        bias = np.asarray(bias)
        want = (G * H,) if cell == "lstm" else (2, G * H)
        if bias.shape != want:
            extra = " (torch.nn.GRU equals the reset_after=True GRU)" if cell == "gru" else ""
            raise ValueError(f"bias must have shape {want}{extra}, got {bias.shape}")
    return W, U, bias


def lstm_weights_to_torch(kernel, recurrent_kernel, bias=None, reverse=False):
    """Keras-layout LSTM weights -> torch.nn.LSTM state dict entries (NumPy arrays; the bias goes to bias_ih)."""
    kernel, recurrent_kernel, bias = _keras(kernel, recurrent_kernel, bias, "lstm")
    s = "_l0_reverse" if reverse else "_l0"
    sd = {f"weight_ih{s}": np.ascontiguousarray(kernel.T), f"weight_hh{s}": np.ascontiguousarray(recurrent_kernel.T)}
    if bias is not None:
        sd[f"bias_ih{s}"] = bias.copy()
        sd[f"bias_hh{s}"] = np.zeros_like(sd[f"bias_ih{s}"])
    return sd


def gru_weights_to_torch(kernel, recurrent_kernel, bias=None, reverse=False):
    """Keras-layout reset_after=True GRU weights -> torch.nn.GRU state dict entries (NumPy arrays)."""
    kernel, recurrent_kernel, bias = _keras(kernel, recurrent_kernel, bias, "gru")
    s = "_l0_reverse" if reverse else "_l0"
    perm = _gru_perm(recurrent_kernel.shape[0])
    sd = {f"weight_ih{s}": np.ascontiguousarray(kernel[:, perm].T),
          f"weight_hh{s}": np.ascontiguousarray(recurrent_kernel[:, perm].T)}
    if bias is not None:
        sd[f"bias_ih{s}"], sd[f"bias_hh{s}"] = bias[0][perm].copy(), bias[1][perm].copy()
    return sd
