"""Argument checks for the functional ops, done once per call. Every error names the argument and what was
expected. Also decides the device: the inputs' own, or ``device=`` / ``MASKRNN_DEVICE`` when given."""

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

GATES = {"lstm": 4, "gru": 3}
CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Problem:
    """A validated call; arrays on the chosen device, x and the mask in the caller's time layout."""

    cell: str
    device: str
    x: Any
    kernel: Any
    recurrent_kernel: Any
    bias: Any
    has_bias: bool
    mask_tm: Any  # (T,B) bool, time-major, caller's time order; on the host for host lengths of a GPU problem
    mask_source: str  # "mask", "lengths" (then post-padded) or "none" (then all True): known without reading it
    h0: Any  # None (and c0 None) when no initial_state is given: zeros, the same in any row order
    c0: Any
    reset_after: bool
    go_backwards: bool
    zero_output_for_mask: bool
    time_major: bool
    dtype: Any
    batch: int
    steps: int
    units: int

    def bias_in_rec(self, xp):
        """GRU biases for the driver: (input bias or None, recurrent bias (3H,), zeros when none)."""
        if self.has_bias and self.reset_after:
            return self.bias[0], xp.ascontiguousarray(self.bias[1])
        return (self.bias if self.has_bias else None), xp.zeros(3 * self.units, self.dtype)


def _where(a):
    """'cpu', 'cuda', or None for host objects without a device of their own (lists, scalars)."""
    if isinstance(a, np.ndarray):
        return "cpu"
    cupy = sys.modules.get("cupy")  # a CuPy array without reading __cuda_array_interface__: a dict built per read
    if cupy is not None and isinstance(a, cupy.ndarray):
        return "cuda"
    if hasattr(a, "__cuda_array_interface__"):
        return "cuda"
    if hasattr(a, "__dlpack_device__"):
        return "cuda" if a.__dlpack_device__()[0] in (2, 3, 13) else "cpu"
    if hasattr(a, "__array__") or hasattr(a, "__array_interface__"):
        return "cpu"
    return None


def _choose_device(named, device):
    if device is None:
        device = os.environ.get("MASKRNN_DEVICE") or None
        source = "MASKRNN_DEVICE"
    else:
        source = "device"
    if device is not None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"{source} must be 'cpu' or 'cuda', got {device!r}")
        return device
    # Host lengths go with a GPU problem too (as torch's pack_padded_sequence wants them on the CPU): see _mask.
    found = {name: _where(a) for name, a in named.items() if a is not None and not _host_lengths(name, a)}
    kinds = {k for k in found.values() if k is not None}
    if len(kinds) > 1:
        detail = ", ".join(f"{n} on {k}" for n, k in found.items() if k)
        raise ValueError(f"arguments are on different devices ({detail}); move them to one device "
                         "(maskrnn never copies between devices silently) or pass device=")
    return kinds.pop() if kinds else "cpu"


def _host_lengths(name, a):
    return name == "lengths" and _where(a) != "cuda"


def _to_device(a, device, name):
    if _where(a) is None:  # lists and scalars: converted with the problem's dtype in _array
        return a
    if device == "cpu":
        if _where(a) == "cuda":
            if hasattr(a, "get"):
                return a.get()
            raise ValueError(f"{name} is on a GPU; device='cpu' needs host arrays")
        return np.asarray(a)
    import cupy

    if isinstance(a, cupy.ndarray) and a.device.id == cupy.cuda.runtime.getDevice():
        return a  # as cupy.asarray would return it, without its ~15 us of host time
    if hasattr(a, "__cuda_array_interface__") or _where(a) != "cuda":
        return cupy.asarray(a)
    return cupy.from_dlpack(a)


def _from_list(xp, a, name, dtype=None):
    """Lists, scalars -> arrays; a ragged or non-numeric list is an error that names the argument."""
    try:
        return xp.asarray(a, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name} must be an array or a rectangular nested list of numbers, got a "
                      f"{type(a).__name__} that does not convert ({e})") from None


def _array(xp, a, name, dtype):
    if a is None:
        return None
    if not hasattr(a, "dtype"):  # lists and scalars take the problem's dtype
        a = _from_list(xp, a, name, dtype)
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype} (the dtype of x); cast it first")
    return a


def _shape(a, name, expected):
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(a.shape)}")


