"""The timed runners of ``python -m maskrnn bench`` (bench.py): the workload of one configuration, and for each
implementation a function of (case, weights, batches) that returns run(i), one timed call on batch i."""

import contextlib
import os

import numpy as np

# GPU peers, like with like (perf-anchors.md section 1.1): packed input always runs cuDNN's STANDARD algorithm,
# in fp32 with TF32 tensor cores unless torch.backends.cudnn.allow_tf32 is off (both ways here); padded fp16
# input (mask ignored, as torch-unpacked) may get cuDNN's persistent kernels.
CUDNN = {"cudnn-packed": dict(packed=True, tf32=None), "cudnn-packed-fp32": dict(packed=True, tf32=False),
         "cudnn-padded-fp16": dict(packed=False, tf32=None, half=True)}
N_BUFFERS = 3  # distinct random batches cycled through, so no run times a cache-warm repeat of the last
TRAIN_CELLS = {"lstm"}  # cells with a train row


def workload(cfg, cell, mask_kind, seed):
    """N_BUFFERS random batches of one configuration: lengths uniform in [T/4, T] (post-padded), and for
    'holes' the same batch with 10% of the real steps masked out."""
    B, T, I, H = cfg
    G = 4 if cell == "lstm" else 3
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(H)
    weights = dict(
        kernel=(rng.standard_normal((I, G * H)) * scale).astype("float32"),
        recurrent_kernel=(rng.standard_normal((H, G * H)) * scale).astype("float32"),
        bias=(rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype("float32"),
    )
    batches = []
    for _ in range(N_BUFFERS):
        lengths = rng.integers(max(T // 4, 1), T + 1, B)
        mask = np.arange(T)[None, :] < lengths[:, None]
        if mask_kind == "holes":
            mask &= rng.random((B, T)) >= 0.1
        batches.append(dict(
            x=rng.standard_normal((B, T, I)).astype("float32"), lengths=lengths, mask=mask,
            d_out=rng.standard_normal((B, T, H)).astype("float32"),
        ))
    return weights, batches


def _maskrnn_runner(case, weights, batches, half=False):
    """maskrnn on the case's arrays; half: weights, inputs and upstream gradients in float16 (GPU only: the
    'maskrnn-fp16' row, whose ratio is its time over maskrnn's float32 time)."""
    import maskrnn

    cell, mask_kind, device = case["cell"], case["mask"], case["device"]
    if half and (device != "cuda" or case["pass_"] == "train"):
        raise _Skip("float16 runs on the GPU only" if device != "cuda" else "the training step runs in float32")
    if case["pass_"] == "train":
        return _train_runner("maskrnn", case, weights, batches)
    backward = case["pass_"] == "fwd+bwd"
    xp = np
    if device == "cuda":
        import cupy as xp
    dtype = "float16" if half else None
    w = {k: xp.asarray(v, dtype) for k, v in weights.items()}
    data = [{k: xp.asarray(v, dtype if v.dtype.kind == "f" else None) for k, v in b.items()} for b in batches]
    op = maskrnn.lstm_vjp if backward else maskrnn.lstm
    if cell == "gru":
        op = maskrnn.gru_vjp if backward else maskrnn.gru

    def run(i):
        b = data[i % len(data)]
        # Lengths on the host, as pack_padded_sequence takes them (the torch peers' too): no wait for the GPU.
        steps = dict(lengths=batches[i % len(batches)]["lengths"]) if mask_kind == "post" else dict(mask=b["mask"])
        res = op(b["x"], w["kernel"], w["recurrent_kernel"], w["bias"], **steps)
        if backward:
            res[1](b["d_out"])

    return run


def _torch_module(torch, cell, weights, device):
    """torch.nn.LSTM/GRU holding the same weights (Keras layout converted; gate orders i,f,g,o / r,z,n)."""
    W, U, b = (weights[k] for k in ("kernel", "recurrent_kernel", "bias"))
    I, GH = W.shape
    H = U.shape[0]
    if cell == "lstm":
        m = torch.nn.LSTM(I, H, batch_first=True)
        b_ih, b_hh, perm = b, np.zeros_like(b), np.arange(GH)
    else:
        m = torch.nn.GRU(I, H, batch_first=True)
        b_ih, b_hh = b[0], b[1]
        perm = np.concatenate([np.arange(H, 2 * H), np.arange(H), np.arange(2 * H, 3 * H)])  # z,r,h -> r,z,n
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(W[:, perm].T.copy()))
        m.weight_hh_l0.copy_(torch.from_numpy(U[:, perm].T.copy()))
        m.bias_ih_l0.copy_(torch.from_numpy(b_ih[perm].copy()))
        m.bias_hh_l0.copy_(torch.from_numpy(b_hh[perm].copy()))
    return m.to(device)


def _torch_runner(peer, case, weights, batches):
    import torch

    cell, mask_kind, device = case["cell"], case["mask"], case["device"]
    if case["pass_"] == "train":  # torch.nn.LSTM on the dense batch, on the case's device (cuDNN on a GPU)
        if peer != "torch-unpacked":
            raise _Skip("the training step compares with torch.nn.LSTM on the dense batch only")
        return _train_runner(peer, case, weights, batches)
    if (peer in CUDNN) != (device == "cuda"):
        raise _Skip("cuDNN runs on the GPU only" if peer in CUDNN else "CPU peer")
    backward = case["pass_"] == "fwd+bwd"
    opts = CUDNN.get(peer, dict(packed=peer == "torch-packed", tf32=None))
    packed, tf32, half = opts["packed"], opts["tf32"], opts.get("half", False)
    if packed and mask_kind != "post":
        raise _Skip("packed sequences cannot express holes in the mask")
    m = _torch_module(torch, cell, weights, device)
    data = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in batches]
    host_lengths = [torch.from_numpy(b["lengths"]) for b in batches]  # pack_padded_sequence wants them there
    if half:
        m = m.half()
        data = [dict(b, x=b["x"].half(), d_out=b["d_out"].half()) for b in data]

    # None: torch's own setting (recorded in the report); else pinned for this peer's calls only.
    def flags():
        return contextlib.nullcontext() if tf32 is None else torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32)

    def run(i):
        b = data[i % len(data)]
        x = b["x"].requires_grad_(backward)
        with torch.set_grad_enabled(backward), flags():
            if packed:
                p = torch.nn.utils.rnn.pack_padded_sequence(x, host_lengths[i % len(data)], batch_first=True,
                                                            enforce_sorted=False)
                out = torch.nn.utils.rnn.pad_packed_sequence(m(p)[0], batch_first=True,
                                                             total_length=x.shape[1])[0]
            else:
                out = m(x)[0]
            if backward:
                out.backward(b["d_out"])

    return run


