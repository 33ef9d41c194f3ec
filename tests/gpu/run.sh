#!/usr/bin/env bash
# The GPU acceptance run (make test-gpu): doctor, the tests/gpu suite, then the benchmarks
# behind the README's GPU targets, each step bounded in time. Everything lands in $GPU_OUT
# (default results/gpu), eight files: doctor.txt, tests.txt, numbers.jsonl (the figures the
# tests measured), train.txt + train.json, layers.txt + layers.json, targets.txt.
# Exit status 1 if any step failed (a target missed is reported, not a failure).
# PY: the Python that has a CUDA build of torch and the project's dependencies.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
GPU_OUT=${GPU_OUT:-results/gpu}
mkdir -p "$GPU_OUT"
export PYTHONUNBUFFERED=1 MOE_GPU_OUT="$GPU_OUT"
status=0

step() {  # step NAME SECONDS COMMAND...: run it, its output to the screen and NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$GPU_OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then echo "== $name: exit $rc"; status=1; fi
}

step doctor 60 "$PY" -m harness.cli doctor --gpu
step tests 420 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/gpu
step train 240 "$PY" -m harness.cli bench train vit-s/16 vit-s/16:soft:e128:s1 \
    --batch-size 256 --precision bf16 --out "$GPU_OUT/train.json"
step layers 300 "$PY" -m harness.cli bench layers --device cuda --precision bf16 \
    --experts 128 --slots 1 --repeats 5 --out "$GPU_OUT/layers.json"
step targets 30 "$PY" tests/gpu/targets.py "$GPU_OUT"
exit $status
