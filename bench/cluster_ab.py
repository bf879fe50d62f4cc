"""A/B of the persistent kernels' cluster size on a GPU: maskrnn's forward and forward+backward timed as ``maskrnn
bench`` times them (CUDA events, the bench's runners and batches, lengths on the host), with MASKRNN_CUDA_CLUSTER
set to each size in turn, rounds interleaved in one process (the variable is read at every call), medians of the
rounds. Every size gives the same bits (tests/test_persistent.py); only the time differs. At H=256 the default
clusters of 8 CTAs run two warps a scheduler, clusters of 16 one warp with half an SM's product: which is faster
is for this script to say.

    python bench/cluster_ab.py [--shapes 64,100,128,256;16,200,64,128] [--sizes ,16] [--rounds 15] [--half]

Needs a CUDA GPU and CuPy. A size that cannot run a shape is reported as such (the call is forced persistent).
"""

import argparse
import os

import numpy as np

SHAPES = "64,100,128,256;16,200,64,128;128,50,256,512"


def main(argv=None):
    from maskrnn import _bench_runners as runners
    from maskrnn import bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=SHAPES, help="B,T,I,H;... (default: %(default)s)")
    parser.add_argument("--sizes", default=",16", help="cluster sizes, '' for the default (default: '%(default)s')")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--half", action="store_true", help="float16 instead of float32")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    timed = bench._timer("cuda")
    os.environ["MASKRNN_CUDA_KERNEL"] = "persistent"  # never a silent fallback to the step kernels
    print("cluster sizes " + " / ".join(s or "default" for s in sizes) + ": ms a call (median of "
          f"{args.rounds} interleaved rounds), then each size's time over the first's")
    try:
        for shape in args.shapes.split(";"):
            cfg = tuple(int(v) for v in shape.split(","))
            for cell in args.cells.split(","):
                weights, batches = runners.workload(cfg, cell, "post", 0)
                for pass_ in ("fwd", "fwd+bwd"):
                    case = dict(cell=cell, mask="post", device="cuda", pass_=pass_)
                    run = runners._maskrnn_runner(case, weights, batches, half=args.half)
                    times = {s: [] for s in sizes}
                    failed = {}
                    for r in range(args.rounds + 2):  # two warm-up rounds
                        for s in sizes:
                            if s in failed:
                                continue
                            os.environ["MASKRNN_CUDA_CLUSTER"] = s
                            try:
                                t = timed(run, r)
                            except RuntimeError as e:
                                failed[s] = str(e)
                                continue
                            if r >= 2:
                                times[s].append(t)
                    med = {s: np.median(v) * 1e3 for s, v in times.items() if v}
                    first = med.get(sizes[0])
                    cols = [f"{med[s]:.3f}" if s in med else "-" for s in sizes]
                    ratios = [f"{med[s] / first:.2f}" if s in med and first else "-" for s in sizes[1:]]
                    print(f"{shape} {cell} {pass_}: " + " / ".join(cols) + " ms; " + " ".join(ratios))
                    for s, why in failed.items():
                        print(f"   size {s or 'default'}: {why}")
    finally:
        os.environ.pop("MASKRNN_CUDA_CLUSTER", None)
        os.environ.pop("MASKRNN_CUDA_KERNEL", None)


if __name__ == "__main__":
    main()
