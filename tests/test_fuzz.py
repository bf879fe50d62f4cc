"""Random shapes, masks and flags (hypothesis) against the float64 reference: forward outputs and states,
and the pullback against the reference's finite differences along a random direction."""

import numpy as np
import pytest
from cells import cell_fns, make_problem
from conftest import rel_err

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def problems(draw):
    B, T = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    I, H = draw(st.integers(1, 4)), draw(st.integers(1, 9))
    bits = draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))
    return dict(
        cell=draw(st.sampled_from(["lstm", "gru", "gru_v1"])), shape=(B, T, I, H),
        mask=np.array(bits).reshape(B, T), go_backwards=draw(st.booleans()), zero_output=draw(st.booleans()),
        initial_state=draw(st.booleans()), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31)),
    )


def _call(fn, extra, p, **kw):
    q = dict(p)
    return fn(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias", None), **q, **kw, **extra)


@settings(max_examples=120, deadline=None)
@given(problems())
def test_random_problems_match_reference(case):
    rng = np.random.default_rng(case["seed"])
    op, vjp, ref, extra = cell_fns(case["cell"])
    p = make_problem(rng, case["cell"], *case["shape"], bias=case["bias"], initial_state=case["initial_state"])
    kw = dict(mask=case["mask"], go_backwards=case["go_backwards"], zero_output_for_mask=case["zero_output"])
    want = _call(ref, extra, p, **kw)
    outs, pullback = _call(vjp, extra, p, **kw)
    for got, w in zip(outs, want):
        assert rel_err(got, w) < 1e-10
    # Directional derivative: <grad, v> equals (f(p + eps v) - f(p - eps v)) / 2 eps for the loss <outs, u>.
    ups = [rng.standard_normal(np.shape(o)) for o in outs]
    grads = pullback(*ups)
    v = {k: rng.standard_normal(np.shape(p[k])) for k in ("x", "kernel", "recurrent_kernel")}
    eps = 1e-6

    def loss(sign):
        q = dict(p, **{k: p[k] + sign * eps * v[k] for k in v})
        return sum(float(np.sum(o * u)) for o, u in zip(_call(ref, extra, q, **kw), ups))

    fd = (loss(1) - loss(-1)) / (2 * eps)
    analytic = sum(float(np.sum(getattr(grads, k) * v[k])) for k in v)
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd))
