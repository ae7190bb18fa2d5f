#!/usr/bin/env bash
# llama.cpp's CUDA build beside lowbit's CUDA backend on the same synthetic Llama-shaped models, decode and
# prefill tokens/s at batch 1, in one run on one NVIDIA machine. Prints llama-bench's table and lowbit's figures.
#
# Nothing here downloads anything. Inputs: a llama.cpp source tree (e.g. the one the `llama-cpp-python` sdist
# vendors under vendor/llama.cpp), nvcc + CMake + Ninja, and Python with torch and transformers.
#
# Usage:
#   scripts/bench_llamacpp_cuda.sh LLAMA_CPP_SRC [SHAPE ...]        (SHAPE: 1b, 8b; default: 1b 8b)
# Environment (all optional):
#   LOWBIT   path of the lowbit binary (default: target/release/lowbit)
#   ARCH     CUDA architecture for llama.cpp (default: 90)
#   WORK     scratch directory for the models (default: /tmp/lowbit-llamacpp)
#
# Steps per shape: `scripts/bench_models.py --write-only` writes random bf16 weights at the shape (tokenizer of
# models/demo-llama); llama.cpp's convert_hf_to_gguf.py turns it into a bf16 GGUF, llama-quantize into Q4_0;
# llama-bench times pp512 / tg64 with every layer on the GPU (FlashAttention off, as built); lowbit times
# `generate --format nf4` on the same directory. The demo tokenizer is not in llama.cpp's list of known
# pre-tokenizers, so the conversion runs on a copy of the converter that takes the default one (the
# tokenizer plays no part in llama-bench's timings).
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SRC=$(cd "$1" && pwd)
shift
if [ $# -eq 0 ]; then SHAPES=(1b 8b); else SHAPES=("$@"); fi
LOWBIT=${LOWBIT:-target/release/lowbit}
ARCH=${ARCH:-90}
WORK=${WORK:-/tmp/lowbit-llamacpp}
mkdir -p "$WORK"

# A private copy of the tree, so the converter patch and the build stay out of the original.
rm -rf "$WORK/llama.cpp"
cp -r "$SRC" "$WORK/llama.cpp"
L=$WORK/llama.cpp
sed -i 's/raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")/res = "default"/' \
    "$L"/conversion/base.py "$L"/convert_hf_to_gguf.py 2>/dev/null || true
cmake -S "$L" -B "$L/build" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DGGML_CUDA_FA=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$WORK/cmake.log"
cmake --build "$L/build" -j"$(nproc)" --target llama-bench llama-quantize > "$WORK/build.log"
B=$L/build/bin
PROMPT="$(cat scripts/data/perplexity.txt)"
for s in "${SHAPES[@]}"; do
    dir=$WORK/llama-$s
    python3 scripts/bench_models.py --shape "$s" --out "$dir" --json "$WORK/$s.json" --write-only
    PYTHONPATH=$L/gguf-py python3 "$L/convert_hf_to_gguf.py" "$dir" --outfile "$dir.gguf" --outtype bf16 \
        > "$WORK/convert-$s.log" 2>&1
    "$B/llama-quantize" "$dir.gguf" "$dir-q4_0.gguf" Q4_0 "$(nproc)" > "$WORK/quantize-$s.log" 2>&1
    echo "== $s: llama.cpp Q4_0 (CUDA)"
    "$B/llama-bench" -m "$dir-q4_0.gguf" -ngl 99 -fa 0 -p 512 -n 64 -r 3
    echo "== $s: lowbit NF4 (CUDA)"
    # A first run compiles lowbit's kernels into the on-disk cache; the timed one starts warm.
    "$LOWBIT" --device cuda:0 generate "$dir" --format nf4 --max-tokens 1 --prompt "Hi" > /dev/null 2>&1
    LOWBIT_STRICT=1 "$LOWBIT" --json --device cuda:0 generate "$dir" --format nf4 --max-tokens 64 \
        --max-context 1024 --prompt "$PROMPT" > "$WORK/lowbit-$s.json"
    python3 -c "
import json, sys
j = json.load(open(sys.argv[1]))
print('prefill %.1f tok/s (%d tokens), decode %.1f tok/s, %.2f GB per token' % (j['prefill_tokens_per_s'],
      j['prompt_tokens'], j['decode_tokens_per_s'], j['bytes_per_token'] / 1e9))" "$WORK/lowbit-$s.json"
done
