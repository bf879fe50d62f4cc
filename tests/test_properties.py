"""Property-based suite (hypothesis) over every public entry point: maskrnn.lstm/gru and their _vjp,
maskrnn.torch.lstm/gru and its LSTM/GRU/Bidirectional modules, maskrnn.layers LSTM/GRU/Bidirectional. Random
valid argument combinations (T=1, B=0, I=0, masks and lengths, go_backwards, zero_output_for_mask, time_major,
no bias, full and partial initial states), forward against the float64 reference and gradients against the
reference's central differences along a random direction. Runs under the CUDA emulation too (.ci/run)."""

from dataclasses import dataclass

import numpy as np
import pytest
from cells import cell_fns

import maskrnn
from maskrnn import layers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = settings(max_examples=40, deadline=None)
STATE_NAMES = {"lstm": ("h0", "c0"), "gru": ("h0",), "gru_v1": ("h0",)}


@dataclass
class Case:
    cell: str
    B: int
    T: int
    I: int
    H: int
    steps: str  # "none", "lengths" or "mask"
    state: str  # "none", "full", or the one LSTM state given ("h0", "c0")
    bias: bool
    go_backwards: bool
    zero_output: bool
    time_major: bool
    seed: int


@st.composite
def cases(draw, cells=("lstm", "gru", "gru_v1")):
    cell = draw(st.sampled_from(cells))
    return Case(cell=cell, B=draw(st.integers(0, 4)), T=draw(st.integers(1, 6)), I=draw(st.integers(0, 3)),
                H=draw(st.integers(1, 5)), steps=draw(st.sampled_from(["none", "lengths", "mask"])),
                state=draw(st.sampled_from(["none", "full", "h0", "c0"] if cell == "lstm" else ["none", "full"])),
                bias=draw(st.booleans()), go_backwards=draw(st.booleans()), zero_output=draw(st.booleans()),
                time_major=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


class Problem:
    """One case's arrays (float64, caller's layout) and the reference loss <outputs, upstream>."""

    def __init__(self, c: Case):
        self.c = c
        rng = np.random.default_rng(c.seed)
        G = 4 if c.cell == "lstm" else 3
        self.G = G
        self.extra = {} if c.cell == "lstm" else {"reset_after": c.cell == "gru"}
        self.op, self.vjp, self.ref, _ = cell_fns(c.cell)
        x = rng.standard_normal((c.B, c.T, c.I))
        self.args = dict(x=x.transpose(1, 0, 2).copy() if c.time_major else x,
                         kernel=rng.standard_normal((c.I, G * c.H)) * 0.5,
                         recurrent_kernel=rng.standard_normal((c.H, G * c.H)) * 0.5,
                         bias=rng.standard_normal((2, 3 * c.H) if c.cell == "gru" else (G * c.H,)) * 0.3)
        if not c.bias:
            self.args["bias"] = None
        names = STATE_NAMES[c.cell]
        self.states = {n: rng.standard_normal((c.B, c.H)) * 0.5 if c.state in ("full", n) else None for n in names}
        lengths = rng.integers(0, c.T + 1, c.B)
        mask = rng.random((c.B, c.T)) > 0.3
        self.steps = {"none": {}, "lengths": {"lengths": lengths},
                      "mask": {"mask": mask.T.copy() if c.time_major else mask}}[c.steps]
        self.flags = dict(go_backwards=c.go_backwards, zero_output_for_mask=c.zero_output, time_major=c.time_major)
        out_shape = (c.T, c.B, c.H) if c.time_major else (c.B, c.T, c.H)
        self.ups = [rng.standard_normal(s) for s in [out_shape] + [(c.B, c.H)] * len(names)]
        self.rng = rng

    def initial_state(self, states):
        if self.c.cell == "lstm":
            return None if all(s is None for s in states.values()) else (states["h0"], states["c0"])
        return states["h0"]

    def reference(self, args=None, states=None, **flags):
        args, states = args or self.args, states or self.states
        zeros = np.zeros((self.c.B, self.c.H))
        full = {n: zeros if s is None else s for n, s in states.items()}
        kw = dict(self.flags, **flags)
        return self.ref(args["x"], args["kernel"], args["recurrent_kernel"], args["bias"], **self.steps,
                        initial_state=self.initial_state(full), **kw, **self.extra)

    def loss(self, args, states):
        return sum(float(np.sum(o * u)) for o, u in zip(self.reference(args, states), self.ups))

    def check_forward(self, outs, tol=1e-10, want=None):
        want = self.reference() if want is None else want
        assert len(outs) == len(want)
        for got, w in zip(outs, want):
            got = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
            assert got.shape == w.shape
            np.testing.assert_allclose(got, w, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(w), initial=0))))

    def check_grads(self, grads):
        """grads: name -> gradient for the arguments and states (a missing state means zeros was used)."""
        v = {k: self.rng.standard_normal(np.shape(g)) for k, g in grads.items()}
        eps = 1e-6

        def at(sign):
            args = {k: (a + sign * eps * v[k] if k in v and a is not None else a) for k, a in self.args.items()}
            states = {}
            for k, s in self.states.items():
                base = np.zeros((self.c.B, self.c.H)) if s is None else s
                states[k] = base + sign * eps * v[k] if k in v else s
            return self.loss(args, states)

        fd = (at(1) - at(-1)) / (2 * eps)
        analytic = sum(float(np.sum(np.asarray(g) * v[k])) for k, g in grads.items())
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd))


