import torch, maskrnn.torch as mt
from torch.profiler import profile, ProfilerActivity
dev = "cuda"
B, T, I, H = 64, 100, 128, 256
x = torch.randn(B, T, I, device=dev); W = torch.randn(I, 4 * H, device=dev) * 0.1
U = torch.randn(H, 4 * H, device=dev) * 0.06; b = torch.zeros(4 * H, device=dev)
lengths = torch.randint(T // 4, T + 1, (B,), device=dev); lengths[0] = T
Wg = W.clone().requires_grad_()
for _ in range(3):
    mt.lstm(x, W, U, b, lengths=lengths); mt.lstm(x, Wg, U, b, lengths=lengths)[0].sum().backward()
torch.cuda.synchronize()
host = lengths.cpu()
for name, fn in (("fwd", lambda: mt.lstm(x, W, U, b, lengths=lengths)),
                 ("fwd-host-lengths", lambda: mt.lstm(x, W, U, b, lengths=host)),
                 ("fwdbwd", lambda: mt.lstm(x, Wg, U, b, lengths=lengths)[0].sum().backward())):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    print("=====", name)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60))
