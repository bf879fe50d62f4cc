#!/usr/bin/env bash
# A/B of two source trees in one run: `maskrnn bench` on each, in separate processes alternated base, this tree,
# this tree, base (per round), so that drift on a shared machine falls on both. For host-side changes, whose gain
# only a GPU shows: extract the base first, e.g. `git archive fb92da3 | tar -x -C /tmp/base` (carried to the
# device machine like any untracked folder), then on the GPU machine, after `bash bench/gpu_verify.sh` (or any
# install of this tree):
#
#   bash bench/ab_trees.sh BASE_DIR [ROUNDS] [bench options...]
#   e.g. bash bench/ab_trees.sh devrun/base 2 --configs 64,100,128,256 --cells lstm --devices cuda
#
# Builds BASE_DIR's extension in place (MASKRNN_CUDA=ON, this GPU's architecture) unless it has one, then prints
# each process's table under a "== <tree> round <r>" header. Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BASE=$(cd "${1:?usage: bash bench/ab_trees.sh BASE_DIR [ROUNDS] [bench options...]}" && pwd)
ROUNDS=${2:-2}
shift $(($# < 2 ? $# : 2))
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ' || true)
if ! ls "$BASE"/maskrnn/_ext*.so >/dev/null 2>&1; then
  echo "== building $BASE (sm_${ARCH:-90})"
  (cd "$BASE" && MASKRNN_CUDA=ON MASKRNN_CUDA_ARCHS=${ARCH:-90} "$PY" setup.py -q build_ext --inplace) \
    >"$BASE/build.log" 2>&1 || { tail -20 "$BASE/build.log" >&2; echo "the base tree did not build" >&2; exit 1; }
fi
for ((r = 1; r <= ROUNDS; r++)); do
  for tree in "$BASE" "$PWD" "$PWD" "$BASE"; do
    echo "== $([ "$tree" = "$PWD" ] && echo this || echo base) round $r: $tree"
    (cd "$tree" && PYTHONPATH="$tree" "$PY" -m maskrnn bench "$@")
  done
done
