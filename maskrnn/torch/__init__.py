"""PyTorch integration: ``lstm``/``gru`` as autograd Functions over maskrnn's engines, and Keras-style modules.

CPU tensors run the Numba engine on NumPy views of the tensors' memory; CUDA tensors run the CUDA engine on
CuPy views (DLPack), on torch's current stream. Nothing is copied between devices. Signatures and semantics
are those of ``maskrnn.lstm`` / ``maskrnn.gru`` (SPEC.md sections 2-3); the Keras weight layout is used.
"""

import contextlib
import math

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

import maskrnn

from .. import _validate, convert

# CUDA tensors of these dtypes are wrapped by pointer (_cuda_view); others (bfloat16) go through DLPack.
_CUPY_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bool: "bool",
                torch.uint8: "uint8", torch.int8: "int8", torch.int32: "int32", torch.int64: "int64"}


def _view(t):
    """Tensor -> NumPy (CPU) or CuPy (CUDA) array sharing its memory; None stays None."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    if t.is_cuda:
        return _cuda_view(t)
    return t.numpy()


def _cuda_view(t):
    """A CuPy array on a CUDA tensor's memory, holding the tensor. cupy.from_dlpack makes the same array for
    18-28 us of host time a tensor (measured on the H100 machine: bench/results/gpu-H100-20261127), four or more
    a call. No stream handshake is needed: maskrnn's GPU work runs on the tensor's current stream (_stream)."""
    import cupy

    dtype = _CUPY_DTYPES.get(t.dtype)
    if dtype is None or t.numel() == 0:
        return cupy.from_dlpack(t)
    item = t.element_size()
    extent = (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * item  # bytes from data_ptr to the end
    memory = cupy.cuda.UnownedMemory(t.data_ptr(), extent, t, t.device.index)
    return cupy.ndarray(tuple(t.shape), dtype, cupy.cuda.MemoryPointer(memory, 0),
                        tuple(s * item for s in t.stride()))


def _tensor(a):
    if a is None:
        return None
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


_streams = {}  # (torch stream handle, device) -> CuPy's handle on it, made once (~9 us each time); torch pools
# its streams, so a few handles come back: the cache is emptied if it ever holds more than 64


def _stream(x):
    """CuPy's handle on torch's current stream of x's device: maskrnn's GPU work runs there, in order with torch's."""
    if not x.is_cuda:
        return contextlib.nullcontext()
    stream = torch.cuda.current_stream(x.device)
    key = (stream.cuda_stream, x.device.index)
    if key not in _streams:
        import cupy

        if len(_streams) >= 64:
            _streams.clear()
        if hasattr(cupy.cuda.Stream, "from_external"):  # CuPy 14 deprecates ExternalStream for the stream protocol
            _streams[key] = cupy.cuda.Stream.from_external(stream)
        else:
            _streams[key] = cupy.cuda.ExternalStream(*key)
    return _streams[key]


def _check(op, named):
    """Refuses, with the argument's name, what would otherwise fail deep inside or give wrong results."""
    if isinstance(named["x"], PackedSequence):
        raise TypeError(f"maskrnn.torch.{op}: x is a PackedSequence; pass the padded tensor with lengths= or mask= "
                        "(torch.nn.utils.rnn.pad_packed_sequence gives both), or use maskrnn.torch.nn, whose "
                        "modules take PackedSequences")
    if not isinstance(named["x"], torch.Tensor):
        raise TypeError(f"maskrnn.torch.{op}: x must be a torch.Tensor, got {type(named['x']).__name__} "
                        f"(maskrnn.{op} takes NumPy/CuPy arrays)")
    if torch.jit.is_tracing():
        # The engines run outside torch: a trace would record their outputs as constants.
        raise RuntimeError(f"maskrnn.torch.{op} cannot be traced with torch.jit.trace (the trace would hold the "
                           "outputs as constants); run it eagerly or with torch.compile")
    compiling = torch.compiler.is_compiling()  # dynamo cannot trace the functorch query (and needs no check)
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            continue
        if not compiling and torch._C._functorch.is_functorch_wrapped_tensor(t):
            raise RuntimeError(f"maskrnn.torch.{op} does not support torch.func transforms (vmap, grad, jacrev, "
                               f"...): {name} is a transformed tensor; batch the inputs instead of vmap, and use "
                               "torch.autograd for gradients")
        if t.device.type != "cpu" or not t.is_floating_point():
            continue
        # The dispatcher's list (one definition), compared by name: NumPy has no bfloat16 of its own.
        cpu_dtypes = {f"torch.{d.name}" for d in _validate.CPU_DTYPES}
        if str(t.dtype) not in cpu_dtypes:
            hint = (" (torch.autocast is on: run this layer under torch.autocast('cpu', enabled=False) on "
                    "float32 inputs)" if torch.is_autocast_enabled("cpu") else "")
            raise TypeError(f"maskrnn.torch.{op}: {name} has dtype {t.dtype}; on the CPU maskrnn computes in "
                            f"torch.float32 or torch.float64 (float16/bfloat16 run on CUDA){hint}")


