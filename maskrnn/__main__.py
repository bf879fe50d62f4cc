"""Command line: ``python -m maskrnn info`` prints build/device info; ``python -m maskrnn bench`` benchmarks;
``python -m maskrnn precompile`` compiles the common CPU kernels into the kernel cache."""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print version, CPU backend, CUDA build and GPUs as JSON")
    sub.add_parser("precompile", help="compile the common CPU kernels into the kernel cache now (pip install "
                   "already does; for images whose package was installed without it)")
    from . import bench

    bench.add_arguments(sub.add_parser("bench", help="benchmark against cuDNN, PyTorch and Keras"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    if args.command == "precompile":
        from ._precompile import main as precompile

        print(precompile())
        return 0
    from . import info

    print(json.dumps(info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
