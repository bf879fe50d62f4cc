"""maskrnn.torch.nn against torch.nn.LSTM/GRU itself: the same weights give the same outputs, states and
gradients (every parameter, the input, the initial states) on PackedSequences and padded batches; holes and
zero lengths against torch.nn run row by row on each row's real steps only."""

import pytest

torch = pytest.importorskip("torch")
from conftest import TOLERANCE  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import maskrnn.torch.nn as mnn  # noqa: E402

F64, F32 = torch.float64, torch.float32
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


def rowwise_reference(ref, x, real, hx):
    """torch.nn run on each row's real steps alone (batch_first ref); zeros at the other steps, the initial
    state for a row with none. The semantics a masked batch must have, computed without maskrnn."""
    B, T, _ = x.shape
    LD = ref.num_layers * (2 if ref.bidirectional else 1)
    out = x.new_zeros(B, T, LD // ref.num_layers * (ref.proj_size or ref.hidden_size))
    finals = []
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