def validate(cell, args, kw) -> Problem:
    x, kernel, recurrent_kernel, bias = args
    mask, lengths, initial_state = kw["mask"], kw["lengths"], kw["initial_state"]
    reset_after = bool(kw.get("reset_after", True))
    time_major = bool(kw["time_major"])
    if mask is not None and lengths is not None:
        raise ValueError("pass either mask or lengths, not both")
    if cell == "lstm":
        states = _lstm_states(initial_state)
    else:
        states = _gru_states(initial_state)
    named = dict(x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, mask=mask, lengths=lengths)
    named.update(states)
    device = _choose_device(named, kw["device"])
    if device == "cuda":
        from ._dispatch import _engine

        xp, _ = _engine("cuda")
    else:
        xp = np
    # Host lengths of a GPU problem stay on the host for their range check (_mask).
    host_lengths = device == "cuda" and lengths is not None and _host_lengths("lengths", lengths)
    arrs = {n: (None if a is None else a if n == "lengths" and host_lengths else _to_device(a, device, n))
            for n, a in named.items()}

    for name in ("x", "kernel", "recurrent_kernel"):
        if arrs[name] is None:
            raise TypeError(f"{name} is required (an array), got None")
    x = arrs["x"]
    if not hasattr(x, "dtype"):
        x = _from_list(xp, x, "x", np.float32)
    if x.dtype.kind != "f" and str(x.dtype) != "bfloat16":
        raise TypeError(f"x must be a floating-point array (float32 or float64), got dtype {x.dtype}")
    if device == "cpu" and x.dtype not in CPU_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; the CPU engine runs float32 and float64 "
                        "(float16/bfloat16 run on the GPU)")
    dtype = x.dtype
    if x.ndim != 3:
        layout = "(T, B, I)" if time_major else "(B, T, I)"
        raise ValueError(f"x must be 3-D {layout}, got shape {tuple(x.shape)}")
    T, B = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    In = x.shape[2]
    if T == 0:
        raise ValueError("x has no time steps (T == 0)")

    G = GATES[cell]
    W = _array(xp, arrs["kernel"], "kernel", dtype)
    if W.ndim != 2 or W.shape[0] != In or W.shape[1] == 0 or W.shape[1] % G:
        raise ValueError(f"kernel must have shape (I, {G}*units) = ({In}, {G}*units), got {tuple(W.shape)}")
    H = W.shape[1] // G
    U = _array(xp, arrs["recurrent_kernel"], "recurrent_kernel", dtype)  # any layout: the engines copy what they need
    _shape(U, "recurrent_kernel", (H, G * H))
    b = _array(xp, arrs["bias"], "bias", dtype)
    if b is not None:
        if cell == "gru" and reset_after:
            _shape(b, "bias", (2, 3 * H))
        else:
            _shape(b, "bias", (G * H,))

    mask_tm = _mask(xp, arrs["mask"], arrs["lengths"], T, B, time_major, np if host_lengths else xp)
    h0, c0 = (_state(xp, arrs.get(n), n, dtype, B, H) for n in ("h0", "c0"))
    return Problem(cell=cell, device=device, x=x, kernel=W, recurrent_kernel=U, bias=b, has_bias=b is not None,
                   mask_tm=mask_tm, mask_source=_source(mask, lengths), h0=h0, c0=c0 if cell == "lstm" else None,
                   reset_after=reset_after, go_backwards=bool(kw["go_backwards"]),
                   zero_output_for_mask=bool(kw["zero_output_for_mask"]), time_major=time_major, dtype=dtype,
                   batch=B, steps=T, units=H)


def _lstm_states(initial_state):
    if initial_state is None:
        return {}
    if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2:
        raise ValueError("initial_state for lstm must be a pair (h0, c0) of (B, units) arrays")
    return {"h0": initial_state[0], "c0": initial_state[1]}


def _gru_states(initial_state):
    if initial_state is None:
        return {}
    if isinstance(initial_state, (list, tuple)):
        if len(initial_state) != 1:
            raise ValueError("initial_state for gru must be h0 (B, units) or [h0]")
        initial_state = initial_state[0]
    return {"h0": initial_state}


def _state(xp, a, name, dtype, B, H):
    if a is None:
        return None  # zeros: the dispatcher's _Layout.states makes them where an engine needs them
    a = _array(xp, a, f"initial_state {name}", dtype)
    _shape(a, f"initial_state {name}", (B, H))
    return a


def _source(mask, lengths):
    return "lengths" if lengths is not None else "mask" if mask is not None else "none"


def _mask(xp, mask, lengths, T, B, time_major, lengths_xp):
    """The (T,B) time-major bool mask on xp's device, or on the host for host lengths of a GPU problem.
    lengths_xp: where the lengths are (NumPy for host lengths of a GPU problem; else xp)."""
    mask = None if mask is None else _from_list(xp, mask, "mask")
    if lengths is not None:
        lengths = _from_list(lengths_xp, lengths, "lengths")
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
        _shape(lengths, "lengths", (B,))
        # Lengths on the GPU: this is the one value a call reads back from the device (so the host waits for the
        # queue to reach it): whether any length is out of range. Host lengths, masks and no mask need nothing read
        # back. The min and max are read only to word the error.
        if B and bool(((lengths < 0) | (lengths > T)).any()):
            raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got min {int(lengths.min())}, "
                             f"max {int(lengths.max())}")
        # Host lengths of a GPU problem: a host mask, from which the dispatcher makes the plan on the host
        # (_dispatch.host_plan) and copies it over.
        return lengths_xp.arange(T)[:, None] < lengths[None, :]
    if mask is None:
        return xp.ones((T, B), dtype=bool)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True = real step), got dtype {mask.dtype}; "
                        "use mask.astype(bool) or mask != 0")
    _shape(mask, "mask", (T, B) if time_major else (B, T))
    return mask if time_major else mask.T
