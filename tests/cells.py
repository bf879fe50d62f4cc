"""Random problems for the cell tests: weights in Keras layout, for lstm, gru and gru reset_after=False."""


import maskrnn
from maskrnn import reference

CELLS = ["lstm", "gru", "gru_v1"]  # gru_v1: reset_after=False


def make_problem(rng, cell, B, T, I, H, dtype="float64", bias=True, initial_state=False, scale=0.5):
    G = 4 if cell == "lstm" else 3
    p = dict(
        x=rng.standard_normal((B, T, I)),
        kernel=rng.standard_normal((I, G * H)) * scale,
        recurrent_kernel=rng.standard_normal((H, G * H)) * scale,
    )
    if bias:
        p["bias"] = rng.standard_normal((2, 3 * H) if cell == "gru" else (G * H,)) * 0.2
    if initial_state:
        states = [rng.standard_normal((B, H)) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
        p["initial_state"] = states if cell == "lstm" else states[0]
    return {k: (tuple(a.astype(dtype) for a in v) if isinstance(v, list) else v.astype(dtype))
            for k, v in p.items()}


def cell_fns(cell):
    """(op, vjp, reference, extra kwargs) for a cell name."""
    if cell == "lstm":
        return maskrnn.lstm, maskrnn.lstm_vjp, reference.lstm, {}
    extra = {"reset_after": cell == "gru"}
    return maskrnn.gru, maskrnn.gru_vjp, reference.gru, extra


def on_device(p, device):
    """A problem's arrays (initial states in a tuple) moved to the test device."""
    from conftest import to_device

    return {k: (tuple(to_device(s, device) for s in v) if isinstance(v, tuple) else to_device(v, device))
            for k, v in p.items()}


def random_upstream(rng, cell, B, T, H, dtype="float64"):
    """Random upstream gradients of (outputs, h_T[, c_T]), never ones."""
    shapes = [(B, T, H), (B, H), (B, H)][: 3 if cell == "lstm" else 2]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]
