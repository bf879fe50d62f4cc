"""JAX integration: ``lstm``/``gru`` as ``jax.custom_vjp`` functions over maskrnn's CPU engine.

The scans run on the host through ``jax.pure_callback``, so they work eagerly and under ``jax.jit`` (Keras's
JAX trainer jit-compiles its train step). Signatures and semantics are those of ``maskrnn.lstm`` /
``maskrnn.gru`` (SPEC.md sections 2-3), Keras weight layout; differentiable in x, the weights and the initial
state; ``mask``/``lengths`` carry no gradient.

The forward under differentiation keeps the engine's tape (gate activations, states) on the host, in a table
keyed by a token that travels to the backward as the residual; the backward pops it. Every forward JAX runs
under ``jax.grad``/``value_and_grad`` is followed by its backward, so the table stays empty between steps; a
forward whose backward never runs (``jax.vjp`` without calling the pullback, rematerialisation) leaves its
tape there until ``clear_tapes()``.

CPU only: JAX arrays on a GPU would go through the host here, so ``maskrnn.keras`` falls back to Keras's own
loop on a JAX GPU backend (an XLA FFI target for the CUDA kernels is not written yet).
"""

import functools
import itertools
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

import maskrnn

_tapes = {}
_tokens = itertools.count(1)
_lock = threading.Lock()


def clear_tapes():
    """Drop the tapes of forwards whose backward never ran (see the module docstring); returns how many."""
    with _lock:
        n = len(_tapes)
        _tapes.clear()
    return n


def _keep(pullback):
    with _lock:
        token = next(_tokens) % 2**31
        _tapes[token] = pullback
    return np.int32(token)


def _take(token):
    with _lock:
        pullback = _tapes.pop(int(token), None)
    if pullback is None:
        raise RuntimeError("maskrnn.jax: the forward tape for this backward is gone (was clear_tapes() called "
                           "between the forward and the backward?)")
    return pullback


@functools.cache
def _op(cell, names, options):
    """The custom_vjp function for one cell, one set of present arguments (names) and static options."""
    options = dict(options)
    forward, forward_vjp = (maskrnn.lstm, maskrnn.lstm_vjp) if cell == "lstm" else (maskrnn.gru, maskrnn.gru_vjp)
    steps = {"mask", "lengths"}
    diff = [i for i, n in enumerate(names) if n not in steps]

    def engine(fn, arrays):
        a = dict(zip(names, arrays))
        state = None
        if "h0" in a:
            state = (a["h0"], a["c0"]) if cell == "lstm" else a["h0"]
        return fn(a["x"], a["kernel"], a["recurrent_kernel"], a.get("bias"), mask=a.get("mask"),
                  lengths=a.get("lengths"), initial_state=state, **options)

    def result_shapes(args):
        x, U = args[0], args[2]
        B, T = (x.shape[1], x.shape[0]) if options["time_major"] else x.shape[:2]
        H = U.shape[0]
        seq = (T, B, H) if options["time_major"] else (B, T, H)
        states = 2 if cell == "lstm" else 1
        return (jax.ShapeDtypeStruct(seq, x.dtype),) + (jax.ShapeDtypeStruct((B, H), x.dtype),) * states

    def host_fwd(*arrays):
        results, pullback = engine(forward_vjp, arrays)
        return (*results, _keep(pullback))

    def host_bwd(wanted, given, token, *cotangents):
        """wanted: the indices (into names) whose gradients go back; given: which outputs have a cotangent."""
        present = iter(cotangents)
        cotangents = [next(present) if g else None for g in given]  # None: zero, the engine's own default
        grads = _take(token)(*cotangents, need_x=names.index("x") in wanted)._asdict()  # fields named as names
        return tuple(grads[names[i]] for i in wanted)

    @jax.custom_vjp
    def op(*args):
        return jax.pure_callback(lambda *a: engine(forward, a), result_shapes(args), *args)

    def op_fwd(*primals):
        # symbolic_zeros: each primal says whether it is differentiated (Keras's data inputs are not; their
        # gradient GEMM is skipped). The residual keeps only those: its structure tells op_bwd which.
        args = tuple(p.value for p in primals)
        token_shape = jax.ShapeDtypeStruct((), jnp.int32)
        *results, token = jax.pure_callback(host_fwd, result_shapes(args) + (token_shape,), *args)
        return tuple(results), (token, tuple(a if i in diff and p.perturbed else None
                                             for i, (a, p) in enumerate(zip(args, primals))))

    def op_bwd(residuals, cotangents):
        token, args = residuals
        wanted = tuple(i for i, a in enumerate(args) if a is not None)
        given = tuple(not isinstance(c, SymbolicZero) for c in cotangents)
        shapes = tuple(jax.ShapeDtypeStruct(args[i].shape, args[i].dtype) for i in wanted)
        callback = functools.partial(host_bwd, wanted, given)
        grads = dict(zip(wanted, jax.pure_callback(callback, shapes, token, *(c for c, g in zip(cotangents, given)
                                                                              if g))))
        return tuple(grads.get(i) for i in range(len(names)))

    op.defvjp(op_fwd, op_bwd, symbolic_zeros=True)
    return op


def _call(cell, x, kernel, recurrent_kernel, bias, states, mask, lengths, options):
    named = [("x", x), ("kernel", kernel), ("recurrent_kernel", recurrent_kernel), ("bias", bias)]
    named += list(zip(("h0", "c0"), states)) if states is not None else []
    named += [("mask", mask), ("lengths", lengths)]
    named = [(n, jnp.asarray(a)) for n, a in named if a is not None]
    names = tuple(n for n, _ in named)
    return _op(cell, names, tuple(sorted(options.items())))(*(a for _, a in named))


def lstm(x, kernel, recurrent_kernel, bias=None, *, mask=None, lengths=None, initial_state=None,
         go_backwards=False, zero_output_for_mask=False, time_major=False):
    """maskrnn.lstm on JAX arrays, differentiable in x, kernel, recurrent_kernel, bias and initial_state
    (h0, c0). Returns (outputs (B,T,H), h_T (B,H), c_T (B,H))."""
    options = dict(go_backwards=bool(go_backwards), zero_output_for_mask=bool(zero_output_for_mask),
                   time_major=bool(time_major))
    return _call("lstm", x, kernel, recurrent_kernel, bias, initial_state, mask, lengths, options)


def gru(x, kernel, recurrent_kernel, bias=None, *, reset_after=True, mask=None, lengths=None, initial_state=None,
        go_backwards=False, zero_output_for_mask=False, time_major=False):
    """maskrnn.gru on JAX arrays, differentiable in x, kernel, recurrent_kernel, bias and initial_state h0.
    Returns (outputs (B,T,H), h_T (B,H))."""
    if isinstance(initial_state, (list, tuple)):
        (initial_state,) = initial_state
    options = dict(reset_after=bool(reset_after), go_backwards=bool(go_backwards),
                   zero_output_for_mask=bool(zero_output_for_mask), time_major=bool(time_major))
    states = None if initial_state is None else (initial_state,)
    return _call("gru", x, kernel, recurrent_kernel, bias, states, mask, lengths, options)