def _first_order_only():
    # Autograd runs backward with grad mode on exactly when create_graph=True: a graph through this backward
    # would be missing (it is a fused kernel, not torch ops), and second-order terms would be silently zero.
    if torch.is_grad_enabled():
        raise RuntimeError("maskrnn.torch: second-order gradients (backward with create_graph=True) are not "
                           "supported: maskrnn's backward is a fused kernel, not differentiable itself")


def _steps(options):
    """mask / lengths tensors -> engine arrays (they carry no gradient)."""
    opts = dict(options)
    for k in ("mask", "lengths"):
        opts[k] = _view(opts.get(k))
    return opts


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, recurrent_kernel, bias, h0, c0, options):
        # Saved so that torch's version counter refuses an in-place update of the weights between forward and
        # backward, as torch's own ops do (the pullback itself holds copies taken at forward).
        ctx.save_for_backward(kernel, recurrent_kernel)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the engine makes no copy of it
        with _stream(x):
            (out, h, c), ctx.pullback = maskrnn.lstm_vjp(_view(x), _view(kernel), _view(recurrent_kernel),
                                                         _view(bias), initial_state=(_view(h0), _view(c0)),
                                                         **_steps(options))
            return _tensor(out), _tensor(h), _tensor(c)

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        _first_order_only()
        kernel, _ = ctx.saved_tensors  # raises if the weights were modified in place since forward
        need = ctx.needs_input_grad
        with _stream(kernel):  # not d_out's: unused outputs' gradients are None
            g = ctx.pullback(_view(d_out), _view(d_h), _view(d_c), need_x=need[0])
            return (_tensor(g.x), _tensor(g.kernel), _tensor(g.recurrent_kernel), _tensor(g.bias),
                    _tensor(g.h0) if need[4] else None, _tensor(g.c0) if need[5] else None, None)


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, recurrent_kernel, bias, h0, options):
        ctx.save_for_backward(kernel, recurrent_kernel)  # see _LSTM.forward
        ctx.set_materialize_grads(False)
        with _stream(x):
            (out, h), ctx.pullback = maskrnn.gru_vjp(_view(x), _view(kernel), _view(recurrent_kernel), _view(bias),
                                                     initial_state=_view(h0), **_steps(options))
            return _tensor(out), _tensor(h)

    @staticmethod
    def backward(ctx, d_out, d_h):
        _first_order_only()
        kernel, _ = ctx.saved_tensors  # see _LSTM.backward
        with _stream(kernel):
            g = ctx.pullback(_view(d_out), _view(d_h), need_x=ctx.needs_input_grad[0])
            h0 = _tensor(g.h0) if ctx.needs_input_grad[4] else None
            return _tensor(g.x), _tensor(g.kernel), _tensor(g.recurrent_kernel), _tensor(g.bias), h0, None


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def lstm(x, kernel, recurrent_kernel, bias=None, *, mask=None, lengths=None, initial_state=None,
         go_backwards=False, zero_output_for_mask=False, time_major=False):
    """maskrnn.lstm on tensors, differentiable in x, kernel, recurrent_kernel, bias and initial_state (h0, c0)
    (either may be None: zeros). Returns (outputs (B,T,H), h_T (B,H), c_T (B,H))."""
    options = dict(mask=mask, lengths=lengths, go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask,
                   time_major=time_major)
    if initial_state is None:
        initial_state = (None, None)
    if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2:
        raise ValueError("initial_state for lstm must be a pair (h0, c0) of (B, units) tensors (or None)")
    h0, c0 = initial_state
    _check("lstm", dict(x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, h0=h0, c0=c0))
    if _needs_grad(x, kernel, recurrent_kernel, bias, h0, c0):
        return _LSTM.apply(x, kernel, recurrent_kernel, bias, h0, c0, options)
    with _stream(x):
        res = maskrnn.lstm(_view(x), _view(kernel), _view(recurrent_kernel), _view(bias),
                           initial_state=(_view(h0), _view(c0)), **_steps(options))
        return tuple(_tensor(r) for r in res)


