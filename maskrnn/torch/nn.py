"""Drop-ins for ``torch.nn.LSTM`` and ``torch.nn.GRU`` that run every layer and direction on maskrnn's kernels.

``maskrnn.torch.nn.LSTM`` / ``GRU`` subclass torch's modules: the constructor, parameter names and shapes
(``weight_ih_l0``, ``weight_hh_l0_reverse``, ``bias_ih_l0``, ``weight_hr_l0``, ...), ``state_dict``,
initialisation and ``isinstance`` checks are torch's own; only ``forward`` changes::

    forward(input, hx=None, *, lengths=None, mask=None) -> (output, h_n) for GRU, (output, (h_n, c_n)) for LSTM

- ``input``: a ``PackedSequence`` (sorted or not; ``output`` is a ``PackedSequence`` with the same
  ``batch_sizes`` and indices), or a padded tensor ``(B, T, I)`` with ``batch_first`` else ``(T, B, I)``,
  or an unbatched ``(T, I)`` tensor (then ``hx`` and ``h_n`` are ``(L*D, H)``).
- ``lengths`` (padded input only): ``(B,)`` integers in ``[0, T]`` (a tensor on the CPU or the input's
  device, or a list); row b's real steps are its first ``lengths[b]``. Unlike ``pack_padded_sequence`` it
  needs no sorting and allows zero lengths. Lengths on the CPU cost the GPU nothing but a copy; lengths on
  the GPU are range-checked there, which makes the host wait for the GPU once per layer and direction.
- ``mask`` (padded input only): the input's first two dimensions (``(B, T)`` with ``batch_first``, else
  ``(T, B)``), bool or integer 0/1 such as a tokenizer's attention mask; True/1 = real step. Holes are
  allowed: a masked step is skipped (states carried over it, its input never read).
- ``hx``: ``(h_0, c_0)`` (LSTM) or ``h_0``, shaped ``(L*D, B, H)`` (``h_0`` is ``(L*D, B, proj_size)`` with
  a projection), in the input's row order as in torch; zeros when None.
- ``output`` is zero at padded and masked steps (what ``pad_packed_sequence`` gives); ``h_n``/``c_n`` are
  the states after each row's last real step (the initial state for a row with none). The reverse direction
  visits each row's real steps from last to first, as torch does on a ``PackedSequence``.

L = num_layers, D = 2 if bidirectional else 1. ``dropout`` applies to every layer's output but the last, in
training, as in torch. PyTorch's GRU is maskrnn's reset_after=True GRU with gates (r, z, n) reordered to
(z, r, h): the kernels read LSTM weights as transposed views and GRU weights through one small gather per
call (see ``_keras_weights``), and gradients are mapped back to the torch-named parameters. With
``proj_size`` an LSTM runs a per-step loop of torch ops instead of the kernels (see ``_proj``): exact, but slow.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

import maskrnn

from . import _needs_grad, _stream, _tensor, _view
from ._proj import lstm_proj_direction

__all__ = ["LSTM", "GRU"]


def _gru_perm(H, device):
    """Row index that reorders torch's (r, z, n) gate blocks into Keras's (z, r, h), and back (an involution)."""
    return torch.cat([torch.arange(H, 2 * H), torch.arange(H), torch.arange(2 * H, 3 * H)]).to(device)


def _keras_weights(cell, w_ih, w_hh, b_ih, b_hh):
    """torch-layout parameters -> Keras layout (kernel (I,GH), recurrent_kernel (H,GH), bias), detached.

    LSTM: transposed views of the parameters (torch's gate order is Keras's), no copy. GRU: one gather of
    the gate blocks per call, about the size of the weight copies the dispatcher makes anyway. Nothing is
    cached: a cache keyed on version counters would miss updates made through ``.data`` (gradcheck's
    perturbations, some EMA code), which bypass the counters."""
    w_ih, w_hh = w_ih.detach(), w_hh.detach()
    b_ih, b_hh = (None, None) if b_ih is None else (b_ih.detach(), b_hh.detach())
    if cell == "lstm":
        return w_ih.t(), w_hh.t(), None if b_ih is None else b_ih + b_hh
    perm = _gru_perm(w_hh.shape[1], w_hh.device)
    bias = None if b_ih is None else torch.stack([b_ih[perm], b_hh[perm]])
    return w_ih[perm].t(), w_hh[perm].t(), bias


def _torch_grads(cell, g):
    """Gradients of the Keras-layout weights -> those of (w_ih, w_hh, b_ih, b_hh) in torch's layout."""
    d_ih, d_hh = _tensor(g.kernel).t(), _tensor(g.recurrent_kernel).t()
    db = _tensor(g.bias)
    if cell == "gru":
        perm = _gru_perm(d_hh.shape[1], d_hh.device)
        d_ih, d_hh = d_ih[perm], d_hh[perm]
        d_bih, d_bhh = (None, None) if db is None else (db[0][perm], db[1][perm])
    else:
        # Both torch biases get the one gradient; distinct tensors, since autograd may accumulate in place.
        d_bih, d_bhh = (None, None) if db is None else (db, db.clone())
    return d_ih.contiguous(), d_hh.contiguous(), d_bih, d_bhh


