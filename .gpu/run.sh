#!/usr/bin/env bash
# On a GPU machine, from the repository root, after `.gpu/bundle.sh` ran on a build machine:
# the CUDA path checked against the CPU, half precision's accuracy cost, and the benchmark
# table on the card beside python torchvision on the same card. Logs go to $OUT (default
# runs/gpu); the last lines printed are the summary.
#
#     .gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT" runs
B=.gpu/bundle
L=/tmp/lookalike
xz -dc "$B/lookalike.xz" > "$L" && chmod +x "$L"

# The machine's own libtorch and CUDA libraries (python imports them by path; a binary needs them listed).
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
SITE=$(dirname "$(dirname "$TORCH_LIB")")
NVIDIA=$(find "$SITE/nvidia" "$SITE/cusparselt" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="$TORCH_LIB:$NVIDIA${LD_LIBRARY_PATH:-}"
mkdir -p /usr/share/datasets/fashion-mnist && cp "$B"/fashion-mnist/* /usr/share/datasets/fashion-mnist/
export LOOKALIKE__MODELS__DIR="$PWD/$B/models"
# MiniLM (91 MB) does not travel: sentences are read by the lexical method alone here.
export LOOKALIKE__TEXT__METHODS='["lexical"]'
export LOOKALIKE__MODELS__HEADS_DIR=runs/gpu-heads

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc in $((SECONDS - started)) s" >> "$OUT/$name.log"
    tail -n 40 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'; nproc; } 2>&1 | tee "$OUT/machine.log"
ldd "$L" | grep -E 'not found|libtorch' | tee "$OUT/ldd.log"
step parity "$L" bench --only device --rounds 10
step dataset "$L" dataset --out runs/gpu-fm --train-per-class 100 --val-per-class 10 --test-per-class 300
step train "$L" train --data runs/gpu-fm --out runs/gpu-heads --cache runs/gpu-cache
step eval-f32 "$L" eval --data runs/gpu-fm/test --png "$OUT/confusion-f32.png"
step eval-f16 env LOOKALIKE__MODELS__PRECISION=f16 "$L" eval --data runs/gpu-fm/test --png "$OUT/confusion-f16.png"
step bench "$L" bench --profile chapter --profile kit --catalogue-size 2000 --rounds 50
step bench-f16 env LOOKALIKE__MODELS__PRECISION=f16 "$L" bench --profile chapter --profile kit --catalogue-size 2000 --rounds 50 --no-python
echo "== summary"
grep -h -E "^(kit|chapter) |tolerance|ACCURACY|^  (head|pooled)|indexing|concurrency 1,|python|rc=" "$OUT"/*.log
