#!/usr/bin/env bash
# Device call: build (sm_90), GPU tests, racecheck/memcheck, per-step timings, full bench (partial JSON).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
T0=$SECONDS
MASKRNN_CUDA=ON MASKRNN_CUDA_ARCHS=90 python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . > $OUT/install.log 2>&1 || { tail -40 $OUT/install.log; exit 1; }
echo "install $((SECONDS-T0)) s"
timeout ${PT:-90} python3 -m pytest -n 8 -q -ra -p no:cacheprovider -k cuda tests > $OUT/pytest.log 2>&1; echo "pytest rc $? $((SECONDS-T0)) s"; grep -E "passed|failed|FAILED|Error" $OUT/pytest.log | tail -15
for tool in racecheck memcheck; do
  timeout ${ST:-75} compute-sanitizer --tool $tool --error-exitcode 9 python3 tests/gpu_sanitizer_case.py > $OUT/$tool.log 2>&1; echo "$tool rc $? $((SECONDS-T0)) s"; tail -3 $OUT/$tool.log
done
timeout 60 python3 devrun/prof.py time 2>&1 | tee $OUT/time.txt; echo "time $((SECONDS-T0)) s"
timeout ${BT:-150} python3 -m maskrnn bench --full --devices cuda --partial --json $OUT/bench-full.json > $OUT/bench-full.txt 2>&1; echo "bench rc $? $((SECONDS-T0)) s"
grep -iE "lstm|gru" $OUT/bench-full.txt | head -40
