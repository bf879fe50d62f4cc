"""The float16 and bfloat16 CUDA kernels on the emulation, against the float64 reference with the tolerance
table: float16 through NumPy arrays, bfloat16 through torch tensors (maskrnn.torch), forward and gradients;
inference in both, whole and in chunks.
Runs with the CUDA-emulation suite (``-p plugin``, after build.py); skipped otherwise."""

import sys

import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from cells import CELLS, cell_fns, make_problem, random_upstream  # noqa: E402
from conftest import TOLERANCE, make_mask, rel_err  # noqa: E402
from plugin import allow_half  # noqa: E402

from maskrnn import _scan  # noqa: E402

B, T, I, H = 6, 12, 8, 40  # two 32-unit column tiles, fewer rows than one 8-row tile
DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def rounded(p, dtype):
    """The problem in `dtype`, and the same values in float64 for the reference."""
    half = {k: (tuple(s.astype(dtype) for s in v) if isinstance(v, tuple) else v.astype(dtype)) for k, v in p.items()}
    wide = {k: (tuple(s.astype(np.float64) for s in v) if isinstance(v, tuple) else v.astype(np.float64))
            for k, v in half.items()}
    return half, wide


def call(fn, p, extra, **kw):
    q = dict(p)
    return fn(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)


@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_float16_forward_and_gradients(rng, monkeypatch, cell, mask_kind):
    allow_half(monkeypatch)
    initial_state = mask_kind == "holes"
    half, wide = rounded(make_problem(rng, cell, B, T, I, H, initial_state=initial_state), np.float16)
    mask = make_mask(rng, mask_kind, B, T)
    _, vjp, ref, extra = cell_fns(cell)
    outs, pullback = call(vjp, half, extra, mask=mask)
    for got, want in zip(outs, call(ref, wide, extra, mask=mask)):
        assert got.dtype == np.float16
        assert rel_err(got, want) < TOLERANCE["float16"]
    # Gradients against the float64 kernels' (checked against finite differences by test_grad.py).
    upstream = random_upstream(rng, cell, B, T, H)
    grads = pullback(*(u.astype(np.float16) for u in upstream))
    wide_outs, wide_pullback = call(vjp, wide, extra, mask=mask)
    expected = wide_pullback(*(u.astype(np.float16).astype(np.float64) for u in upstream))
    for name, got, want in zip(expected._fields, grads, expected):
        if want is None:
            assert got is None
            continue
        assert got.dtype == np.float16, name
        assert rel_err(got, want) < TOLERANCE["float16"], name


@pytest.mark.parametrize("kernel", ["auto", "step"])
@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_half_inference_whole_and_in_chunks(rng, monkeypatch, cell, dtype, k, kernel):
    """Inference (csrc/infer.cu), by the persistent kernels (auto, at this shape) and the step kernels, whose
    running states live in the workspace's float32 scratch within a chunk; in the storage type from one chunk to
    the next (chunks of k steps; None: one chunk); initial states, holes."""
    allow_half(monkeypatch)
    monkeypatch.setenv("MASKRNN_CUDA_KERNEL", kernel)
    if k:
        monkeypatch.setattr(_scan, "chunks", lambda T, *a, **kw: [(t0, min(T, t0 + k)) for t0 in range(0, T, k)])
    half, wide = rounded(make_problem(rng, cell, B, T, I, H, initial_state=True), DTYPES[dtype])
    mask = make_mask(rng, "holes", B, T)
    op, _, ref, extra = cell_fns(cell)
    for got, want in zip(call(op, half, extra, mask=mask), call(ref, wide, extra, mask=mask)):
        assert got.dtype == DTYPES[dtype]
        assert rel_err(got, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("mask_kind", ["post", "holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_bfloat16_torch_tensors(rng, monkeypatch, cell, mask_kind):
    torch = pytest.importorskip("torch")
    import maskrnn.torch as mt

    allow_half(monkeypatch)
    # CPU torch tensors reach the engine as NumPy views; NumPy has no bfloat16 (nor a DLPack path for it), so
    # bfloat16 tensors are viewed through int16 as ml_dtypes.bfloat16 arrays, sharing their memory.
    view, tensor = mt._view, mt._tensor
    monkeypatch.setattr(mt, "_view", lambda t: t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                        if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else view(t))
    monkeypatch.setattr(mt, "_tensor", lambda a: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
                        if isinstance(a, np.ndarray) and a.dtype == ml_dtypes.bfloat16 else tensor(a))
    half, wide = rounded(make_problem(rng, cell, B, T, I, H), ml_dtypes.bfloat16)
    mask = make_mask(rng, mask_kind, B, T)
    _, _, ref, extra = cell_fns(cell)
    op = mt.lstm if cell == "lstm" else mt.gru

    def run(p, dtype):
        args = [torch.from_numpy(p[k].astype(np.float64)).to(dtype).requires_grad_()
                for k in ("x", "kernel", "recurrent_kernel", "bias")]
        outs = op(*args, mask=torch.from_numpy(mask), **extra)
        upstream = random_upstream(np.random.default_rng(1), cell, B, T, H)
        torch.autograd.backward(outs, [torch.from_numpy(u).to(dtype) for u in upstream])
        return outs, [a.grad for a in args]

    outs, grads = run(half, torch.bfloat16)
    for got, want in zip(outs, call(ref, wide, extra, mask=mask)):
        assert got.dtype == torch.bfloat16
        assert rel_err(got.detach().float().numpy(), want) < TOLERANCE["bfloat16"]
    _, expected = run(wide, torch.float64)
    for got, want in zip(grads, expected):
        assert got.dtype == torch.bfloat16
        assert rel_err(got.float().numpy(), want.numpy()) < TOLERANCE["bfloat16"]
