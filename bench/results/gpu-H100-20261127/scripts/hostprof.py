"""Host cost of one maskrnn forward on CuPy arrays at (64,100,128,256): synced wall, issue-only wall, cProfile."""
import cProfile, pstats, time, io
import numpy as np, cupy
import sys
import maskrnn
QUICK = "quick" in sys.argv
print("maskrnn from", maskrnn.__file__)

B, T, I, H = 64, 100, 128, 256
rng = np.random.default_rng(0)
for cell, G in (("lstm", 4), ("gru", 3)):
    x = cupy.asarray(rng.standard_normal((B, T, I)), "float32")
    W = cupy.asarray(rng.standard_normal((I, G * H)) * I ** -0.5, "float32")
    U = cupy.asarray(rng.standard_normal((H, G * H)) * H ** -0.5, "float32")
    b = cupy.zeros(G * H if cell == "lstm" else (2, G * H), "float32")
    lengths = rng.integers(T // 4, T + 1, B); lengths[0] = T
    mask = cupy.asarray(rng.random((B, T)) > 0.1)
    op = maskrnn.lstm if cell == "lstm" else maskrnn.gru
    for name, steps in (("host-lengths", dict(lengths=lengths)), ("dev-lengths", dict(lengths=cupy.asarray(lengths))),
                        ("holes", dict(mask=mask))):
        f = lambda: op(x, W, U, b, **steps)
        for _ in range(20): f()
        cupy.cuda.Device().synchronize()
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            f(); cupy.cuda.Device().synchronize()
        synced = (time.perf_counter() - t0) / n * 1e3
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        issue = (time.perf_counter() - t0) / n * 1e3
        cupy.cuda.Device().synchronize()
        s0, s1 = cupy.cuda.Event(), cupy.cuda.Event()
        s0.record(); f(); s1.record(); s1.synchronize()
        print(f"{cell} {name}: synced {synced:.3f} ms/call, issue-only {issue:.3f} ms/call, events {cupy.cuda.get_elapsed_time(s0, s1):.3f} ms", flush=True)
        if name == "host-lengths" and cell == "lstm" and not QUICK:
            pr = cProfile.Profile(); pr.enable()
            for _ in range(n):
                f()
            pr.disable(); cupy.cuda.Device().synchronize()
            s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(28); print(s.getvalue()[-9000:])
            s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats(30); print(s.getvalue()[-7000:])
