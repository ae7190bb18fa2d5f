#!/usr/bin/env python3
"""Times bitsandbytes' CPU backend on the shapes of lowbit's `cpu_fast` criterion benches.

Prints one JSON object per line: {"bench": <criterion id>, "seconds": <median>, "what": ...}. The bench ids
match `crates/lowbit/benches/cpu_fast.rs`, so `scripts/bench_vs_bnb.sh` can join the two.

Needs torch + bitsandbytes in a throw-away virtualenv (not a project dependency):
    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install torch bitsandbytes
"""
import json
import os
import statistics
import sys
import time

import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F

THREADS = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
QUANT_N = int(os.environ.get("LOWBIT_BENCH_QUANT_N", 64 << 20))
torch.set_num_threads(THREADS)
torch.manual_seed(0)


def timeit(fn, repeats=7, min_time=0.5):
    """Median wall seconds and median process CPU seconds (all threads) per call.

    CPU time is the fair measure on a machine shared with other work: wall time then includes waiting."""
    fn()  # warm-up (first call may compile or allocate)
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < repeats or (time.perf_counter() - start < min_time and len(walls) < 50):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def report(bench, seconds, what):
    wall, cpu = seconds
    print(json.dumps({"bench": bench, "seconds": wall, "cpu_seconds": cpu, "what": what}), flush=True)


def fourbit(rows, cols):
    w = torch.randn(rows, cols, dtype=torch.float32)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    return packed, state


def main():
    for rows, cols in [(4096, 14336), (14336, 4096)]:
        packed, state = fourbit(rows, cols)
        for dt, name in [(torch.float32, "f32"), (torch.float16, "f16")]:
            x = torch.randn(1, cols, dtype=dt)
            st = state
            st.dtype = dt
            s = timeit(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=st))
            report(f"gemv_4bit_nf4/{name}/{rows}x{cols}", s, "bnb.matmul_4bit batch 1")
    m, n, k = 512, 4096, 4096
    packed, state = fourbit(n, k)
    state.dtype = torch.float32
    x = torch.randn(m, k)
    s = timeit(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), repeats=3)
    report("gemm/matmul_4bit_nf4/512x4096x4096", s, "bnb.matmul_4bit batch 512")
    wd = torch.randn(n, k)
    s = timeit(lambda: torch.nn.functional.linear(x, wd), repeats=3)
    report("gemm/matmul_f32/512x4096x4096", s, "torch.nn.functional.linear (MKL/oneDNN), not bnb")
    ai = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    bi = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    s = timeit(lambda: F.int8_linear_matmul(ai, bi), repeats=3)
    report("gemm/int8_linear_matmul/512x4096x4096", s, "F.int8_linear_matmul")
    xq = torch.randn(QUANT_N)
    s = timeit(lambda: F.quantize_4bit(xq, blocksize=64, quant_type="nf4"), repeats=3)
    report("quantizers_64M/quantize_4bit_nf4_f32", s, "F.quantize_4bit")
    q, st = F.quantize_4bit(xq, blocksize=64, quant_type="nf4")
    s = timeit(lambda: F.dequantize_4bit(q, st), repeats=3)
    report("quantizers_64M/dequantize_4bit_nf4_f32", s, "F.dequantize_4bit")
    code = F.create_dynamic_map(signed=True)
    s = timeit(lambda: F.quantize_blockwise(xq, code=code, blocksize=256), repeats=3)
    report("quantizers_64M/quantize_blockwise_f32", s, "F.quantize_blockwise")
    print(json.dumps({"torch": torch.__version__, "bitsandbytes": bnb.__version__, "threads": THREADS}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
