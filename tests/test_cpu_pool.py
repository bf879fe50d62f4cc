"""The large arrays of a call on blocks reused between calls (maskrnn/_cpu/pool.py): every gradient identical to
the same call with the pool off, with pullbacks interleaved and held (a later call's blocks never alias a live
tape), through maskrnn.torch with retain_graph, shapes changing between calls, and calls on 1-3 threads at once;
the blocks are reused by the next call and the kept ones bounded. And dx's rows of finished steps gathered in
pieces (_scan.GATHER_BYTES)."""

import threading
import weakref

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream

from maskrnn._cpu import pool


@pytest.fixture
def pooled(monkeypatch):
    """Every array a driver asks the engine for (``empty``) from the pool, however small."""
    pool.clear()
    monkeypatch.setattr(pool, "MIN_BYTES", 0)
    yield
    pool.clear()


def _problem(rng, cell, B, T, dtype):
    p = make_problem(rng, cell, B, T, 5, 9, dtype)
    lengths = rng.integers(0, T + 1, B)
    mask = (np.arange(T)[None] < lengths[:, None]) & (rng.random((B, T)) > 0.2)  # holes, finished rows
    return p, mask, random_upstream(rng, cell, B, T, 9, dtype)


def _forward(cell, p, mask):
    _, vjp, _, extra = cell_fns(cell)
    q = dict(p)
    return vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), mask=mask, **extra)


def _grads(pullback, upstream):
    return [None if g is None else np.array(g) for g in pullback(*upstream)]


