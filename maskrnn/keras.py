"""Keras 3 integration: ``LSTM`` and ``GRU``, subclasses of ``keras.layers.LSTM`` / ``keras.layers.GRU`` whose
scan runs through maskrnn. One import changes in a Keras model::

    from maskrnn.keras import LSTM, GRU     # instead of keras.layers.LSTM, GRU

Constructor, variables (same order: ``set_weights(keras_layer.get_weights())`` and back), ``get_config`` /
``from_config``, ``.keras`` saving (registered as ``maskrnn>LSTM`` / ``maskrnn>GRU``), mask propagation,
``Bidirectional``, ``stateful``, ``return_state`` and ``initial_state`` are Keras's own; only ``inner_loop``
changes. Backends: torch (``maskrnn.torch`` autograd, CPU tensors and, with the CUDA extension built, CUDA
tensors), JAX on the CPU (``maskrnn.jax``, also under ``jax.jit``), NumPy (inference). TensorFlow, a JAX GPU,
and configurations the kernels do not run (another activation, ``unroll``, ``recurrent_dropout``, a float16
policy) run Keras's own loop, with one warning per layer naming the reason.

Input ``dropout`` in training follows Keras's cuDNN path: one dropout mask over the input features, drawn by
the cell, applied to every step before the input projection (Keras's own per-step loop applies the same mask
at the same place, so with the same seed the two agree). ``use_cudnn`` is ignored: these layers never use
cuDNN (with ``use_cudnn=True`` Keras's layer would raise where cuDNN cannot run).

Deliberate differences from Keras 3.15 (SPEC.md section 2), on every backend:
- the mask attached to the input is used when ``initial_state`` is passed (Keras silently drops it);
- a ``go_backwards`` layer returning sequences attaches the reversed mask to its output (Keras's is misaligned);
- NaN/Inf in masked input positions reach no output, state or gradient (Keras's weight gradients become NaN);
- on the JAX backend, the output at masked steps before a row's first real step is 0, as on Keras's torch and
  TensorFlow backends (Keras's JAX backend returns the initial state there; they differ only with a non-zero
  ``initial_state``).
"""

import warnings

import keras
from keras import ops

import maskrnn

from ._info import cuda_ready

_TANH = (keras.activations.tanh, ops.tanh)
_SIGMOID = (keras.activations.sigmoid, ops.sigmoid)


def _config_unsupported(layer):
    """The argument that keeps the kernels from running this layer's configuration, or None."""
    cell = layer.cell
    reasons = [
        (cell.activation not in _TANH, "activation (only tanh runs on maskrnn)"),
        (cell.recurrent_activation not in _SIGMOID, "recurrent_activation (only sigmoid runs on maskrnn)"),
        (layer.unroll, "unroll=True"),
        (cell.recurrent_dropout, "recurrent_dropout (maskrnn runs only recurrent_dropout=0)"),
        (layer.compute_dtype not in ("float32", "float64"),
         f"dtype (compute dtype {layer.compute_dtype}; maskrnn runs float32 and float64 on the CPU)"),
    ]
    return next((why for bad, why in reasons if bad), None)


def _backend_unsupported(sequences):
    """Why the current Keras backend cannot run the kernels on these inputs, or None."""
    name = keras.backend.backend()
    if name == "torch":
        if sequences.is_cuda:
            ok, why = cuda_ready()
            return None if ok else f"KERAS_BACKEND=torch on a CUDA tensor ({why})"
        return None
    if name == "jax":
        import jax

        if jax.default_backend() != "cpu":
            return f"KERAS_BACKEND=jax on {jax.default_backend()} (maskrnn.jax runs on the CPU only)"
        return None
    if name == "numpy":
        return None
    return f"KERAS_BACKEND={name} (maskrnn supports the torch, jax and numpy backends)"


def _engine(cell):
    """maskrnn's lstm or gru for the current Keras backend, taking and returning that backend's tensors."""
    name = keras.backend.backend()
    if name == "torch":
        from maskrnn import torch as module
    elif name == "jax":
        from maskrnn import jax as module
    else:
        module = maskrnn
    return getattr(module, cell)


class _MaskrnnScan:
    """The shared part of LSTM and GRU: the inner loop through maskrnn, and the deliberate differences."""

    _CELL = ""

    def _fallback(self, sequences, initial_state, mask, training, why):
        if not getattr(self, "_maskrnn_warned", False):
            self._maskrnn_warned = True
            warnings.warn(f"maskrnn.keras.{type(self).__name__} '{self.name}': Keras's own loop runs this layer "
                          f"because of {why}.", stacklevel=3)
        return super().inner_loop(sequences, initial_state, mask, training=training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        why = _config_unsupported(self) or _backend_unsupported(sequences)
        if why:
            return self._fallback(sequences, initial_state, mask, training, why)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if mask is not None:
            mask = ops.cast(mask, "bool")  # Keras: any non-zero value is a real step
            if len(mask.shape) == 3:
                mask = mask[..., 0]
        if training and self.cell.dropout:
            # The cell's cached mask for this call (RNN.call drew it), over the features, for every step.
            sequences = sequences * ops.expand_dims(self.cell.get_dropout_mask(sequences[:, 0, :]), 1)
        cell = self.cell
        bias = None if cell.bias is None else cell.bias.value
        options = dict(mask=mask, go_backwards=self.go_backwards, zero_output_for_mask=self.zero_output_for_mask)
        if self._CELL == "gru":
            options["reset_after"] = cell.reset_after
        outputs, *states = _engine(self._CELL)(sequences, cell.kernel.value, cell.recurrent_kernel.value, bias,
                                               initial_state=list(initial_state), **options)
        return self._last_output(states[0], mask), outputs, list(states)

    def _last_output(self, h, mask):
        """outputs[:, -1], from the final state: without return_sequences the outputs then get no gradient, and
        the backward no (B,T,H) upstream array. The last output is h_T when the row has a real step (without
        zero_output_for_mask) or when its last processed step is real (with it), else 0."""
        if mask is None:
            return h
        if self.zero_output_for_mask:
            real = mask[:, 0] if self.go_backwards else mask[:, -1]
        else:
            real = ops.any(mask, axis=1)
        return ops.where(ops.expand_dims(real, 1), h, ops.zeros_like(h))

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if mask is None and initial_state is not None:
            # Keras's Layer.__call__ fills mask= only for single-tensor calls; the mask is still on the input.
            mask = keras.src.backend.get_keras_mask(sequences)
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def compute_mask(self, sequences, mask=None):
        output_mask = super().compute_mask(sequences, mask)
        if not (self.go_backwards and self.return_sequences):
            return output_mask
        # The outputs come in processing (reversed) order: so does the mask that describes them.
        if isinstance(output_mask, list):
            return [None if output_mask[0] is None else ops.flip(output_mask[0], axis=1)] + output_mask[1:]
        return None if output_mask is None else ops.flip(output_mask, axis=1)


@keras.saving.register_keras_serializable(package="maskrnn")
class LSTM(_MaskrnnScan, keras.layers.LSTM):
    """``keras.layers.LSTM`` (same constructor and weights) whose scan runs through maskrnn."""

    _CELL = "lstm"


@keras.saving.register_keras_serializable(package="maskrnn")
class GRU(_MaskrnnScan, keras.layers.GRU):
    """``keras.layers.GRU`` (same constructor and weights, both ``reset_after`` variants) whose scan runs
    through maskrnn."""

    _CELL = "gru"
