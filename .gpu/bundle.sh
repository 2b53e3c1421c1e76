#!/usr/bin/env bash
# Prepares, on a build machine with internet, everything `.gpu/run.sh` needs on a GPU machine
# that has none: a lookalike binary linked against the libtorch of that machine's python torch,
# the offline kit's backbones and Fashion-MNIST. Writes .gpu/bundle/ (git-ignored, < 64 MiB).
#
#     .gpu/bundle.sh            # TORCH=2.11.0 by default: the torch of the GPU image used here
#
# Why a second libtorch: the GPU image's python has torch 2.11 (CUDA 13), nothing can be
# installed there, and libtorch_cuda 2.4 (the version rust-bert 0.23 / tch 0.17 pin) is far
# larger than what travels. tch 0.17's C wrapper compiles against 2.11's headers except three
# operators lookalike never calls (fp8 matmul, cuDNN attention backward), which are made to
# raise an error instead. The binary is linked against the wheel's libraries and finds the
# GPU machine's own at run time (LD_LIBRARY_PATH, set by run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-2.11.0}"
WORK="${GPU_BUILD_DIR:-$HOME/.cache/lookalike/gpu-build}"
BUNDLE=.gpu/bundle
mkdir -p "$WORK" "$BUNDLE"

# 1. The torch wheel's headers and libraries (the CUDA ones only to link against).
if [ ! -f "$WORK/torch-$TORCH/torch/lib/libtorch_cpu.so" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 "torch==$TORCH" -d "$WORK/wheel-$TORCH"
    unzip -q -o "$WORK"/wheel-"$TORCH"/torch-"$TORCH"-*.whl 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$WORK/torch-$TORCH"
fi
LIBTORCH="$WORK/torch-$TORCH/torch"

# 2. torch-sys 0.17 with the three operators that 2.11 changed made to raise instead.
cargo fetch --quiet
SYS_SRC=$(ls -d "$HOME"/.cargo/registry/src/*/torch-sys-0.17.0 | head -1)
rm -rf "$WORK/torch-sys" && cp -r "$SYS_SRC" "$WORK/torch-sys"
python3 - "$WORK/torch-sys/libtch/torch_api_generated.cpp" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
for name in ["atg__scaled_dot_product_cudnn_attention_backward", "atg__scaled_mm", "atg__scaled_mm_out"]:
    pattern = re.compile(r"(void " + name + r"\(.*?\) \{\n  PROTECT\(\n)(.*?)(\n  \)\n\})", re.S)
    text, count = pattern.subn(lambda m: m.group(1) + '    throw std::runtime_error("' + name + ' is not available in this libtorch build");' + m.group(3), text, count=1)
    assert count == 1, name
open(path, "w").write(text)
PY

# 3. A copy of the project whose torch-sys is the patched one, built in release.
rm -rf "$WORK/src-copy" && mkdir -p "$WORK/src-copy"
cp -r Cargo.toml Cargo.lock build.rs src config "$WORK/src-copy/"
printf '\n[patch.crates-io]\ntorch-sys = { path = "%s" }\n' "$WORK/torch-sys" >> "$WORK/src-copy/Cargo.toml"
(
    cd "$WORK/src-copy"
    # libtorch_cpu needs CUDA 13's runtime, which only the GPU machine has: leave it unresolved.
    env -u LIBTORCH_USE_PYTORCH LIBTORCH="$LIBTORCH" LIBTORCH_BYPASS_VERSION_CHECK=1 LIBTORCH_CXX11_ABI=1 \
        RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" CARGO_TARGET_DIR="$WORK/target" \
        cargo build --release --bin lookalike
)

# 4. The bundle: the binary (compressed), the kit's backbones, Fashion-MNIST (the whole test
#    set; the first 6,000 training images, enough for 100 per class and a validation split).
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/models/kit" "$BUNDLE/fashion-mnist"
strip -o "$BUNDLE/lookalike" "$WORK/target/release/lookalike"
xz -T2 -6 -f "$BUNDLE/lookalike"
cp models/manifest.toml "$BUNDLE/models/"
cp models/kit/*.safetensors models/kit/*.json models/kit/*.txt "$BUNDLE/models/kit/"
# The clip embedder's vocabulary, and its weights where `models fetch clip` installed them.
mkdir -p "$BUNDLE/models/kit/clip" && cp models/kit/clip/*.gz "$BUNDLE/models/kit/clip/"
if [ -f models/clip/vit_b_32_laion2b.safetensors ]; then mkdir -p "$BUNDLE/models/clip" && cp models/clip/vit_b_32_laion2b.safetensors* "$BUNDLE/models/clip/"; fi
cp /usr/share/datasets/fashion-mnist/t10k-* "$BUNDLE/fashion-mnist/"
# Chart labels, and OpenSSL 3 (which rust-bert's downloader links) for an image without them.
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$BUNDLE/"
mkdir -p "$BUNDLE/lib" && cp -L /usr/lib/x86_64-linux-gnu/libssl.so.3 /usr/lib/x86_64-linux-gnu/libcrypto.so.3 "$BUNDLE/lib/"
python3 - "$BUNDLE/fashion-mnist" <<'PY'
import gzip, struct, sys
out, keep = sys.argv[1], 6000
for name, row in [("train-images-idx3-ubyte.gz", 784), ("train-labels-idx1-ubyte.gz", 1)]:
    data = gzip.open("/usr/share/datasets/fashion-mnist/" + name).read()
    dims = data[3]
    header = bytearray(data[: 4 + 4 * dims])
    header[4:8] = struct.pack(">I", keep)
    gzip.open(f"{out}/{name}", "wb").write(bytes(header) + data[4 + 4 * dims : 4 + 4 * dims + keep * row])
PY
du -sh "$BUNDLE"
