"""The GPU engine's calls read nothing back from the device (csrc/scan.h, maskrnn._dispatch.device_plan): the
arguments are NumPy arrays of a subclass that counts every conversion of its values to Python (bool, int, float,
item, tolist, iteration: what a CuPy array would fetch from the device, waiting for it), propagated through every
array operation the dispatcher, the driver and the engine do. Lengths cost one read (their range check, in
maskrnn._validate); masks and no mask cost none. Runs with the CUDA-emulation suite (``-p plugin``)."""

import sys

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream, record_plans
from conftest import TOLERANCE, make_mask, rel_err

import maskrnn._validate as validate

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)


class Device(np.ndarray):
    """An array whose values the host reads only through the counted conversions."""

    reads = 0

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return super().__array_wrap__(arr, context, False)  # a reduction to one value stays on the device

    def _read(self):
        Device.reads += 1

    def __bool__(self):
        self._read()
        return super().__bool__()

    def __int__(self):
        self._read()
        return super().__int__()

    def __float__(self):
        self._read()
        return super().__float__()

    def __index__(self):
        self._read()
        return super().__index__()

    def item(self, *args):
        self._read()
        return super().item(*args)

    def tolist(self):
        self._read()
        return super().tolist()

    def __iter__(self):
        self._read()
        return super().__iter__()


@pytest.fixture
def device_arrays(monkeypatch):
    """Arguments become Device arrays, and stay so through validation (np.asarray would drop the subclass, where
    cupy.asarray keeps a CuPy array as it is). Returns the plans made."""
    to_device, from_list = validate._to_device, validate._from_list
    monkeypatch.setattr(validate, "_to_device", lambda a, device, name: to_device(a, device, name).view(Device))
    monkeypatch.setattr(validate, "_from_list", lambda xp, a, name, dtype=None: (
        np.asanyarray(a, dtype) if isinstance(a, Device) else from_list(xp, a, name, dtype)))
    Device.reads = 0
    return record_plans(monkeypatch)


@pytest.mark.parametrize("masking, reads", [("holes", 0), ("post", 0), ("none", 0), ("lengths", 1)])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_a_training_step_reads_nothing_back(rng, device_arrays, cell, masking, reads, go_backwards):
    B, T, I, H = 5, 7, 3, 4
    p = make_problem(rng, cell, B, T, I, H, "float32", initial_state=True)
    mask = make_mask(rng, "post" if masking == "lengths" else masking, B, T)
    kw = dict(lengths=mask.sum(axis=1)) if masking == "lengths" else dict(mask=mask)
    _, vjp, ref, extra = cell_fns(cell)
    args = [p.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    outs, pullback = vjp(*args, **p, **kw, **extra, go_backwards=go_backwards)
    grads = pullback(*random_upstream(rng, cell, B, T, H, "float32"))
    assert Device.reads == reads
    if masking != "none":  # the plan was made from Device arrays: the count covers its making and its use
        assert isinstance(device_arrays[-1].batch_sizes, Device) and isinstance(device_arrays[-1].mask, Device)
    for got, want in zip(outs, ref(*args, **p, mask=mask, **extra, go_backwards=go_backwards)):
        assert rel_err(np.asarray(got), want) < TOLERANCE["float32"]
    assert all(np.isfinite(np.asarray(g)).all() for g in grads if g is not None)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_reads_nothing_back(rng, device_arrays, cell):
    B, T, I, H = 6, 9, 3, 5
    p = make_problem(rng, cell, B, T, I, H, "float32")
    op, _, ref, extra = cell_fns(cell)
    args = [p.pop(k) for k in ("x", "kernel", "recurrent_kernel", "bias")]
    mask = make_mask(rng, "post_holes", B, T)
    outs = op(*args, mask=mask, **extra)
    assert Device.reads == 0 and isinstance(device_arrays[-1].batch_sizes, Device)
    for got, want in zip(outs, ref(*args, mask=mask, **extra)):
        assert rel_err(np.asarray(got), want) < TOLERANCE["float32"]
