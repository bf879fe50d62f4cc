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


def results_with_transposed_weights(cell, p, device="cpu", **kw):
    """[C-order weights' results, transposed weights' results] of one problem: the inference outputs, then the
    training outputs and every gradient (upstream ones), as host arrays. Transposed: kernel and recurrent_kernel
    as transposed views of their transposes (torch.nn's parameters in Keras's layout), same values."""
    from conftest import to_device, to_host

    op, vjp, _, extra = cell_fns(cell)
    results = []
    for transpose in (False, True):
        q = dict(p)
        if transpose:
            for k in ("kernel", "recurrent_kernel"):
                q[k] = q[k].T.copy().T
                assert not q[k].flags.c_contiguous
        q = on_device(q, device)
        args = [q.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
        steps = {k: to_device(v, device) for k, v in kw.items()}
        inferred = op(*args, **q, **steps, **extra)
        outs, pullback = vjp(*args, **q, **steps, **extra)
        grads = pullback(*(a * 0 + 1 for a in outs))
        results.append([to_host(a) for a in (*inferred, *outs, *grads) if a is not None])
    return results


def random_upstream(rng, cell, B, T, H, dtype="float64"):
    """Random upstream gradients of (outputs, h_T[, c_T]), never ones."""
    shapes = [(B, T, H), (B, H), (B, H)][: 3 if cell == "lstm" else 2]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def device_planned(device):
    """Whether the device's engine has its plans built on the device (no mask classification, see
    maskrnn._dispatch.device_plan)."""
    from maskrnn import _dispatch

    return getattr(_dispatch._engine(device)[1], "DEVICE_PLAN", False)


def record_plans(monkeypatch):
    """The plans the dispatcher makes from now on, whichever planner its engine uses, in a list."""
    from maskrnn import _dispatch

    plans = []
    for name in ("make_plan", "device_plan"):
        real = getattr(_dispatch, name)
        monkeypatch.setattr(_dispatch, name, lambda *a, real=real: plans.append(real(*a)) or plans[-1])
    return plans


def record_ext_calls(monkeypatch, K, names):
    """From now on the GPU engine K's calls of its extension's functions ``names``, as (name, args) in a list."""
    import types

    ext, calls = K._ext(), []
    recording = types.SimpleNamespace(**{n: getattr(ext, n) for n in dir(ext) if not n.startswith("_")})
    for name in names:
        real = getattr(ext, name)
        setattr(recording, name, lambda *a, _name=name, _real=real: calls.append((_name, a)) or _real(*a))
    monkeypatch.setattr(K, "_ext", lambda: recording)
    return calls


def force_masked_all_rows(monkeypatch):
    """From now on every planner gives the masked kernels every row at every step, in the caller's row order."""
    from maskrnn import _dispatch

    monkeypatch.setattr(_dispatch, "make_plan", lambda xp, m, source: _dispatch._scan.Plan(mask=m))
    monkeypatch.setattr(_dispatch, "device_plan", lambda xp, K, m, source: _dispatch._scan.Plan(mask=m.copy()))