def gru(x, kernel, recurrent_kernel, bias=None, *, reset_after=True, mask=None, lengths=None, initial_state=None,
        go_backwards=False, zero_output_for_mask=False, time_major=False):
    """maskrnn.gru on tensors, differentiable in x, kernel, recurrent_kernel, bias and initial_state h0.
    Returns (outputs (B,T,H), h_T (B,H))."""
    options = dict(reset_after=reset_after, mask=mask, lengths=lengths, go_backwards=go_backwards,
                   zero_output_for_mask=zero_output_for_mask, time_major=time_major)
    if isinstance(initial_state, (list, tuple)):
        if len(initial_state) != 1:
            raise ValueError("initial_state for gru must be h0, a (B, units) tensor, or [h0]; "
                             f"got {len(initial_state)} tensors")
        (initial_state,) = initial_state
    _check("gru", dict(x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, h0=initial_state))
    if _needs_grad(x, kernel, recurrent_kernel, bias, initial_state):
        return _GRU.apply(x, kernel, recurrent_kernel, bias, initial_state, options)
    with _stream(x):
        res = maskrnn.gru(_view(x), _view(kernel), _view(recurrent_kernel), _view(bias),
                          initial_state=_view(initial_state), **_steps(options))
        return tuple(_tensor(r) for r in res)


def _glorot_uniform(shape):
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return torch.empty(shape).uniform_(-limit, limit)


def _orthogonal(shape):
    return torch.nn.init.orthogonal_(torch.empty(shape))


