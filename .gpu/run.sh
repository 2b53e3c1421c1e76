#!/usr/bin/env bash
# On a GPU machine, from the repository root, after `.gpu/bundle.sh` ran on a build machine:
# the CUDA path checked against the CPU, half precision's accuracy cost, and the benchmark
# table on the card beside python torchvision on the same card. Logs go to $OUT (default
# runs/gpu); the last lines printed are the summary.
#
#     .gpu/run.sh                       # everything, about 5 minutes on an H200
#     STEPS="parity bench" .gpu/run.sh  # some steps only
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
# OpenSSL 3 travels too, last in the search path: the machine's own wins where it has one.
export LD_LIBRARY_PATH="$TORCH_LIB:$NVIDIA${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PWD/$B/lib"
mkdir -p /usr/share/datasets/fashion-mnist && cp "$B"/fashion-mnist/* /usr/share/datasets/fashion-mnist/
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$FONT" ] || { mkdir -p "$(dirname "$FONT")" && cp "$B/DejaVuSans.ttf" "$FONT"; }
export LOOKALIKE__MODELS__DIR="$PWD/$B/models"
# MiniLM (91 MB) does not travel: sentences are read by the lexical method alone here.
export LOOKALIKE__TEXT__METHODS='["lexical"]'
export LOOKALIKE__MODELS__HEADS_DIR=runs/gpu-heads

# Each step has a time limit, so that one slow step cannot starve the others of a lease.
run_step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc in $((SECONDS - started)) s" >> "$OUT/$name.log"
    tail -n 30 "$OUT/$name.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
    echo "cpus: $(nproc)"
    ldd "$L" | grep -E 'not found|libtorch|libssl'
    "$L" models list
} > "$OUT/machine.log" 2>&1
cat "$OUT/machine.log"
"$L" --version > /dev/null || { echo "the binary does not start here: see ldd above"; exit 1; }

# STEPS picks some of them (default: all), e.g. STEPS="parity bench" .gpu/run.sh
STEPS="${STEPS:-parity bench train eval-f32 eval-f16 bench-f16 clip eval-clip}"
step() {
    case " $STEPS " in *" $1 "*) run_step "$@" ;; *) echo "== $1: skipped (STEPS)" ;; esac
}

step parity 150 "$L" bench --only device --rounds 10
step bench 240 "$L" bench --profile chapter --profile kit --catalogue-size 2000 --rounds 50
step train 120 sh -c "'$L' dataset --out runs/gpu-fm --train-per-class 100 --val-per-class 10 --test-per-class 300 && '$L' train --data runs/gpu-fm --out runs/gpu-heads --cache runs/gpu-cache"
step eval-f32 40 "$L" eval --data runs/gpu-fm/test --png runs/gpu-confusion-f32.png
step eval-f16 40 env LOOKALIKE__MODELS__PRECISION=f16 "$L" eval --data runs/gpu-fm/test --png runs/gpu-confusion-f16.png
step bench-f16 150 env LOOKALIKE__MODELS__PRECISION=f16 "$L" bench --profile chapter --profile kit --catalogue-size 2000 --rounds 50 --no-python
# The clip embedder: a query with its image tower beside the kit's (random ViT-B/32 weights
# unless `models fetch clip` ran where the bundle was made), then its precision@5 when installed.
step clip 90 "$L" bench --only vision --profile kit --rounds 30
step eval-clip 60 sh -c "if '$L' models list --profile clip | grep -q installed; then LOOKALIKE__INDEX__EMBEDDING=clip '$L' eval --data runs/gpu-fm/test --png runs/gpu-confusion-clip.png; else echo 'clip weights not installed: skipped'; fi"
echo "== summary"
grep -h -E "^(kit|chapter) |tolerance|ACCURACY|^  (head|pooled|clip)|clip embedder|indexing|concurrency 1,|python|rc=" "$OUT"/*.log
