"""Every bad input raises ValueError/TypeError (or RuntimeError for an unavailable device) naming the
argument and what was expected."""

import re

import numpy as np
import pytest

import maskrnn

B, T, I, H = 2, 3, 4, 5


def lstm_args():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype("float32")  # noqa: E731
    return dict(x=f(B, T, I), kernel=f(I, 4 * H), recurrent_kernel=f(H, 4 * H), bias=f(4 * H))


def call(op="lstm", **changes):
    a = lstm_args()
    if op == "gru":
        a.update(kernel=a["kernel"][:, : 3 * H], recurrent_kernel=a["recurrent_kernel"][:, : 3 * H],
                 bias=np.zeros((2, 3 * H), "float32"))
    a.update(changes)
    fn = maskrnn.lstm if op == "lstm" else maskrnn.gru
    return fn(a.pop("x"), a.pop("kernel"), a.pop("recurrent_kernel"), a.pop("bias"), **a)


CASES = [
    (dict(x=np.zeros((B, T), "float32")), ValueError, "x must be 3-D"),
    (dict(x=np.zeros((B, 0, I), "float32")), ValueError, "no time steps"),
    (dict(x=np.zeros((B, T, I), "int32")), TypeError, "x must be a floating-point"),
    (dict(x=np.zeros((B, T, I), "float16")), TypeError, "float16"),
    (dict(kernel=np.zeros((I + 1, 4 * H), "float32")), ValueError, "kernel must have shape"),
    (dict(kernel=np.zeros((I, 4 * H + 1), "float32")), ValueError, "kernel must have shape"),
    (dict(kernel=np.zeros((I, 4 * H), "float64")), TypeError, "kernel has dtype float64"),
    (dict(recurrent_kernel=np.zeros((H, 3 * H), "float32")), ValueError, "recurrent_kernel must have shape"),
    (dict(bias=np.zeros(3 * H, "float32")), ValueError, "bias must have shape"),
    (dict(mask=np.ones((B, T), "int8")), TypeError, "mask must be a boolean"),
    (dict(mask=np.ones((B, T + 1), bool)), ValueError, "mask must have shape"),
    (dict(lengths=np.array([1, 4])), ValueError, "lengths must lie in [0, T]"),
    (dict(lengths=np.array([-1, 2])), ValueError, "lengths must lie in [0, T]"),
    (dict(lengths=np.array([1.0, 2.0])), TypeError, "lengths must be an integer"),
    (dict(lengths=np.array([1, 2, 3])), ValueError, "lengths must have shape"),
    (dict(lengths=np.array([1, 2]), mask=np.ones((B, T), bool)), ValueError, "either mask or lengths"),
    (dict(initial_state=np.zeros((B, H), "float32")), ValueError, "pair (h0, c0)"),
    (dict(initial_state=(np.zeros((B, H + 1), "float32"), np.zeros((B, H), "float32"))), ValueError,
     "initial_state h0 must have shape"),
    (dict(initial_state=(np.zeros((B, H), "float32"), np.zeros((B, H), "float64"))), TypeError,
     "initial_state c0 has dtype"),
    (dict(device="tpu"), ValueError, "device must be 'cpu' or 'cuda'"),
    (dict(kernel=None), TypeError, "kernel is required"),
    (dict(recurrent_kernel=None), TypeError, "recurrent_kernel is required"),
    (dict(x=[[[1.0] * I], [[1.0] * I, [2.0] * I]]), ValueError, "x must be an array or a rectangular nested list"),
    (dict(x=[[["a"] * I] * T] * B), ValueError, "x must be an array or a rectangular nested list"),
    (dict(bias=[0.0] * (4 * H - 1) + [[0.0]]), ValueError, "bias must be an array or a rectangular nested list"),
    (dict(mask=[[True] * T, [True]]), ValueError, "mask must be an array or a rectangular nested list"),
    (dict(lengths=[1, [2]]), ValueError, "lengths must be an array or a rectangular nested list"),
]


