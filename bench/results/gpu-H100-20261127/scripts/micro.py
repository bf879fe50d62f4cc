"""Host cost per call of CuPy/torch operations the GPU forward uses, and a cProfile of maskrnn.torch.lstm."""
import cProfile, io, pstats, sys, time
import numpy as np, cupy, torch
import maskrnn, maskrnn.torch as mt

B, T, I, H = 64, 100, 128, 256
G = 4
rng = np.random.default_rng(0)
x = cupy.asarray(rng.standard_normal((T, B, I)), "float32")
W = cupy.asarray(rng.standard_normal((I, G * H)) * 0.05, "float32")
gx = cupy.empty((T, B, G * H), "float32")
b = cupy.zeros(G * H, "float32")
idx = cupy.arange(B, dtype=cupy.int32)[::-1].copy()
small = np.arange(2 * B + T, dtype=np.int32)
s = cupy.empty((T + 1, B, H), "float32")
h0 = cupy.zeros((B, H), "float32")
tx = torch.randn(B, T, I, device="cuda")

def per_call(name, f, n=500):
    for _ in range(20): f()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(n): f()
    dt = (time.perf_counter() - t0) / n * 1e6
    cupy.cuda.Device().synchronize()
    print(f"{name:48s} {dt:7.1f} us/call (issue)", flush=True)

x2, g2 = x.reshape(T * B, I), gx.reshape(T * B, G * H)
QUICK = "quick" in sys.argv
print("maskrnn from", maskrnn.__file__)
if QUICK:
    per_call = lambda *a, **k: None  # noqa: E731
per_call("cupy.matmul(a, b, out=)", lambda: cupy.matmul(x2, W, out=g2), 200)
per_call("cupy.dot(a, b, out=)", lambda: cupy.dot(x2, W, out=g2), 200)
try:
    import cupy.cublas
    per_call("cupy.cublas.gemm('N','N', a, b, out=)", lambda: cupy.cublas.gemm("N", "N", x2, W, out=g2), 200)
except Exception as e:
    print("cublas.gemm", type(e).__name__, e)
per_call("gx += b", lambda: gx.__iadd__(b))
per_call("cupy.add(gx, b, out=gx)", lambda: cupy.add(gx, b, out=gx))
per_call("take(x, idx, axis=1)", lambda: cupy.take(x, idx, axis=1))
per_call("x.take(idx, axis=1)", lambda: x.take(idx, axis=1))
per_call("x[:, idx]", lambda: x[:, idx])
per_call("s[0] = h0", lambda: s.__setitem__(0, h0))
per_call("s[0].fill(0)", lambda: s[0].fill(0))
per_call("cupy.empty((T+1,B,H))", lambda: cupy.empty((T + 1, B, H), "float32"))
per_call("cupy.zeros((B,H))", lambda: cupy.zeros((B, H), "float32"))
per_call("cupy.asarray(np int32 (2B+T,))", lambda: cupy.asarray(small))
per_call("cupy.asarray(cupy array)", lambda: cupy.asarray(x))
per_call("s[5].copy()", lambda: s[5].copy())
per_call("cupy.from_dlpack(torch)", lambda: cupy.from_dlpack(tx))
per_call("torch.from_dlpack(cupy)", lambda: torch.from_dlpack(x))
per_call("Stream.from_external(torch stream)", lambda: cupy.cuda.Stream.from_external(torch.cuda.current_stream()))
st = torch.cuda.current_stream()
def enter():
    with cupy.cuda.Stream.from_external(st):
        pass
per_call("with Stream.from_external(...)", enter)
per_call("cupy.cuda.get_current_stream().ptr", lambda: cupy.cuda.get_current_stream().ptr)

# The torch path against the CuPy path, host lengths, no grad.
tW = torch.randn(I, G * H, device="cuda") * 0.05
tU = torch.randn(H, G * H, device="cuda") * 0.06
tb = torch.zeros(G * H, device="cuda")
lengths = torch.randint(T // 4, T + 1, (B,)); lengths[0] = T
cx, cW, cU, cb = (cupy.from_dlpack(t) for t in (tx, tW, tU, tb))
nl = lengths.numpy()
for name, f in (("maskrnn.lstm (CuPy)", lambda: maskrnn.lstm(cx, cW, cU, cb, lengths=nl)),
                ("maskrnn.torch.lstm", lambda: mt.lstm(tx, tW, tU, tb, lengths=lengths))):
    for _ in range(20): f()
    torch.cuda.synchronize()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        f(); torch.cuda.synchronize()
    synced = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    for _ in range(n): f()
    issue = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    print(f"{name}: synced {synced:.3f} ms, issue-only {issue:.3f} ms", flush=True)
if QUICK:
    sys.exit()
pr = cProfile.Profile(); pr.enable()
for _ in range(200):
    mt.lstm(tx, tW, tU, tb, lengths=lengths)
pr.disable(); torch.cuda.synchronize()
o = io.StringIO(); pstats.Stats(pr, stream=o).sort_stats("tottime").print_stats(35); print(o.getvalue()[-9000:])
