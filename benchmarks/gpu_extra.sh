#!/usr/bin/env bash
# Build gpu-extra/: the pure-Python packages and libraries the GPU machine lacks (it has no network), small enough
# to travel with a device call (carry=["gpu-extra"], 64 MiB in all):
#   qwen_tts      Qwen3-TTS model code (the `tts` step; 1 MB, installed --no-deps as in tests/qwen_tts_env.py)
#   bitsandbytes  the bitsandbytes + LoRA baseline of benchmarks/lora_linear.py, with only the native library for
#                 the GPU machine's CUDA (torch 2.11.0+cu130 there: libbitsandbytes_cuda130.so, 4 MB of 124 MB)
#   tts-wheels/   transformers 4.57.3 and the hub/tokenizers it needs, as wheels (15 MB): qwen-tts 0.1.1 does not
#                 run on the machine's transformers 5.x; the `tts` step installs them into a private folder
# Usage: bash benchmarks/gpu_extra.sh [CUDA_VERSION ...]   (default 130; run where pip reaches the registry)
set -euo pipefail
cuda=("${@:-130}")
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/gpu-extra"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary :all: -d "$work" qwen-tts==0.1.1 bitsandbytes==0.50.2
rm -rf "$out" && mkdir -p "$out"
for wheel in "$work"/*.whl; do python3 -m zipfile -e "$wheel" "$work/unpacked"; done
cp -r "$work/unpacked/qwen_tts" "$work/unpacked/bitsandbytes" "$out/"
keep=" libbitsandbytes_cpu "
for v in "${cuda[@]}"; do keep+="libbitsandbytes_cuda$v "; done
for lib in "$out"/bitsandbytes/libbitsandbytes_*.so; do
    name=$(basename "$lib")
    [[ "$keep" == *" ${name%.so} "* ]] || rm "$lib"
done
mkdir -p "$out/tts-wheels"
python3 -m pip download --quiet --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out/tts-wheels" \
    transformers==4.57.3 huggingface-hub==0.36.2 tokenizers==0.22.2
ls "$out"/bitsandbytes/*.so "$out"/tts-wheels
du -sh "$out"