@EXAMPLES
@given(cases())
def test_numpy_ops(case):
    p = Problem(case)
    a = p.args
    kw = dict(**p.steps, initial_state=p.initial_state(p.states), **p.flags, **p.extra)
    p.check_forward(p.op(a["x"], a["kernel"], a["recurrent_kernel"], a["bias"], **kw))
    outs, pullback = p.vjp(a["x"], a["kernel"], a["recurrent_kernel"], a["bias"], **kw)
    p.check_forward(outs)
    g = pullback(*p.ups)._asdict()
    if a["bias"] is None:
        assert g.pop("bias") is None
    p.check_grads(g)  # h0/c0 gradients also for states left None (the zeros used)
    x32 = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    s32 = {k: None if v is None else v.astype(np.float32) for k, v in p.states.items()}
    outs32 = p.op(x32["x"], x32["kernel"], x32["recurrent_kernel"], x32["bias"], **dict(
        kw, initial_state=p.initial_state(s32)))
    assert all(o.dtype == np.float32 for o in outs32)
    p.check_forward(outs32, tol=1e-5)


@EXAMPLES
@given(cases())
def test_torch_functional(case):
    torch = pytest.importorskip("torch")
    import maskrnn.torch as mt

    p = Problem(case)
    leaves = {k: None if v is None else torch.tensor(v, requires_grad=True)
              for k, v in dict(p.args, **p.states).items()}
    fn = mt.lstm if case.cell == "lstm" else mt.gru
    steps = {k: torch.from_numpy(v) for k, v in p.steps.items()}
    states = {k: leaves[k] for k in p.states}
    outs = fn(leaves["x"], leaves["kernel"], leaves["recurrent_kernel"], leaves["bias"], **steps,
              initial_state=p.initial_state(states), **p.flags, **p.extra)
    p.check_forward(outs)
    given_ = {k: t for k, t in leaves.items() if t is not None}
    loss = sum((o * torch.from_numpy(u)).sum() for o, u in zip(outs, p.ups))
    grads = torch.autograd.grad(loss, list(given_.values()), allow_unused=True)
    p.check_grads({k: (torch.zeros_like(t) if g is None else g).numpy() for (k, t), g in zip(given_.items(), grads)})


def _module_reference(p, bidirectional, return_sequences):
    """What a (Bidirectional) module returns, from the reference: outputs or the last one, then the states."""
    tm = p.c.time_major

    def last(o):
        return o if return_sequences else (o[-1] if tm else o[:, -1])

    if not bidirectional:
        out, *states = p.reference()
        return [last(out), *states]
    fwd_out, *f_states = p.reference(go_backwards=False, zero_output_for_mask=return_sequences)
    bwd_out, *b_states = p.reference(go_backwards=True, zero_output_for_mask=return_sequences)
    if return_sequences:
        bwd_out = np.flip(bwd_out, axis=0 if tm else 1)
    return [np.concatenate([last(fwd_out), last(bwd_out)], axis=-1), *f_states, *b_states]


