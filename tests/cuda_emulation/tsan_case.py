"""The scans run under ThreadSanitizer (test_tsan.py starts this with LD_PRELOAD=libtsan and EMU_BUILD set to
a TSan build): every cell, masked (holes) and packed (post-padded), forward and backward, float32 (the TSan
build instruments the float32 kernels), each checked against the float64 reference. Sizes give every launch
two column tiles (blocks) and products over more than one 32-wide tile, so each barrier of tile_dot matters;
one row tile keeps the thread count (TSan's cost) low. Each case runs with the persistent kernels (forward and
backward, every cell) and with the step kernels (MASKRNN_CUDA_KERNEL), and with the cooperative kernels (37
CTAs of one unit). ``--one KERNEL [CELL] [backward]`` (a mutant's): only the LSTM's
masked forward by that kernel (its backward too with ``backward``), or CELL's masked forward and backward.
``--registers`` (on a build with MASKRNN_PERSIST_REG_K, MASKRNN_PERSIST_BWD_REG_K and MASKRNN_PERSIST_BWD_V1_REG_K
small enough for H = 37): MASKRNN_CUDA_KERNEL=registers, every cell forward and backward.
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1]), str(Path(__file__).parents[2])]
import plugin  # noqa: E402,F401 -- the emulated engine on device "cpu"
from cells import CELLS, cell_fns, make_problem, random_upstream  # noqa: E402
from conftest import TOLERANCE, make_mask, rel_err  # noqa: E402

B, T, I, H = 5, 4, 3, 37


def run(cell, steps, backward, kernel):
    os.environ["MASKRNN_CUDA_KERNEL"] = kernel
    rng = np.random.default_rng(len(cell) + len(steps))
    _, vjp, ref, extra = cell_fns(cell)
    p = make_problem(rng, cell, B, T, I, H)
    mask = make_mask(rng, "holes" if steps == "mask" else "post", B, T)
    kw = {"mask": mask} if steps == "mask" else {"lengths": mask.sum(axis=1)}
    q = {k: v.astype(np.float32) for k, v in p.items()}
    outs, pullback = vjp(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **kw, **extra)
    q = dict(p)
    for got, want in zip(outs, ref(q.pop("x"), q.pop("kernel"), q.pop("recurrent_kernel"), q.pop("bias"), **kw,
                                   **extra)):
        assert rel_err(got, want) < TOLERANCE["float32"], (cell, steps, kernel)
    if backward:
        grads = pullback(*(u.astype(np.float32) for u in random_upstream(rng, cell, B, T, H)))
        assert all(np.isfinite(g).all() for g in grads if g is not None), (cell, steps, kernel)


def main():
    one = sys.argv[2:] + ["lstm"]
    if "--one" in sys.argv:
        cases = [(one[1], "mask", one[1] != "lstm" or "backward" in sys.argv, one[0])]
    elif "--registers" in sys.argv:  # the variants with part of U in registers (a build with small counts of rows)
        cases = [(cell, steps, True, "registers") for cell in CELLS for steps in ("mask", "lengths")]
    else:
        cases = [(cell, steps, True, kernel) for cell in CELLS for steps in ("mask", "lengths")
                 for kernel in ("persistent", "step")] + [
            (cell, steps, True, "cooperative") for cell in CELLS for steps in ("mask", "lengths")]
    for case in cases:
        run(*case)
    print(f"{len(cases)} cases ok")


if __name__ == "__main__":
    main()