def _unpooled(monkeypatch, cell, p, mask, upstream):
    with monkeypatch.context() as m:
        m.setattr(pool, "MIN_BYTES", 1 << 62)
        return _grads(_forward(cell, p, mask)[1], upstream)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_pooled_gradients_equal_unpooled_with_interleaved_pullbacks(rng, monkeypatch, pooled, cell, dtype):
    """Two forwards, then their pullbacks in reverse order, then again at other shapes (B=1, T=1, a larger
    problem than the kept blocks): each gradient equals the unpooled one, and the outputs match the reference."""
    _, _, ref, extra = cell_fns(cell)
    for shapes in [((6, 7), (11, 4)), ((1, 1), (13, 9)), ((3, 12), (1, 5))]:
        problems = [_problem(rng, cell, B, T, dtype) for B, T in shapes]
        want = [_unpooled(monkeypatch, cell, *pr) for pr in problems]
        runs = [_forward(cell, p, mask) for p, mask, _ in problems]
        for (outs, pullback), (p, mask, upstream), w in reversed(list(zip(runs, problems, want))):
            _same(_grads(pullback, upstream), w)
            _same(_grads(pullback, upstream), w)  # a pullback called again
            q = dict(p)
            expect = ref(q.pop("x").astype(np.float64), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"),
                         mask=mask, **extra)
            np.testing.assert_allclose(outs[0], expect[0], rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pooled_gradients_equal_unpooled_on_threads_at_once(rng, monkeypatch, pooled, threads):
    problems = [_problem(rng, "gru", 8 + i, 6 + i, "float64") for i in range(threads)]
    want = [_unpooled(monkeypatch, "gru", *pr) for pr in problems]
    got, errors = [None] * threads, []

    def work(i):
        try:
            p, mask, upstream = problems[i]
            for _ in range(3):
                got[i] = _grads(_forward("gru", p, mask)[1], upstream)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for g, w in zip(got, want):
        _same(g, w)


def _recording(monkeypatch):
    """(data address, bytes, a weak reference to its base) of every array pool.take hands out from now on."""
    taken = []
    take = pool.take

    def record(shape, dtype):
        a = take(shape, dtype)
        if a.base is not None:  # not np.empty (_unpooled)
            taken.append((a.ctypes.data, a.nbytes, weakref.ref(a.base)))
        return a

    import maskrnn._cpu

    monkeypatch.setattr(maskrnn._cpu, "empty", record)
    return taken


def test_blocks_come_back_only_when_no_array_views_them(rng, monkeypatch, pooled):
    """A held pullback's tape shares no memory with later calls; once it is gone the same shapes run on the same
    blocks; the unused blocks kept stay within KEEP_BYTES."""
    taken = _recording(monkeypatch)
    p, mask, upstream = _problem(rng, "lstm", 8, 6, "float64")
    held = _forward("lstm", p, mask)[1]
    first = list(taken)
    for _ in range(2):
        _grads(_forward("lstm", p, mask)[1], upstream)
    live = [(a, n) for a, n, base in first if base() is not None]  # the tape (the rest was the call's own)
    later = taken[len(first):]
    assert live and later
    assert not any(a < b + m and b < a + n for a, n in live for b, m, _ in later)
    want = _unpooled(monkeypatch, "lstm", p, mask, upstream)
    _same(_grads(held, upstream), want)
    del held
    kept = pool.kept_bytes()
    assert kept > 0
    taken.clear()
    _grads(_forward("lstm", p, mask)[1], upstream)
    assert pool.kept_bytes() == kept and {a for a, *_ in taken} <= {a for a, *_ in first + later}
    monkeypatch.setattr(pool, "KEEP_BYTES", kept // 3)
    _grads(_forward("lstm", p, mask)[1], upstream)
    assert 0 < pool.kept_bytes() <= kept // 3


def test_torch_two_forwards_then_two_backwards(rng, pooled):
    """maskrnn.torch with retain_graph: two forwards of one module, their backwards in reverse order and one
    again; every gradient equals plain-torch autograd of the Keras rule (test_torch.keras_rnn)."""
    torch = pytest.importorskip("torch")
    from test_torch import keras_rnn, problem

    import maskrnn.torch as mt

    runs = []
    for B, T in [(5, 6), (5, 6), (3, 8)]:
        x, W, U, b, h0, c0, mask = problem(rng, "lstm", B, T, 3, 4, torch.float64, "holes")
        leaves = [x, W, U, b, h0, c0]
        out, h, c = mt.lstm(x, W, U, b, mask=mask, initial_state=(h0, c0))
        ref = keras_rnn("lstm", x, W, U, b, mask, h0, c0, False, False)
        ups = [torch.tensor(rng.standard_normal(v.shape)) for v in (out, h, c)]
        want = torch.autograd.grad(ref, leaves, ups)
        runs.append((out, h, c, ups, leaves, want))
    for out, h, c, ups, leaves, want in reversed(runs + runs[:1]):
        got = torch.autograd.grad((out, h, c), leaves, ups, retain_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("piece_rows", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_dx_of_finished_rows_gathered_in_pieces(rng, monkeypatch, cell, piece_rows):
    """_scan._backward_gemms gathers dgx's rows for dx's later steps GATHER_BYTES at a time: pieces of 1 and 3
    rows give the gradients of one piece, and dx matches central differences of the float64 reference."""
    from test_grad import finite_difference

    from maskrnn import _scan

    B, T = 7, 9
    p = make_problem(rng, cell, B, T, 5, 9, "float64")
    lengths = np.concatenate([[T, 0, 1], rng.integers(1, T, B - 3)])  # finished rows: dx's rows gathered
    mask = np.arange(T)[None] < lengths[:, None]
    upstream = random_upstream(rng, cell, B, T, 9)
    whole = _grads(_forward(cell, p, mask)[1], upstream)
    monkeypatch.setattr(_scan, "GATHER_BYTES", piece_rows * p["kernel"].shape[1] * 8)
    pieces = _grads(_forward(cell, p, mask)[1], upstream)
    for g, w in zip(pieces, whole):
        if w is not None:
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13)
    for b, t in [(0, T - 1), (3, int(lengths[3]) - 1), (B - 1, 0)]:
        want = finite_difference(cell, p, upstream, "x", (b, t, 2), mask=mask)
        assert abs(pieces[0][b, t, 2] - want) < 1e-6 * max(1.0, abs(want))