VOCAB = 1000


def _train_runner(impl, case, weights, batches):
    """One training step of Embedding(VOCAB, I) -> LSTM(H) -> Linear(H, VOCAB) -> next-token cross-entropy
    over the real steps -> Adam, with maskrnn.torch.LSTM (the mask) or torch.nn.LSTM (the dense batch)."""
    import torch

    from . import torch as mtorch

    if case["cell"] not in TRAIN_CELLS:
        raise _Skip(f"training step measured for {sorted(TRAIN_CELLS)} only")
    device = case["device"]
    I, H = weights["kernel"].shape[0], weights["recurrent_kernel"].shape[0]
    torch.manual_seed(0)
    if impl == "maskrnn":
        rnn = mtorch.LSTM(I, H, return_sequences=True, device=device)
        rnn.load_keras_weights(weights["kernel"], weights["recurrent_kernel"], weights["bias"])
    else:
        rnn = _torch_module(torch, "lstm", weights, device)
    emb, head = torch.nn.Embedding(VOCAB, I).to(device), torch.nn.Linear(H, VOCAB).to(device)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    rng = np.random.default_rng(0)
    data = []
    for b in batches:
        tokens = torch.from_numpy(rng.integers(0, VOCAB, b["mask"].shape)).to(device)
        mask = torch.from_numpy(b["mask"]).to(device)
        data.append((tokens, mask, torch.from_numpy(b["lengths"] - 1)))  # next-token targets; on the host

    def run(i):
        tokens, mask, lengths = data[i % len(data)]
        x = emb(tokens[:, :-1])
        out = rnn(x, lengths=lengths) if impl == "maskrnn" else rnn(x)[0]
        logits = head(out)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1),
                                                 reduction="none")
        real = mask[:, 1:].reshape(-1).to(loss.dtype)
        loss = (loss * real).sum() / real.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


def _keras_runner(case, weights, batches):
    if case["device"] != "cpu":
        raise _Skip("measured on the CPU only")
    if case["pass_"] == "train":
        raise _Skip("the training step compares with torch.nn.LSTM")
    cell, backward = case["cell"], case["pass_"] == "fwd+bwd"
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    if keras.backend.backend() != "torch":
        raise _Skip(f"needs Keras's torch backend for gradients, found {keras.backend.backend()}")
    H = weights["recurrent_kernel"].shape[0]
    layer = keras.layers.LSTM(H, return_sequences=True) if cell == "lstm" else keras.layers.GRU(
        H, return_sequences=True)
    layer.build((None, None, weights["kernel"].shape[0]))
    layer.set_weights([weights["kernel"], weights["recurrent_kernel"], weights["bias"]])
    data = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]

    def run(i):
        b = data[i % len(data)]
        x = b["x"].requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = layer(x, mask=b["mask"])
            if backward:
                out.backward(b["d_out"])

    return run


class _Skip(Exception):
    """A peer that does not apply to this run (the message says why)."""


def _peer(name):
    return lambda *args: _torch_runner(name, *args)


RUNNERS = {"maskrnn": _maskrnn_runner, "maskrnn-fp16": lambda *args: _maskrnn_runner(*args, half=True),
           "torch-unpacked": _peer("torch-unpacked"),
           "torch-packed": _peer("torch-packed"), "keras": _keras_runner, **{p: _peer(p) for p in CUDNN}}
