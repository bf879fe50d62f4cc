"""Per-step timing of maskrnn's GPU scans vs cuDNN (CUDA events), and a short workload for ncu."""
import os, sys, time
import torch
import maskrnn.torch as mt

torch.manual_seed(0)
dev = "cuda"
mode = sys.argv[1] if len(sys.argv) > 1 else "time"
configs = [(64, 100, 128, 256), (16, 200, 64, 128), (128, 50, 256, 512), (4, 200, 256, 512)]
if mode == "ncu":
    configs = configs[:1]


def make(B, T, I, H, G, dtype=torch.float32):
    x = torch.randn(B, T, I, device=dev, dtype=dtype)
    W = (torch.randn(I, G * H, device=dev) * I ** -0.5).to(dtype)
    U = (torch.randn(H, G * H, device=dev) * H ** -0.5).to(dtype)
    b = torch.zeros(G * H, device=dev, dtype=dtype)
    lengths = torch.randint(T // 4, T + 1, (B,), device=dev)
    lengths[0] = T
    return x, W, U, b, lengths


def timeit(fn, reps=15):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(); fn(); e1.record(); torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return ts[len(ts) // 2]


for (B, T, I, H) in configs:
    for cell in ("lstm", "gru"):
        G = 4 if cell == "lstm" else 3
        x, W, U, b, lengths = make(B, T, I, H, G)
        op = mt.lstm if cell == "lstm" else mt.gru
        b = b if cell == "lstm" else None
        fwd = lambda: op(x, W, U, b, lengths=lengths)
        if mode == "ncu":
            fwd(); torch.cuda.synchronize()
            Wg, Ug = W.clone().requires_grad_(), U.clone().requires_grad_()
            o = op(x, Wg, Ug, b, lengths=lengths)[0]
            o.sum().backward(); torch.cuda.synchronize()
            continue
        Wg, Ug, xg = W.clone().requires_grad_(), U.clone().requires_grad_(), x.clone().requires_grad_()
        def fb():
            o = op(xg, Wg, Ug, b, lengths=lengths)[0]
            o.sum().backward()
        ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, batch_first=True).to(dev)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        def cud():
            with torch.no_grad():
                ref(packed)
        host = lengths.cpu()
        fwdh = lambda: op(x, W, U, b, lengths=host)
        row = [f"host-lengths fwd {timeit(fwdh):.3f}"]
        for kern in ("auto", "step"):
            os.environ["MASKRNN_CUDA_KERNEL"] = kern
            try:
                row.append(f"{kern}: fwd {timeit(fwd):.3f} fwd+bwd {timeit(fb):.3f}")
            except Exception as e:
                row.append(f"{kern}: {type(e).__name__} {e}"[:120])
        os.environ.pop("MASKRNN_CUDA_KERNEL")
        print(f"{cell} B,T,I,H={B},{T},{I},{H} cudnn-packed fwd {timeit(cud):.3f} ms | " + " | ".join(row), flush=True)
