#!/usr/bin/env bash
bash devrun/call.sh
timeout 40 python3 devrun/tprof.py > $OUT/tprof.txt 2>&1; echo "tprof rc $?"
