"""pytest-benchmark timings of maskrnn's kernels on SPEC.md section 6's workloads (run on demand:
`pytest bench/ --benchmark-enable`; not part of the test run). Workloads come from maskrnn.bench."""

import pytest

from maskrnn import bench

CASES = [(cfg, cell, mask) for cfg in bench.CONFIGS[:4] for cell in ("lstm", "gru") for mask in ("post", "holes")]
IDS = ["x".join(map(str, cfg)) + f"-{cell}-{mask}" for cfg, cell, mask in CASES]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize(("cfg", "cell", "mask"), CASES, ids=IDS)
@pytest.mark.parametrize("device", bench.available_devices())
def test_maskrnn(benchmark, device, cfg, cell, mask, backward):
    weights, batches = bench.workload(cfg, cell, mask, seed=0)
    case = dict(cell=cell, mask=mask, device=device, pass_="fwd+bwd" if backward else "fwd")
    run = bench.RUNNERS["maskrnn"](case, weights, batches)
    run(0)  # compile / load outside the timings
    calls = iter(range(10**9))
    if device == "cuda":
        import cupy

        def step():
            run(next(calls))
            cupy.cuda.get_current_stream().synchronize()
    else:
        def step():
            run(next(calls))
    benchmark(step)