@pytest.mark.parametrize(("changes", "error", "message"), CASES)
def test_bad_lstm_input(changes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(**changes)


@pytest.mark.parametrize(("changes", "error", "message"), [
    (dict(bias=np.zeros(3 * H, "float32")), ValueError, "bias must have shape (2, 15)"),
    (dict(bias=np.zeros((2, 3 * H), "float32"), reset_after=False), ValueError, "bias must have shape (15,)"),
    (dict(initial_state=[np.zeros((B, H), "float32")] * 2), ValueError, "h0 (B, units) or [h0]"),
])
def test_bad_gru_input(changes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call("gru", **changes)


def test_env_device_checked(monkeypatch):
    monkeypatch.setenv("MASKRNN_DEVICE", "gpu")
    with pytest.raises(ValueError, match="MASKRNN_DEVICE must be"):
        call()


def test_cuda_without_engine_says_why():
    if maskrnn.info()["gpus"]:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda"):
        call(device="cuda")


def test_bad_upstream_gradient_shape():
    a = lstm_args()
    _, pullback = maskrnn.lstm_vjp(a.pop("x"), a.pop("kernel"), a.pop("recurrent_kernel"), a.pop("bias"))
    with pytest.raises(ValueError, match="upstream gradient has shape"):
        pullback(np.zeros((B, T, H + 1), "float32"))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_upstream_gradient_errors_name_the_argument(cell):
    a = lstm_args()
    G = 4 if cell == "lstm" else 3
    vjp = maskrnn.lstm_vjp if cell == "lstm" else maskrnn.gru_vjp
    bias = a["bias"] if cell == "lstm" else None
    _, pullback = vjp(a["x"], a["kernel"][:, : G * H], a["recurrent_kernel"][:, : G * H], bias)
    good, bad = np.zeros((B, H), "float32"), np.zeros((B, H + 1), "float32")
    names = ["d_outputs", "d_h", "d_c"][: 3 if cell == "lstm" else 2]
    for i, name in enumerate(names):
        ups = [np.zeros((B, T, H), "float32"), good, good][: len(names)]
        ups[i] = np.zeros((B, T, H + 1), "float32") if i == 0 else bad
        want = f"({B}, {T}, {H})" if i == 0 else f"({B}, {H})"
        with pytest.raises(ValueError, match=re.escape(f"{name}: upstream gradient has shape") + ".*expected "
                           + re.escape(want)):
            pullback(*ups)


def test_lists_take_the_dtype_of_x():
    a = lstm_args()
    out, _, _ = maskrnn.lstm(a["x"], a["kernel"].tolist(), a["recurrent_kernel"], a["bias"].tolist())
    assert out.dtype == np.float32


def test_mixed_devices_are_refused():
    class OnGpu:  # any object exposing __cuda_array_interface__ counts as a GPU array
        __cuda_array_interface__ = {"shape": (B, T, I), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(ValueError, match=r"different devices \(x on cuda, kernel on cpu"):
        call(x=OnGpu())


def test_host_lengths_go_with_a_gpu_problem_but_gpu_lengths_not_with_a_host_one():
    """As torch's pack_padded_sequence, lengths may stay on the host beside GPU arrays (checked there, no wait for
    the GPU); lengths on a GPU beside host arrays are still a device mix-up."""
    from maskrnn._validate import _choose_device

    class OnGpu:
        __cuda_array_interface__ = {"shape": (B,), "typestr": "<i8", "data": (0, False), "version": 3}

    for lengths in (np.array([1, 2, 3]), [1, 2, 3]):
        assert _choose_device(dict(x=OnGpu(), kernel=OnGpu(), lengths=lengths), None) == "cuda"
        assert _choose_device(dict(x=np.zeros(3), lengths=lengths), None) == "cpu"
    with pytest.raises(ValueError, match=r"different devices \(x on cpu, lengths on cuda"):
        _choose_device(dict(x=np.zeros(3), lengths=OnGpu()), None)


def test_mask_and_lengths_as_lists():
    a = lstm_args()
    mask = [[True, True, False], [True, False, False]]
    by_list = maskrnn.lstm(a["x"], a["kernel"], a["recurrent_kernel"], a["bias"], mask=mask)
    by_lengths = maskrnn.lstm(a["x"], a["kernel"], a["recurrent_kernel"], a["bias"], lengths=[2, 1])
    for u, v in zip(by_list, by_lengths):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(TypeError, match="mask must be a boolean"):
        call(mask=[[1, 1, 0], [1, 0, 0]])
