"""Resources of a scan: chunked scans equal whole ones, peak memory stays near the minimum (inference keeps no
tape), and Ctrl-C reaches a long CPU scan between chunks of steps."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, on_device, random_upstream
from conftest import TOLERANCE, make_mask, rel_err, to_device, to_host

import maskrnn
from maskrnn import _scan


def _call(fn, device, cell, p, **kw):
    dev = on_device(p, device)
    x, W, U = dev.pop("x"), dev.pop("kernel"), dev.pop("recurrent_kernel")
    kw = {k: to_device(v, device) for k, v in kw.items()}
    return fn(x, W, U, dev.pop("bias", None), **dev, **kw, **cell_fns(cell)[3])


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("mask_kind", ["post", "pre", "holes", "post_holes"])
@pytest.mark.parametrize("cell", CELLS)
def test_chunked_scan_matches_reference_and_whole_scan(device, rng, monkeypatch, cell, mask_kind, zero_output):
    """Chunks of 3 steps: carried outputs and states cross chunk boundaries, forward and gradients."""
    B, T, I, H = 6, 11, 3, 5
    p = make_problem(rng, cell, B, T, I, H, "float64", initial_state=True)
    kw = dict(mask=make_mask(rng, mask_kind, B, T), zero_output_for_mask=zero_output, go_backwards=True)
    op, vjp, ref, extra = cell_fns(cell)
    ups = [to_device(u, device) for u in random_upstream(rng, cell, B, T, H)]
    whole_res, whole_pb = _call(vjp, device, cell, p, **kw)
    whole_grads = whole_pb(*ups)
    monkeypatch.setattr(_scan, "MAX_CHUNK_STEPS", 3)
    q = dict(p)
    want = ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **q, **kw, **extra)
    for got, w in zip(_call(op, device, cell, p, **kw), want):
        assert rel_err(got, w) < TOLERANCE["float64"]
    res, pb = _call(vjp, device, cell, p, **kw)
    for got, w in zip(res, want):
        assert rel_err(got, w) < TOLERANCE["float64"]
    for got, w in zip(pb(*ups), whole_grads):
        assert rel_err(got, to_host(w)) < TOLERANCE["float64"] if w is not None else got is None


def _peak_bytes(fn):
    """Bytes allocated (NumPy reports to tracemalloc) at the peak of fn(), beyond what was live before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("cell", CELLS)
def test_inference_peak_memory_at_most_twice_the_minimum(rng, cell):
    B, T, I, H = 64, 300, 48, 64
    p = make_problem(rng, cell, B, T, I, H, "float32")
    lengths = rng.integers(T // 4, T + 1, B)
    mask = (np.arange(T)[None, :] < lengths[:, None]) & (rng.random((B, T)) > 0.1)
    op, _, _, extra = cell_fns(cell)
    G, n_states, item = 4 if cell == "lstm" else 3, 2 if cell == "lstm" else 1, 4
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p["bias"])
    op(*args, mask=mask, **extra)  # compiles or loads the kernels: not the scan's memory
    peak, res = _peak_bytes(lambda: op(*args, mask=mask, **extra))
    np.testing.assert_allclose(res[0], op(*args, mask=mask, **extra)[0])  # the measured call did the work
    inputs = sum(a.nbytes for a in args) + mask.nbytes
    minimum = inputs + item * (T * B * H + n_states * B * H + B * (I + G * H + 2 * H))
    assert inputs + peak <= 2 * minimum, (inputs + peak) / minimum


@pytest.mark.parametrize("cell", CELLS)
def test_training_peak_memory_within_one_and_a_half_of_what_backward_needs(rng, cell):
    B, T, I, H = 64, 300, 48, 64
    p = make_problem(rng, cell, B, T, I, H, "float32")
    lengths = rng.integers(T // 4, T + 1, B)
    _, vjp, _, extra = cell_fns(cell)
    G, n_states, item = 4 if cell == "lstm" else 3, 2 if cell == "lstm" else 1, 4
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p["bias"])
    inputs = sum(a.nbytes for a in args)
    # Backward needs the inputs with a ones column (weight and bias gradients), the gate activations, the
    # states before each step (and the GRU's reset-gated term: one more (T,B,H)).
    tape = item * (T * B * (I + 1) + T * B * G * H + (n_states + (cell != "lstm")) * (T + 1) * B * H)
    outputs = item * (T * B * H + n_states * B * H)
    ups = [u.astype("float32") for u in random_upstream(rng, cell, B, T, H)]
    vjp(*args, lengths=lengths, **extra)[1](*ups)  # compiles or loads the kernels: not the scan's memory
    peak, (res, pullback) = _peak_bytes(lambda: vjp(*args, lengths=lengths, **extra))
    assert inputs + peak <= 1.5 * (inputs + outputs + tape), (inputs + peak) / (inputs + outputs + tape)
    grads_bytes = inputs + n_states * B * H * item + (B * 3 * H * item if cell == "gru" else 0)
    # Backward also needs the gradient of the gate pre-activations (GRU reset_after: and of the recurrent ones).
    work = item * T * B * G * H * (2 if cell == "gru" else 1)
    live = inputs + outputs + tape + sum(u.nbytes for u in ups)
    peak, _ = _peak_bytes(lambda: pullback(*ups))
    assert live + peak <= 1.5 * (live + grads_bytes + work), (live + peak) / (live + grads_bytes + work)