def _count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _Recurrent(torch.nn.Module):
    """Keras-layer options shared by LSTM and GRU; parameters in the Keras layout. time_major: x is (T,B,I)
    (and a mask (T,B)) instead of (B,T,I)."""

    GATES = N_STATES = 0

    def __init__(self, input_size, units, *, return_sequences=False, return_state=False, go_backwards=False,
                 zero_output_for_mask=False, use_bias=True, time_major=False, dtype=torch.float32, device=None):
        super().__init__()
        input_size, units = _count(input_size, "input_size", 0), _count(units, "units", 1)
        self.config = dict(input_size=input_size, units=units, return_sequences=return_sequences,
                           return_state=return_state, go_backwards=go_backwards,
                           zero_output_for_mask=zero_output_for_mask, use_bias=use_bias, time_major=time_major,
                           dtype=dtype, device=device)
        self.input_size, self.units = input_size, units
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards, self.zero_output_for_mask = go_backwards, zero_output_for_mask
        self.time_major = time_major
        G = self.GATES * units
        self.kernel = torch.nn.Parameter(_glorot_uniform((input_size, G)).to(dtype=dtype, device=device))
        self.recurrent_kernel = torch.nn.Parameter(_orthogonal((units, G)).to(dtype=dtype, device=device))
        self.bias = torch.nn.Parameter(self._initial_bias().to(dtype=dtype, device=device)) if use_bias else None

    def _options(self):
        return dict(go_backwards=self.go_backwards, zero_output_for_mask=self.zero_output_for_mask,
                    time_major=self.time_major)

    def _finish(self, out, *states):
        y = out if self.return_sequences else (out[-1] if self.time_major else out[:, -1])
        return (y, *states) if self.return_state else y

    @classmethod
    def from_torch(cls, module, reverse=None, **options):
        """Same weights as a single-layer torch.nn.LSTM / GRU, and its layout: time_major unless the module is
        batch_first (an explicit time_major= overrides). A bidirectional module needs reverse=False or True
        to pick a direction (or Bidirectional.from_torch)."""
        if getattr(module, "bidirectional", False) and reverse is None:
            raise ValueError(f"{cls.__name__}.from_torch: module is bidirectional; use "
                             "maskrnn.torch.Bidirectional.from_torch(module), or reverse=False/True for one direction")
        if not options.get("reset_after", True):
            raise ValueError("from_torch: torch.nn.GRU is Keras's reset_after=True GRU; reset_after=False cannot "
                             "hold its weights")
        kernel, recurrent_kernel, bias = cls._from_torch_weights(module, bool(reverse))
        options.setdefault("time_major", not getattr(module, "batch_first", False))
        layer = cls(module.input_size, module.hidden_size, use_bias=bias is not None,
                    dtype=module.weight_ih_l0.dtype, device=module.weight_ih_l0.device, **options)
        return layer.load_keras_weights(kernel, recurrent_kernel, bias)

    def load_keras_weights(self, kernel, recurrent_kernel, bias=None):
        """Copies Keras-layout weights (arrays or tensors) into the parameters; shapes must match exactly."""
        values = dict(kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias)
        for name, value in values.items():
            param = getattr(self, name)
            if value is None or param is None:
                if value is not param:
                    got = "None" if value is None else f"shape {tuple(np.shape(value))}"
                    want = "None (use_bias=False)" if param is None else f"shape {tuple(param.shape)}"
                    raise ValueError(f"{name} must be {want}, got {got}")
                continue
            values[name] = value = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor)
                                                   else np.asarray(value))
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name} must have shape {tuple(param.shape)}, got {tuple(value.shape)}")
        with torch.no_grad():
            for name, value in values.items():
                if value is not None:
                    getattr(self, name).copy_(value)
        return self


class LSTM(_Recurrent):
    """Keras LSTM as an nn.Module: forward(x (B,T,I) ((T,B,I) with time_major), mask=None, initial_state=None,
    lengths=None) returns outputs (return_sequences) or the last output, plus (h, c) with return_state."""

    GATES, N_STATES = 4, 2
    _from_torch_weights = staticmethod(convert.lstm_weights_from_torch)

    def __init__(self, input_size, units, *, unit_forget_bias=True, **options):
        self.unit_forget_bias = unit_forget_bias
        super().__init__(input_size, units, **options)
        self.config["unit_forget_bias"] = unit_forget_bias

    def _initial_bias(self):
        b = torch.zeros(4 * self.units)
        if self.unit_forget_bias:
            b[self.units: 2 * self.units] = 1.0
        return b

    def forward(self, x, mask=None, initial_state=None, lengths=None):
        out, h, c = lstm(x, self.kernel, self.recurrent_kernel, self.bias, mask=mask, lengths=lengths,
                         initial_state=initial_state, **self._options())
        return self._finish(out, h, c)


class GRU(_Recurrent):
    """Keras GRU as an nn.Module (reset_after=True by default, as Keras 3 and torch.nn.GRU)."""

    GATES, N_STATES = 3, 1
    _from_torch_weights = staticmethod(convert.gru_weights_from_torch)

    def __init__(self, input_size, units, *, reset_after=True, **options):
        self.reset_after = reset_after
        super().__init__(input_size, units, **options)
        self.config["reset_after"] = reset_after

    def _initial_bias(self):
        return torch.zeros((2, 3 * self.units) if self.reset_after else (3 * self.units,))

    def forward(self, x, mask=None, initial_state=None, lengths=None):
        out, h = gru(x, self.kernel, self.recurrent_kernel, self.bias, reset_after=self.reset_after, mask=mask,
                     lengths=lengths, initial_state=initial_state, **self._options())
        return self._finish(out, h)


