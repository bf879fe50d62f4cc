"""One direction of an LSTM layer with ``proj_size`` (torch.nn.LSTM's projected LSTM), as a loop of torch ops.

maskrnn's kernels have no projection (``h = W_hr (o * tanh(c))`` feeds the recurrence, so it cannot be applied
after the scan). This path is exact, and autograd differentiates it, but it costs one Python step per time
step (about T small ops and T small GEMMs per layer and direction, forward and backward): expect it to run at
roughly torch.nn.LSTM's unfused speed, not the kernels'.
"""

import torch
import torch.nn.functional as F


def lstm_proj_direction(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, mask, reverse):
    """x (T,B,I) time-major; mask (T,B) bool (True = real step); h0 (B,P), c0 (B,H) or None (zeros).

    Masked steps carry the states and output zeros; ``reverse`` visits the steps from last to first.
    Returns out (T,B,P) in time order, h_T (B,P), c_T (B,H)."""
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hr.shape[0]
    m = mask[:, :, None]
    # Masked inputs (NaN is allowed there) are zeroed before the GEMM so they reach no value or gradient.
    gx = F.linear(torch.where(m, x, 0), w_ih, None if b_ih is None else b_ih + b_hh)
    h = x.new_zeros(B, P) if h0 is None else h0
    c = x.new_zeros(B, H) if c0 is None else c0
    outs = [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        i, f, g, o = (gx[t] + F.linear(h, w_hh)).chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = F.linear(torch.sigmoid(o) * torch.tanh(c_new), w_hr)
        c, h = torch.where(m[t], c_new, c), torch.where(m[t], h_new, h)
        outs[t] = torch.where(m[t], h_new, 0)
    return torch.stack(outs), h, c