_LONG_SCAN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import maskrnn
    T = 2_000_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, T, 1)).astype("float32")
    W, U = (rng.standard_normal(s).astype("float32") * 0.3 for s in ((1, 16), (4, 16)))
    def run(x):  # op: a forward scan, or the pullback (backward scan) of a training forward
        if "{op}" != "pullback":
            return lambda: maskrnn.{op}(x, W, U)
        (out, h, c), pullback = maskrnn.lstm_vjp(x, W, U)
        return lambda: pullback(out)
    run(x[:, :10])()  # compiled or loaded from the cache before the clock starts
    scan = run(x)
    print("scanning", flush=True)
    try:
        scan()
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
""")


@pytest.mark.parametrize("op", ["lstm", "lstm_vjp", "pullback"])
def test_ctrl_c_reaches_a_long_cpu_scan_within_half_a_second(op):
    code = _LONG_SCAN.replace("{op}", op)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "scanning"
        time.sleep(0.3)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        words = child.stdout.readline().split()
    finally:
        child.kill()
        child.wait()
    assert words and words[0] == "interrupted", words  # the scan was still running when the signal came
    assert float(words[1]) - sent < 0.5


def _threads():
    return len(os.listdir("/proc/self/task"))


def _threads_back_to(baseline, within_s=1.0):
    """The thread count, once it is back to baseline or after within_s. OpenBLAS's shutdown joins its threads,
    but a joined thread can still be listed in /proc for a moment (its joiner wakes before it is reaped); a pool
    left running stays listed for good."""
    end = time.monotonic() + within_s
    while _threads() != baseline and time.monotonic() < end:
        time.sleep(0.01)
    return _threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
@pytest.mark.parametrize("op", ["lstm", "lstm_vjp"])
def test_blas_threads_stop_when_a_cpu_call_returns(rng, op):
    """Idle OpenBLAS threads busy-wait and would take the cores from whatever the caller runs next."""
    from maskrnn import _cpu, _dispatch
    from maskrnn._cpu.blas import _shutdown

    if _shutdown is None or _dispatch._engine("cpu")[1] is not _cpu:
        pytest.skip("the CPU engine's BLAS is not OpenBLAS, or another engine runs device 'cpu' (CUDA emulation)")
    p = make_problem(rng, "lstm", 64, 20, 32, 128, "float32")
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p["bias"])
    getattr(maskrnn, op)(*args)
    _shutdown()
    baseline = _threads()
    a = np.ones((512, 512), "float32")
    _cpu.matmul(a, a)  # the engine's BLAS outside a maskrnn call: its pool starts and stays
    if _threads() == baseline:
        pytest.skip("OpenBLAS runs single-threaded here")
    res = getattr(maskrnn, op)(*args)
    assert _threads_back_to(baseline) == baseline
    if op == "lstm_vjp":
        _cpu.matmul(a, a)
        res[1](rng.standard_normal((64, 20, 128)).astype("float32"))
        assert _threads_back_to(baseline) == baseline


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_cpu_thread_stays_busy_after_a_call(rng, cell):
    """The threads a CPU call uses (OpenBLAS's, the batch split's: maskrnn/_cpu/rows.py) neither spin nor stay:
    while the caller sleeps, the process uses no CPU time, and the thread count is back where it was."""
    from maskrnn import _cpu, _dispatch

    if _dispatch._engine("cpu")[1] is not _cpu:
        pytest.skip("another engine runs device 'cpu' (CUDA emulation)")
    B, T, I, H = 64, 30, 32, 128  # the batch splits across threads (rows.threads_for) where there are several
    _, vjp, _, extra = cell_fns(cell)
    p = make_problem(rng, cell, B, T, I, H, "float32")
    args = (p["x"], p["kernel"], p["recurrent_kernel"], p["bias"])
    ups = [u.astype("float32") for u in random_upstream(rng, cell, B, T, H)]
    vjp(*args, **extra)[1](*ups)  # compiles or loads the kernels
    baseline = _threads()
    vjp(*args, **extra)[1](*ups)
    start = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - start < 0.05
    if os.path.isdir("/proc/self/task"):
        assert _threads_back_to(baseline) == baseline
