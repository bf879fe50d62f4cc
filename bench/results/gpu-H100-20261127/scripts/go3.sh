#!/usr/bin/env bash
# Final device call: build, GPU tests, memcheck, base vs new host timings of the torch and CuPy paths, bench subset.
set -uo pipefail
export PYTHONUNBUFFERED=1
T0=$SECONDS
MASKRNN_CUDA=ON MASKRNN_CUDA_ARCHS=90 python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . > $OUT/install.log 2>&1 || { tail -40 $OUT/install.log; exit 1; }
echo "install $((SECONDS-T0)) s"
export PYTHONPATH=$PWD
timeout 90 python3 -m pytest -n 8 -q -ra -p no:cacheprovider -k cuda tests > $OUT/pytest.log 2>&1; echo "pytest rc $? $((SECONDS-T0)) s"; grep -E "passed|failed|FAILED|Error" $OUT/pytest.log | tail -12
timeout 45 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tests/gpu_sanitizer_case.py > $OUT/memcheck.log 2>&1; echo "memcheck rc $? $((SECONDS-T0)) s"; tail -2 $OUT/memcheck.log
git worktree add -q /tmp/base 78b21ad 2>/dev/null || git worktree add -q /tmp/base HEAD; git -C /tmp/base log -1 --oneline
cp maskrnn/_ext*.so /tmp/base/maskrnn/
for r in 1 2; do
  for tree in /tmp/base $PWD; do
    (cd /tmp; PYTHONPATH=$tree timeout 30 python3 $OLDPWD/devrun/micro.py quick) 2>&1 | grep -E "from|synced" | tee -a $OUT/ab.txt
  done
done
echo "ab $((SECONDS-T0)) s"
timeout 20 python3 devrun/micro.py > $OUT/micro.txt 2>&1; echo "micro rc $? $((SECONDS-T0)) s"
timeout 45 python3 -m maskrnn bench --configs "64,100,128,256" --devices cuda --repeats 15 --partial --json $OUT/bench.json > $OUT/bench.txt 2>&1; echo "bench rc $? $((SECONDS-T0)) s"
grep -E "^cuda .*(maskrnn|cudnn-packed|torch-unpacked) " $OUT/bench.txt | grep -v fp32 | sed 's/  */ /g' | head -30
