"""Command line: ``python -m maskrnn info`` prints build/device info; ``python -m maskrnn bench`` benchmarks."""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print version, CPU backend, CUDA build and GPUs as JSON")
    from . import bench

    bench.add_arguments(sub.add_parser("bench", help="benchmark against cuDNN, PyTorch and Keras (SPEC.md 6)"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    from . import info

    print(json.dumps(info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
