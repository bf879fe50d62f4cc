"""Float64 NumPy reference, written straight from SPEC.md sections 1-2: a plain loop over time, one row
select per step. Slow on purpose and never imported by the fast paths; the tests compare against it.

Same signatures as ``maskrnn.lstm`` / ``maskrnn.gru`` (NumPy inputs, float64 outputs); mask (B,T) bool or
lengths (B,) int; no validation beyond what NumPy does.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_cell(x_t, h, c, kernel, recurrent_kernel, bias):
    g = x_t @ kernel + h @ recurrent_kernel + bias
    i, f, cc, o = np.split(g, 4, axis=-1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
    return sigmoid(o) * np.tanh(c_new), c_new


def gru_cell(x_t, h, kernel, recurrent_kernel, bias, reset_after):
    H = h.shape[-1]
    if reset_after:
        a = x_t @ kernel + bias[0]
        r_ = h @ recurrent_kernel + bias[1]
        z = sigmoid(a[:, :H] + r_[:, :H])
        r = sigmoid(a[:, H : 2 * H] + r_[:, H : 2 * H])
        hh = np.tanh(a[:, 2 * H :] + r * r_[:, 2 * H :])
    else:
        a = x_t @ kernel + bias
        z = sigmoid(a[:, :H] + h @ recurrent_kernel[:, :H])
        r = sigmoid(a[:, H : 2 * H] + h @ recurrent_kernel[:, H : 2 * H])
        hh = np.tanh(a[:, 2 * H :] + (r * h) @ recurrent_kernel[:, 2 * H :])
    return z * h + (1.0 - z) * hh


def _scan(step, x, states, mask, lengths, go_backwards, zero_output_for_mask, time_major):
    x = np.asarray(x, np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    B, T, _ = x.shape
    if lengths is not None:
        mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    elif mask is None:
        mask = np.ones((B, T), bool)
    elif time_major:
        mask = np.asarray(mask).T
    order = range(T - 1, -1, -1) if go_backwards else range(T)
    prev = np.zeros_like(states[0])
    outputs = []
    for t in order:
        m = np.asarray(mask[:, t], bool)[:, None]
        x_t = np.where(m, x[:, t], 0.0)  # the masked input is never read into a state
        new = step(x_t, states)
        states = [np.where(m, n, s) for n, s in zip(new, states)]
        out = np.where(m, new[0], 0.0 if zero_output_for_mask else prev)
        outputs.append(out)
        prev = out
    outputs = np.stack(outputs, axis=0 if time_major else 1)
    return outputs, states


def _initial(initial_state, B, H, n):
    if initial_state is None:
        return [np.zeros((B, H)) for _ in range(n)]
    if n == 1 and not isinstance(initial_state, (list, tuple)):
        initial_state = [initial_state]
    return [np.asarray(s, np.float64) for s in initial_state]


def lstm(x, kernel, recurrent_kernel, bias=None, *, mask=None, lengths=None, initial_state=None,
         go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    """Returns (outputs, h_T, c_T) in float64."""
    W, U = np.asarray(kernel, np.float64), np.asarray(recurrent_kernel, np.float64)
    b = np.zeros(W.shape[1]) if bias is None else np.asarray(bias, np.float64)
    H = U.shape[0]
    B = np.shape(x)[1 if time_major else 0]

    def step(x_t, s):
        return lstm_cell(x_t, s[0], s[1], W, U, b)

    out, (h, c) = _scan(step, x, _initial(initial_state, B, H, 2), mask, lengths, go_backwards,
                        zero_output_for_mask, time_major)
    return out, h, c


def gru(x, kernel, recurrent_kernel, bias=None, *, reset_after=True, mask=None, lengths=None,
        initial_state=None, go_backwards=False, zero_output_for_mask=False, time_major=False, device=None):
    """Returns (outputs, h_T) in float64."""
    W, U = np.asarray(kernel, np.float64), np.asarray(recurrent_kernel, np.float64)
    H = U.shape[0]
    if bias is None:
        bias = np.zeros((2, 3 * H)) if reset_after else np.zeros(3 * H)
    b = np.asarray(bias, np.float64)
    B = np.shape(x)[1 if time_major else 0]

    def step(x_t, s):
        return [gru_cell(x_t, s[0], W, U, b, reset_after)]

    out, (h,) = _scan(step, x, _initial(initial_state, B, H, 1), mask, lengths, go_backwards,
                      zero_output_for_mask, time_major)
    return out, h