class Bidirectional(torch.nn.Module):
    """Keras Bidirectional: the backward layer is a copy of ``layer`` with go_backwards flipped; both see the
    same mask; zero_output_for_mask is forced to return_sequences on both (as Keras does); with
    return_sequences the backward outputs are flipped back to the original time order.
    merge_mode: "concat" (default), "sum", "mul", "ave" or None (a list [forward, backward]).
    return_state order: (out, fwd_h, fwd_c, bwd_h, bwd_c) (GRU: (out, fwd_h, bwd_h))."""

    def __init__(self, layer, merge_mode="concat", backward_layer=None):
        super().__init__()
        if not isinstance(layer, _Recurrent):
            raise TypeError(f"layer must be a maskrnn.torch LSTM or GRU, got {type(layer).__name__}")
        if merge_mode not in ("concat", "sum", "mul", "ave", None):
            raise ValueError(f"merge_mode must be one of concat, sum, mul, ave, None; got {merge_mode!r}")
        if backward_layer is None:  # Keras: a fresh layer from the same config, freshly initialised
            backward_layer = type(layer)(**dict(layer.config, go_backwards=not layer.go_backwards))
        elif (type(backward_layer) is not type(layer) or backward_layer.go_backwards == layer.go_backwards
              or any(getattr(backward_layer, k) != getattr(layer, k)
                     for k in ("return_sequences", "return_state", "time_major"))):
            raise ValueError("backward_layer must be the same kind of layer as layer, with the opposite go_backwards "
                             "and the same return_sequences, return_state and time_major")
        self.forward_layer, self.backward_layer, self.merge_mode = layer, backward_layer, merge_mode
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences

    @classmethod
    def from_torch(cls, module, merge_mode="concat", **options):
        """Same weights (and layout, see LSTM.from_torch) as a single-layer bidirectional torch.nn.LSTM / GRU;
        options go to both layers."""
        layer = {"LSTM": LSTM, "GRU": GRU}.get(getattr(module, "mode", None))
        if layer is None:
            raise TypeError(f"Bidirectional.from_torch: module must be a torch.nn.LSTM or torch.nn.GRU, "
                            f"got {type(module).__name__}")
        if not module.bidirectional:
            raise ValueError("Bidirectional.from_torch: module must be bidirectional (bidirectional=True)")
        return cls(layer.from_torch(module, reverse=False, **options), merge_mode,
                   backward_layer=layer.from_torch(module, reverse=True, go_backwards=True, **options))

    def forward(self, x, mask=None, initial_state=None, lengths=None):
        n = self.forward_layer.N_STATES
        fwd_state = bwd_state = None
        if initial_state is not None:
            initial_state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(initial_state) != 2 * n:
                names = "fwd_h, fwd_c, bwd_h, bwd_c" if n == 2 else "fwd_h, bwd_h"
                raise ValueError(f"initial_state of a Bidirectional {type(self.forward_layer).__name__} must hold "
                                 f"{2 * n} tensors ({names}), got {len(initial_state)}")
            fwd_state, bwd_state = initial_state[:n], initial_state[n:]
            fwd_state = fwd_state if n == 2 else fwd_state[0]
            bwd_state = bwd_state if n == 2 else bwd_state[0]
        f = self.forward_layer(x, mask=mask, initial_state=fwd_state, lengths=lengths)
        b = self.backward_layer(x, mask=mask, initial_state=bwd_state, lengths=lengths)
        f_states, b_states = (), ()
        if self.forward_layer.return_state:
            f, f_states = f[0], tuple(f[1:])
            b, b_states = b[0], tuple(b[1:])
        if self.forward_layer.return_sequences:
            b = torch.flip(b, dims=[0 if self.forward_layer.time_major else 1])
        if self.merge_mode == "concat":
            out = torch.cat([f, b], dim=-1)
        elif self.merge_mode == "sum":
            out = f + b
        elif self.merge_mode == "mul":
            out = f * b
        elif self.merge_mode == "ave":
            out = (f + b) / 2
        else:
            out = [f, b]
        if not self.forward_layer.return_state:
            return out
        return (*out, *f_states, *b_states) if isinstance(out, list) else (out, *f_states, *b_states)
