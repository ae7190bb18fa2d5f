#!/usr/bin/env bash
# ggml's CUDA matrix-vector and matrix products (test-backend-ops, perf mode) on the shapes
# `examples/cuda_bench.rs` and `scripts/bench_bnb_cuda.py` time: Q4_0 and IQ4_NL weights, f32 activations,
# batches 1, 2, 4, 8, 16 and 512. Prints one JSON object per line (op, impl, shape [out, in], batch, mean_s,
# tflops), like the other two.
#
# ggml times one weight tensor over and over: the shapes under the 60 MB L2 of an H200 run from L2
# (compare them with lowbit's and bitsandbytes' `one_copy` rows), 8192x28672 streams from memory.
#
# usage: [GGML_TYPES=q4_0] scripts/bench_ggml_cuda.sh LLAMA_CPP_SRC [CUDA_ARCH]
#   LLAMA_CPP_SRC: a llama.cpp source tree (the one the PyPI sdist of llama-cpp-python vendors works; ggml is
#   inside it). Its tests/test-backend-ops.cpp gets the shapes above added to the perf cases once (marked,
#   so a second run does not add them again); the build goes to LLAMA_CPP_SRC/build-lowbit.
#   CUDA_ARCH: default 90 (Hopper).
set -euo pipefail
SRC=${1:?usage: scripts/bench_ggml_cuda.sh LLAMA_CPP_SRC [CUDA_ARCH]}
ARCH=${2:-90}
T="$SRC/tests/test-backend-ops.cpp"
MARK="// lowbit's shapes (scripts/bench_ggml_cuda.sh)"
if ! grep -qF "$MARK" "$T"; then
    anchor='    \/\/ Q4_K multi-column mat-vec'
    grep -q "$anchor" "$T" || { echo "no '// Q4_K multi-column mat-vec' line in $T to add the shapes before" >&2; exit 1; }
    block="    $MARK\n    for (auto mk : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {4096, 14336}, {14336, 4096}, {8192, 28672}}) {\n        for (int bs : {1, 2, 4, 8, 16, 512}) {\n            for (ggml_type t : {GGML_TYPE_Q4_0, GGML_TYPE_IQ4_NL}) {\n                test_cases.emplace_back(new test_mul_mat(t, GGML_TYPE_F32, mk.first, bs, mk.second, {1, 1}, {1, 1}));\n            }\n        }\n    }\n\n"
    sed -i "s|^$anchor|$block&|" "$T"
fi
cmake -S "$SRC" -B "$SRC/build-lowbit" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release > "$SRC/build-lowbit.cmake.log" 2>&1
cmake --build "$SRC/build-lowbit" --target test-backend-ops -j "$(nproc)" > "$SRC/build-lowbit.log" 2>&1
# GGML_TYPES narrows the weight types timed (a regex alternation; default both).
filter="type_a=(${GGML_TYPES:-q4_0|iq4_nl}),type_b=f32,m=(4096|8192|14336),n=(1|2|4|8|16|512),k=(4096|14336|28672),bs=\[1,1\],nr=\[1,1\]"
"$SRC/build-lowbit/bin/test-backend-ops" perf -o MUL_MAT -b CUDA0 -p "$filter" 2>&1 | python3 -c '
import json, re, sys
seen = set()
for line in sys.stdin:
    m = re.search(r"MUL_MAT\(type_a=(\w+),type_b=f32,m=(\d+),n=(\d+),k=(\d+),.*?([\d.]+) us/run", line)
    if not m:
        continue
    t, out_f, n, in_f, us = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), float(m.group(5))
    if (t, out_f, n, in_f) in seen:
        continue
    seen.add((t, out_f, n, in_f))
    s = us * 1e-6
    print(json.dumps(dict(op="gemv_4bit" if n == 1 else "matmul_4bit", impl=f"ggml-cuda-{t}",
                          shape=[out_f, in_f], batch=n, dtype="f32", mean_s=s,
                          tflops=round(2 * n * out_f * in_f / s / 1e12, 2))))
'
