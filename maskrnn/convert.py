"""Weight converters between torch.nn.LSTM/GRU (single layer) and the Keras layout of SPEC.md section 1.

PyTorch LSTM gates are (i, f, g, o), the Keras order (i, f, c, o); its two biases add up. PyTorch's GRU is
Keras's reset_after=True GRU with gates (r, z, n) instead of (z, r, h) and biases (input, recurrent).
Weights come back as NumPy arrays: kernel (I, GH), recurrent_kernel (H, GH), bias (4H,) or (2, 3H).
"""

import numpy as np


def _state(module_or_state_dict, reverse):
    sd = module_or_state_dict
    if hasattr(sd, "state_dict"):
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

    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def _gru_perm(H):
    """Index that reorders Keras (z, r, h) blocks into PyTorch (r, z, n), and back (it is its own inverse)."""
    return np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])


def lstm_weights_from_torch(module_or_state_dict, reverse=False):
    """torch.nn.LSTM (or its state dict) -> (kernel, recurrent_kernel, bias or None). reverse=True takes the
    backward direction of a bidirectional module."""
    w_ih, w_hh, b_ih, b_hh = _state(module_or_state_dict, reverse)
    bias = None if b_ih is None else b_ih + b_hh
    return w_ih.T.copy(), w_hh.T.copy(), bias


def gru_weights_from_torch(module_or_state_dict, reverse=False):
    """torch.nn.GRU (or its state dict) -> (kernel, recurrent_kernel, bias (2, 3H) or None) for reset_after=True."""
    w_ih, w_hh, b_ih, b_hh = _state(module_or_state_dict, reverse)
    perm = _gru_perm(w_hh.shape[1])
    bias = None if b_ih is None else np.stack([b_ih[perm], b_hh[perm]])
    return w_ih[perm].T.copy(), w_hh[perm].T.copy(), bias


def lstm_weights_to_torch(kernel, recurrent_kernel, bias=None, reverse=False):
    """Keras-layout LSTM weights -> torch.nn.LSTM state dict entries (NumPy arrays; the bias goes to bias_ih)."""
    s = "_l0_reverse" if reverse else "_l0"
    sd = {f"weight_ih{s}": np.ascontiguousarray(np.asarray(kernel).T),
          f"weight_hh{s}": np.ascontiguousarray(np.asarray(recurrent_kernel).T)}
    if bias is not None:
        sd[f"bias_ih{s}"] = np.asarray(bias).copy()
        sd[f"bias_hh{s}"] = np.zeros_like(sd[f"bias_ih{s}"])
    return sd


def gru_weights_to_torch(kernel, recurrent_kernel, bias=None, reverse=False):
    """Keras-layout reset_after=True GRU weights -> torch.nn.GRU state dict entries (NumPy arrays)."""
    s = "_l0_reverse" if reverse else "_l0"
    perm = _gru_perm(np.shape(recurrent_kernel)[0])
    sd = {f"weight_ih{s}": np.ascontiguousarray(np.asarray(kernel)[:, perm].T),
          f"weight_hh{s}": np.ascontiguousarray(np.asarray(recurrent_kernel)[:, perm].T)}
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape[0] != 2:
            raise ValueError("torch.nn.GRU equals the reset_after=True GRU: bias must be (2, 3H)")
        sd[f"bias_ih{s}"], sd[f"bias_hh{s}"] = bias[0][perm].copy(), bias[1][perm].copy()
    return sd