@EXAMPLES
@given(cases(cells=("lstm", "gru", "gru_v1")), st.booleans(), st.booleans())
def test_torch_modules(case, bidirectional, return_sequences):
    torch = pytest.importorskip("torch")
    import maskrnn.torch as mt

    p = Problem(case)
    if bidirectional:  # both directions share one set of weights here, so one reference serves both
        p.flags["go_backwards"] = False
    kind = mt.LSTM if case.cell == "lstm" else mt.GRU
    extra = {} if case.cell == "lstm" else {"reset_after": case.cell == "gru"}
    layer = kind(case.I, case.H, use_bias=case.bias, return_sequences=return_sequences, return_state=True,
                 time_major=case.time_major, go_backwards=p.flags["go_backwards"],
                 zero_output_for_mask=case.zero_output, dtype=torch.float64, **extra)
    layer.load_keras_weights(p.args["kernel"], p.args["recurrent_kernel"], p.args["bias"])
    module = layer
    if bidirectional:
        twin = kind(**dict(layer.config, go_backwards=True))
        twin.load_keras_weights(p.args["kernel"], p.args["recurrent_kernel"], p.args["bias"])
        module = mt.Bidirectional(layer, backward_layer=twin)
    else:
        p.flags["zero_output_for_mask"] = case.zero_output
    x = torch.tensor(p.args["x"], requires_grad=True)
    steps = {k: torch.from_numpy(v) for k, v in p.steps.items()}
    states = [None if s is None else torch.tensor(s) for s in p.states.values()]
    if case.state == "none":
        initial_state = None
    elif bidirectional:  # the same initial state for both directions, as the reference
        initial_state = states * 2
    else:
        initial_state = states if case.cell == "lstm" else states[0]
    outs = module(x, **steps, initial_state=initial_state)
    want = _module_reference(p, bidirectional, return_sequences)
    p.check_forward(outs, want=want)
    ups = [np.random.default_rng(case.seed + 1).standard_normal(w.shape) for w in want]
    (dx,) = torch.autograd.grad(sum((o * torch.from_numpy(u)).sum() for o, u in zip(outs, ups)), [x])
    v = p.rng.standard_normal(x.shape)
    eps = 1e-6

    def loss(sign):
        q = Problem(case)
        q.flags = p.flags
        q.args = dict(p.args, x=p.args["x"] + sign * eps * v)
        return sum(float(np.sum(o * u)) for o, u in zip(_module_reference(q, bidirectional, return_sequences), ups))

    fd = (loss(1) - loss(-1)) / (2 * eps)
    assert abs(fd - float(np.sum(dx.numpy() * v))) <= 1e-6 * max(1.0, abs(fd))


@EXAMPLES
@given(cases(), st.booleans(), st.booleans())
def test_keras_layers(case, bidirectional, return_sequences):
    if case.steps == "lengths":  # the layers take masks only
        case.steps = "mask"
    case.time_major = False  # as Keras: batch-major only
    p = Problem(case)
    if bidirectional:
        p.flags["go_backwards"] = False
    kind = layers.LSTM if case.cell == "lstm" else layers.GRU
    extra = {} if case.cell == "lstm" else {"reset_after": case.cell == "gru"}
    layer = kind(case.H, use_bias=case.bias, return_sequences=return_sequences, return_state=True,
                 go_backwards=p.flags["go_backwards"], zero_output_for_mask=case.zero_output, dtype="float64",
                 **extra)
    weights = [w for w in (p.args["kernel"], p.args["recurrent_kernel"], p.args["bias"]) if w is not None]
    module = layers.Bidirectional(layer) if bidirectional else layer
    module.build(p.args["x"].shape)
    module.set_weights(weights * (2 if bidirectional else 1))
    mask = p.steps.get("mask")
    states = [s for s in p.states.values() if s is not None] if case.state == "full" else None
    if states is not None:
        p.states = dict(p.states)
        if bidirectional:
            states = states * 2  # the same initial state for both directions, as the reference
    outs = module(p.args["x"], mask=mask, initial_state=states) if states else module(p.args["x"], mask=mask)
    if states is None:
        p.states = {k: None for k in p.states}
    if not bidirectional:
        p.flags["zero_output_for_mask"] = case.zero_output
    p.check_forward(list(outs), want=_module_reference(p, bidirectional, return_sequences))
    if return_sequences and mask is not None:
        got_mask = maskrnn.get_mask(outs[0])
        want_mask = mask[:, ::-1] if (case.go_backwards and not bidirectional) else mask
        np.testing.assert_array_equal(got_mask, want_mask)

