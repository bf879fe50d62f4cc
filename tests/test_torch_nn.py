"""maskrnn.torch.nn against torch.nn.LSTM/GRU itself: the same weights give the same outputs, states and
gradients (every parameter, the input, the initial states) on PackedSequences and padded batches; holes and
zero lengths against torch.nn run row by row on each row's real steps only."""

import pytest

torch = pytest.importorskip("torch")
from conftest import TOLERANCE  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import maskrnn.torch.nn as mnn  # noqa: E402

F64, F32 = torch.float64, torch.float32
# torch.nn.LSTM with proj_size says once that oneDNN cannot run it; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
CASES = [("lstm", 0), ("lstm", 2), ("gru", 0)]  # (cell, proj_size)


def rel(ours, ref):
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def pair(cell, proj, dtype=F64, **options):
    """A torch.nn module and ours holding its weights (loaded through the state dict)."""
    kw = dict(options, proj_size=proj) if proj else options
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(**kw).to(dtype)
    ours = (mnn.LSTM if cell == "lstm" else mnn.GRU)(**kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def initial_state(ref, B, dtype, gen):
    """Random hx for ref's shape (requires grad), or a pair for LSTM."""
    LD = ref.num_layers * (2 if ref.bidirectional else 1)
    h = torch.randn(LD, B, ref.proj_size or ref.hidden_size, dtype=dtype, generator=gen)
    if isinstance(ref, torch.nn.LSTM):
        return h.requires_grad_(), torch.randn(LD, B, ref.hidden_size, dtype=dtype, generator=gen).requires_grad_()
    return h.requires_grad_()


def leaves(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


def loss(out, hx, gen):
    """A random linear functional of every result (random upstream gradients, not ones)."""
    total = 0
    for t in [out, *leaves(hx)]:
        total = total + (t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum()
    return total


def grads(module, x, hx, value):
    return torch.autograd.grad(value, [*module.parameters(), x, *leaves(hx)], allow_unused=True)


def check(ours, ref, tol):
    for a, b in zip(ours, ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape
            assert rel(a, b) < tol


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell,proj", CASES)
def test_packed_parity(cell, proj, num_layers, bidirectional, bias, enforce_sorted):
    gen = torch.Generator().manual_seed(num_layers * 8 + bidirectional * 4 + bias * 2 + enforce_sorted)
    B, T, I, H = 5, 6, 3, 4
    ref, ours = pair(cell, proj, input_size=I, hidden_size=H, num_layers=num_layers, bias=bias,
                     bidirectional=bidirectional, batch_first=True)
    x = torch.randn(B, T, I, dtype=F64, generator=gen, requires_grad=True)
    lengths = torch.tensor([6, 4, 6, 1, 3])
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    hx = initial_state(ref, B, F64, gen)
    results = []
    for module in (ours, ref):
        out, h = module(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted), hx)
        value = loss(out.data, h, torch.Generator().manual_seed(1))
        results.append((out, h, grads(module, x, hx, value)))
    (out, h, g), (r_out, r_h, r_g) = results
    assert type(out) is type(r_out)
    assert torch.equal(out.batch_sizes, r_out.batch_sizes)
    for a, b in ((out.sorted_indices, r_out.sorted_indices), (out.unsorted_indices, r_out.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    check([out.data, *leaves(h), *g], [r_out.data, *leaves(r_h), *r_g], TOLERANCE["float64"])


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell,proj", CASES)
def test_padded_lengths_float32(cell, proj, num_layers, bidirectional, batch_first):
    """Padded input with lengths= (rows unsorted) equals torch.nn on the packed batch, in float32."""
    gen = torch.Generator().manual_seed(num_layers * 4 + bidirectional * 2 + batch_first)
    B, T, I, H = 7, 12, 6, 9
    ref, ours = pair(cell, proj, F32, input_size=I, hidden_size=H, num_layers=num_layers,
                     bidirectional=bidirectional, batch_first=batch_first)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[2] = T
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, generator=gen)
    real = (torch.arange(T)[None, :] < lengths[:, None])
    real = real if batch_first else real.t()
    x = x.masked_fill(~real[..., None], float("nan")).requires_grad_()  # padding is never read
    hx = initial_state(ref, B, F32, gen)
    out, h = ours(x, hx, lengths=lengths)
    packed = pack_padded_sequence(torch.where(real[..., None], x, 0), lengths, batch_first=batch_first,
                                  enforce_sorted=False)
    r_packed, r_h = ref(packed, hx)
    r_out = pad_packed_sequence(r_packed, batch_first=batch_first, total_length=T)[0]
    g = grads(ours, x, hx, loss(out, h, torch.Generator().manual_seed(2)))
    r_g = grads(ref, x, hx, loss(r_out, r_h, torch.Generator().manual_seed(2)))
    assert torch.isfinite(g[-len(leaves(hx)) - 1]).all()
    check([out, *leaves(h), *g], [r_out, *leaves(r_h), *r_g], TOLERANCE["float32"])


@pytest.mark.gpu
@pytest.mark.parametrize("cell,proj", CASES)
def test_cuda_matches_cpu_torch(cell, proj):
    """On a GPU: PackedSequence and CUDA lengths (no host copy here) against torch.nn on the CPU."""
    from conftest import cuda_skip_reason

    if not torch.cuda.is_available() or cuda_skip_reason():
        pytest.skip(cuda_skip_reason() or "torch sees no CUDA device")
    ref, ours = pair(cell, proj, F32, input_size=5, hidden_size=6, num_layers=2, bidirectional=True,
                     batch_first=True)
    ours.cuda()
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 2, 5, 0])
    out, h = ours(x.cuda(), lengths=lengths.cuda())
    real = torch.arange(7)[None, :] < lengths[:, None]
    r_out, r_h = rowwise_reference(ref, x, real, None)
    check([out.cpu(), *(s.cpu() for s in leaves(h))], [r_out, *leaves(r_h)], 1e-4)
    packed = pack_padded_sequence(x, lengths.clamp_min(1), batch_first=True, enforce_sorted=False)
    p_out, p_h = ours(packed.to("cuda"))
    r_packed, r_h = ref(packed)
    check([p_out.data.cpu(), *(s.cpu() for s in leaves(p_h))], [r_packed.data, *leaves(r_h)], 1e-4)


def rowwise_reference(ref, x, real, hx):
    """torch.nn run on each row's real steps alone (batch_first ref); zeros at the other steps, the initial
    state for a row with none. The semantics a masked batch must have, computed without maskrnn."""
    B, T, _ = x.shape
    LD = ref.num_layers * (2 if ref.bidirectional else 1)
    out = x.new_zeros(B, T, LD // ref.num_layers * (ref.proj_size or ref.hidden_size))
    finals = []
    if hx is None:
        hx = tuple(x.new_zeros(LD, B, n) for n in ((ref.proj_size or ref.hidden_size), ref.hidden_size))
        hx = hx if isinstance(ref, torch.nn.LSTM) else hx[0]
    for b in range(B):
        state = tuple(s[:, b:b + 1] for s in leaves(hx))
        idx = real[b].nonzero().squeeze(1)
        if len(idx) == 0:
            finals.append(state)
            continue
        o, s = ref(x[b:b + 1, idx], state if len(state) == 2 else state[0])
        out = out.index_put((torch.full_like(idx, b), idx), o[0])
        finals.append(tuple(leaves(s)))
    states = tuple(torch.cat(parts, 1) for parts in zip(*finals))
    return out, states if len(states) == 2 else states[0]


@pytest.mark.parametrize("steps", ["holes", "zero_lengths", "int_mask"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell,proj", CASES)
def test_masks_against_rowwise_torch(cell, proj, bidirectional, steps):
    gen = torch.Generator().manual_seed(bidirectional * 3 + len(steps))
    B, T, I, H = 6, 9, 4, 5
    ref, ours = pair(cell, proj, input_size=I, hidden_size=H, num_layers=2, bidirectional=bidirectional,
                     batch_first=True)
    if steps == "holes":
        real = torch.rand(B, T, generator=gen) > 0.35
        real[0], real[1] = False, True  # an all-masked row and a full one
        kw = dict(mask=real)
    else:
        lengths = torch.randint(0, T + 1, (B,), generator=gen)
        lengths[:2] = torch.tensor([0, T])
        real = torch.arange(T)[None, :] < lengths[:, None]
        kw = dict(lengths=lengths) if steps == "zero_lengths" else dict(mask=real.long())
    x = torch.randn(B, T, I, dtype=F64, generator=gen).masked_fill(~real[..., None], float("nan"))
    x.requires_grad_()
    hx = initial_state(ref, B, F64, gen)
    out, h = ours(x, hx, **kw)
    r_out, r_h = rowwise_reference(ref, torch.where(real[..., None], x, 0), real, hx)
    g = grads(ours, x, hx, loss(out, h, torch.Generator().manual_seed(3)))
    r_g = grads(ref, x, hx, loss(r_out, r_h, torch.Generator().manual_seed(3)))
    check([out, *leaves(h), *g], [r_out, *leaves(r_h), *r_g], TOLERANCE["float64"])


@pytest.mark.parametrize("cell,proj", CASES)
def test_state_dict_round_trip(cell, proj):
    kw = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, bias=True)
    ref, ours = pair(cell, proj, F32, **kw)
    assert isinstance(ours, type(ref))
    assert list(ours.state_dict()) == list(ref.state_dict())
    back = type(ref)(**dict(kw, proj_size=proj) if proj else kw)
    back.load_state_dict(ours.state_dict())  # ours -> torch, strict
    x = torch.randn(4, 7, 3)
    with torch.no_grad():
        out, r_out = ours(x)[0], back(x)[0]
    assert rel(out, r_out) < TOLERANCE["float32"]


@pytest.mark.parametrize("cell,proj", CASES)
def test_gradcheck(cell, proj):
    kw = dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True, batch_first=True)
    _, ours = pair(cell, proj, **kw)
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 2, dtype=F64, generator=gen, requires_grad=True)
    hx = initial_state(ours, 3, F64, gen)
    lengths = torch.tensor([4, 0, 2])

    def f(x, *rest):
        state = tuple(rest[:len(leaves(hx))])
        weights = dict(zip(names, rest[len(state):]))
        out, h = torch.func.functional_call(ours, weights, (x, state if len(state) == 2 else state[0]),
                                            dict(lengths=lengths))
        return out, *leaves(h)

    assert torch.autograd.gradcheck(f, (x, *leaves(hx), *params))


def test_dropout_between_layers():
    """In training, dropout hits each layer's output but the last, drawing as torch.nn does (same seed, same
    numbers on a full-length batch); in eval it is off."""
    ref, ours = pair("lstm", 0, input_size=3, hidden_size=4, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(6, 2, 3, dtype=F64)
    results = []
    for module in (ours, ref):
        torch.manual_seed(5)
        results.append(module(x)[0])
    assert rel(*results) < TOLERANCE["float64"]
    ours.eval()
    ref.eval()
    assert rel(ours(x)[0], ref(x)[0]) < TOLERANCE["float64"]
    ours.train()
    assert rel(ours(x)[0], ref(x)[0]) > 1e-3


def test_weight_updates():
    """In-place updates (optimizer steps) are seen by the next call; one between forward and backward is caught."""
    ref, ours = pair("gru", 0, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours(x)[0].sum().backward()
    for module in (ours, ref):
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(1.5)
    assert rel(ours(x)[0], ref(x)[0]) < TOLERANCE["float64"]
    out = ours(x)[0].sum()
    with torch.no_grad():
        ours.weight_hh_l1.add_(0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("cell,proj", CASES)
def test_unbatched_and_no_grad(cell, proj):
    ref, ours = pair(cell, proj, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, dtype=F64)
    hx = tuple(s[:, 0] for s in leaves(initial_state(ref, 1, F64, torch.Generator().manual_seed(6))))
    hx = hx if len(hx) == 2 else hx[0]
    with torch.no_grad():
        (out, h), (r_out, r_h) = ours(x, hx), ref(x, hx)
    check([out, *leaves(h)], [r_out, *leaves(r_h)], TOLERANCE["float64"])


def test_long_sequence():
    """More than 65,535 steps (cuDNN's limit) on a small problem, against torch.nn on the CPU."""
    ref, ours = pair("lstm", 0, F32, input_size=1, hidden_size=2, bidirectional=True)
    x = torch.randn(66_000, 2, 1)
    lengths = torch.tensor([66_000, 65_600])
    with torch.no_grad():
        out, (h, c) = ours(x, lengths=lengths)
        r_packed, (r_h, r_c) = ref(pack_padded_sequence(x, lengths))
    r_out = pad_packed_sequence(r_packed, total_length=66_000)[0]
    check([out, h, c], [r_out, r_h, r_c], 1e-4)  # float32 over 66k steps: rounding compounds


def test_errors():
    m = mnn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 6, 3)
    packed = pack_padded_sequence(x, torch.tensor([6, 3]), batch_first=True)
    with pytest.raises(ValueError, match="PackedSequence carries its own lengths"):
        m(packed, lengths=torch.tensor([6, 3]))
    with pytest.raises(TypeError, match="torch.Tensor or a PackedSequence"):
        m(x.numpy())
    with pytest.raises(TypeError, match="dtype torch.float64"):
        m(x.double())
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(2, 6, 1, 3))
    with pytest.raises(ValueError, match="time-major"):
        m(x.transpose(0, 1), lengths=torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="looks transposed"):
        m(x, mask=torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="time-major"):
        m(x.transpose(0, 1), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="either lengths= or mask="):
        m(x, lengths=torch.tensor([6, 3]), mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\]"):
        m(x, lengths=torch.tensor([7, 3]))
    with pytest.raises(TypeError, match="lengths must be an integer"):
        m(x, lengths=torch.tensor([6.0, 3.0]))
    with pytest.raises(TypeError, match="mask must be bool or integer"):
        m(x, mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="only 0 and 1"):
        m(x, mask=torch.full((2, 6), 2))
    with pytest.raises(TypeError, match="pair"):
        m(x, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(1, 2, 4\)"):
        m(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="unbatched"):
        m(x[0], lengths=torch.tensor([6]))
    with pytest.raises(ValueError, match="proj_size"):
        mnn.GRU(3, 4, proj_size=2)


def test_bench_rows():
    """The bench rows for the drop-in exist, one per implementation and pass, with ratios against ours."""
    from maskrnn import _bench_nn, bench

    rows = _bench_nn.stack_rows([(3, 5, 4, 6)], ["cpu"], 1, bench.measure)
    assert sorted((r["impl"], r["pass_"]) for r in rows) == sorted(
        (impl, p) for impl in _bench_nn.IMPLS for p in ("fwd", "fwd+bwd"))
    for r in rows:
        assert r["median_ms"] > 0 and r["cell"] == _bench_nn.CELL
        assert (r["ratio"] is None) == (r["impl"] == "maskrnn.torch.nn") and (r["ratio"] is None or r["ratio"] > 0)


def test_from_import_gives_the_drop_in():
    """`from maskrnn.torch import nn` in a fresh interpreter is this module, not torch.nn (a name `nn` bound in
    maskrnn/torch/__init__.py would shadow it and silently run torch's RNNs)."""
    import subprocess
    import sys

    code = "from maskrnn.torch import nn; import torch; assert nn.LSTM is not torch.nn.LSTM, nn.__name__"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__file__.rsplit("/tests/", 1)[0])
