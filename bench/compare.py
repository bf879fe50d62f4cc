"""Comparison against cuDNN, PyTorch and Keras: the same as `python -m maskrnn bench` (see maskrnn/bench.py).

    python bench/compare.py --full --json bench/results/cpu-full.json --plot bench/results/cpu-full.png
"""

import sys

from maskrnn.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