def _scan(cell, x, weights, h0, c0, options, vjp):
    """One maskrnn call. Returns the engine's results (and pullback when vjp)."""
    W, U, b = (_view(w) for w in weights)
    if cell == "lstm":
        op, state = (maskrnn.lstm_vjp if vjp else maskrnn.lstm), None if h0 is None else (_view(h0), _view(c0))
    else:
        op, state = (maskrnn.gru_vjp if vjp else maskrnn.gru), _view(h0)
    with _stream(x):
        return op(_view(x), W, U, b, initial_state=state, **options)


class _Direction(torch.autograd.Function):
    """One layer and direction on the kernels, differentiable in x, h0, c0 and the torch-layout parameters."""

    @staticmethod
    def forward(ctx, cell, weights, options, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # Saved so that torch's version counter catches an in-place update between forward and backward.
        ctx.save_for_backward(w_ih, w_hh, b_ih, b_hh)
        ctx.set_materialize_grads(False)
        ctx.cell, ctx.like = cell, w_ih  # w_ih: for the device and stream in backward
        results, ctx.pullback = _scan(cell, x, weights, h0, c0, options, vjp=True)
        return tuple(_tensor(r) for r in results)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        ctx.saved_tensors  # noqa: B018 -- raises if a parameter was modified in place since forward
        with _stream(ctx.like):
            g = ctx.pullback(*(_view(d) for d in grads))
        need = ctx.needs_input_grad
        states = [_tensor(s) if need[i] else None for i, s in ((4, g.h0), (5, getattr(g, "c0", None)))]
        return (None, None, None, _tensor(g.x), *states, *_torch_grads(ctx.cell, g))


class _MaskedRNN:
    """forward() and its helpers, shared by LSTM and GRU (mixed in before torch's class)."""

    CELL = ""

    def _direction(self, x, layer, reverse, h0, c0, steps):
        """x (T,B,F) time-major; steps: dict(lengths=(B,)) or dict(mask=(T,B)) on x's device.
        Returns out (T,B,H_out) in time order, h_T, c_T (None for GRU)."""
        sfx = f"_l{layer}" + ("_reverse" if reverse else "")
        params = [getattr(self, f"{n}{sfx}", None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if self.CELL == "lstm" and self.proj_size:
            mask = steps.get("mask")
            if "lengths" in steps:
                mask = torch.arange(x.shape[0], device=x.device)[:, None] < steps["lengths"].to(x.device)[None, :]
            elif mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            return lstm_proj_direction(x, *params, getattr(self, f"weight_hr{sfx}"), h0, c0, mask, reverse)
        weights = _keras_weights(self.CELL, *params)
        options = dict(go_backwards=reverse, zero_output_for_mask=True, time_major=True,
                       **{k: _view(v) for k, v in steps.items()})
        if _needs_grad(x, h0, c0, *params):
            res = _Direction.apply(self.CELL, weights, options, x, h0, c0, *params)
        else:
            res = tuple(_tensor(r) for r in _scan(self.CELL, x, weights, h0, c0, options, vjp=False))
        out = res[0].flip(0) if reverse else res[0]  # go_backwards returns outputs in processing order
        return out, res[1], res[2] if self.CELL == "lstm" else None

    def _layers(self, x, h0, c0, steps):
        """x (T,B,I) time-major; h0, c0 (L*D,B,*) or None. Returns output (T,B,D*H_out), h_n, c_n."""
        D = 2 if self.bidirectional else 1
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                out, h, c = self._direction(x, layer, d == 1, None if h0 is None else h0[k],
                                            None if c0 is None else c0[k], steps)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, -1) if D == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(hs), torch.stack(cs) if self.CELL == "lstm" else None

    def forward(self, input, hx=None, *, lengths=None, mask=None):  # noqa: A002 -- torch.nn's argument name
        if isinstance(input, PackedSequence):
            if lengths is not None or mask is not None:
                raise ValueError("a PackedSequence carries its own lengths: pass no lengths= or mask= with it")
            return self._forward_packed(input, hx)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor or a PackedSequence, got {type(input).__name__}")
        self._check_floats(input, "input")
        if input.dim() == 2:
            if lengths is not None or mask is not None:
                raise ValueError("unbatched (T, I) input takes no lengths= or mask=; add a batch dimension")
            h0, c0 = self._hx(hx, 1, unbatched=True)
            out, h, c = self._layers(input.unsqueeze(1), h0, c0, {})
            return out.squeeze(1), self._pack_states(h.squeeze(1), None if c is None else c.squeeze(1))
        if input.dim() != 3:
            raise ValueError(f"input must be 3-D ({self._layout()}) or unbatched 2-D (T, I), "
                             f"got shape {tuple(input.shape)}")
        x = input if not self.batch_first else input.transpose(0, 1)
        T, B = x.shape[:2]
        steps = self._steps(input, lengths, mask, T, B)
        h0, c0 = self._hx(hx, B, shape_of_input=tuple(input.shape))
        out, h, c = self._layers(x, h0, c0, steps)
        return out.transpose(0, 1) if self.batch_first else out, self._pack_states(h, c)

    def _forward_packed(self, packed, hx):
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        self._check_floats(data, "PackedSequence data")
        if data.dim() != 2:
            raise ValueError(f"PackedSequence data must be 2-D (N, input_size), got shape {tuple(data.shape)}")
        T, B = len(batch_sizes), int(batch_sizes[0])
        # (T,B) in sorted row order; the packed data lists its True entries in row-major order.
        real = torch.arange(B)[None, :] < batch_sizes[:, None]
        where = real.flatten().nonzero().squeeze(1).to(data.device, non_blocking=True)
        x = data.new_zeros(T * B, data.shape[1]).index_copy(0, where, data).view(T, B, -1)
        lengths = real.sum(0)  # on the CPU, as batch_sizes: the GPU never waits for their check
        h0, c0 = self._hx(hx, B)
        if sorted_indices is not None:
            order = sorted_indices.to(data.device)
            h0, c0 = (None if s is None else s.index_select(1, order) for s in (h0, c0))
        out, h, c = self._layers(x, h0, c0, dict(lengths=lengths))
        if unsorted_indices is not None:
            inverse = unsorted_indices.to(data.device)
            h, c = (None if s is None else s.index_select(1, inverse) for s in (h, c))
        out = out.reshape(T * B, -1).index_select(0, where)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), self._pack_states(h, c)

    def _layout(self):
        return "(B, T, I) since batch_first=True" if self.batch_first else "(T, B, I) since batch_first=False"

    def _check_floats(self, t, name):
        w = self.weight_ih_l0
        if t.dtype != w.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but the module's parameters are {w.dtype}; "
                            f"cast one of them (e.g. module.to({t.dtype}))")
        if t.device != w.device:
            raise ValueError(f"{name} is on {t.device} but the module's parameters are on {w.device}; "
                             "move one of them")
        if t.shape[-1] != self.input_size:
            raise ValueError(f"{name} has {t.shape[-1]} features in its last dimension, expected "
                             f"input_size={self.input_size}")

    def _hint(self, got, shape_of_input, expected):
        """A note for a batch-size mismatch that a time-major/batch-major mix-up explains."""
        if shape_of_input is None or got == expected or got != shape_of_input[int(self.batch_first)]:
            return ""
        return (f"; the input looks {'time' if self.batch_first else 'batch'}-major, but this module expects "
                f"{self._layout()}")

    def _steps(self, input, lengths, mask, T, B):
        """lengths / mask -> dict for _direction, on the input's device, mask made (T,B) bool."""
        if lengths is not None and mask is not None:
            raise ValueError("pass either lengths= or mask=, not both")
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
                raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
            if lengths.dim() != 1 or lengths.shape[0] != B:
                hint = self._hint(lengths.shape[0] if lengths.dim() == 1 else None, tuple(input.shape), B)
                raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}{hint}")
            if lengths.device.type == "cpu" and B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
                raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got min {int(lengths.min())}, "
                                 f"max {int(lengths.max())}")
            # CPU lengths stay there (checked above; the dispatcher copies them to the GPU without waiting for it).
            return dict(lengths=lengths if lengths.device.type == "cpu" else lengths.to(input.device))
        if mask is None:
            return {}
        mask = torch.as_tensor(mask)
        expected = tuple(input.shape[:2])
        if tuple(mask.shape) != expected:
            hint = ""
            if tuple(mask.shape) == expected[::-1]:
                hint = f"; it looks transposed (the mask follows the input's layout, {self._layout()})"
            raise ValueError(f"mask must have shape {expected} (the input's first two dimensions), "
                             f"got {tuple(mask.shape)}{hint}")
        if mask.dtype != torch.bool:
            if mask.dtype.is_floating_point or mask.is_complex():
                raise TypeError(f"mask must be bool or integer 0/1, got dtype {mask.dtype}; use mask != 0")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("an integer mask must hold only 0 and 1 (1 = real step)")
            mask = mask != 0
        mask = mask.to(input.device, non_blocking=True)
        return dict(mask=mask.t() if self.batch_first else mask)

    def _hx(self, hx, B, unbatched=False, shape_of_input=None):
        """Checks hx -> (h0, c0) shaped (L*D, B, *) (None when absent)."""
        if hx is None:
            return None, None
        LD = self.num_layers * (2 if self.bidirectional else 1)
        if self.CELL == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx for LSTM must be a pair (h_0, c_0) of tensors")
            pairs = [("h_0", hx[0], self.proj_size or self.hidden_size), ("c_0", hx[1], self.hidden_size)]
        else:
            pairs = [("hx", hx, self.hidden_size)]
        states = []
        for name, s, H in pairs:
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(s).__name__}")
            expected = (LD, H) if unbatched else (LD, B, H)
            if tuple(s.shape) != expected:
                got = s.shape[1] if s.dim() == 3 else None
                raise ValueError(f"{name} must have shape {expected} (num_layers * num_directions, "
                                 f"{'' if unbatched else 'B, '}H), got {tuple(s.shape)}"
                                 f"{self._hint(got, shape_of_input, B)}")
            if s.dtype != self.weight_ih_l0.dtype or s.device != self.weight_ih_l0.device:
                raise TypeError(f"{name} must have the parameters' dtype and device ({self.weight_ih_l0.dtype}, "
                                f"{self.weight_ih_l0.device}), got {s.dtype} on {s.device}")
            states.append(s.unsqueeze(1) if unbatched else s)
        return states[0], states[1] if self.CELL == "lstm" else None

    def _pack_states(self, h, c):
        return (h, c) if self.CELL == "lstm" else h


class LSTM(_MaskedRNN, nn.LSTM):
    """torch.nn.LSTM on maskrnn's kernels; see the module docstring for forward's extra arguments."""

    CELL = "lstm"


class GRU(_MaskedRNN, nn.GRU):
    """torch.nn.GRU on maskrnn's kernels (maskrnn's reset_after=True GRU); see the module docstring."""

    CELL = "gru"
