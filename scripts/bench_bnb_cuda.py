#!/usr/bin/env python3
"""Times bitsandbytes' CUDA kernels on the shapes `lowbit bench --device vulkan` uses, so the two can be put
side by side on the same GPU. Prints one JSON object per line: op, shape, median_s, gbps.

usage: python3 scripts/bench_bnb_cuda.py [--iters 50]
needs: torch with CUDA, bitsandbytes.
"""
import argparse
import json

import torch
import bitsandbytes.functional as F


def median_time(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def emit(op, shape, seconds, nbytes, **extra):
    print(json.dumps(dict(op=op, impl="bitsandbytes-cuda", shape=shape, median_s=seconds,
                          gbps=nbytes / seconds / 1e9, **extra)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    # Copy bandwidth (bytes read + written), the ceiling both sides are measured against.
    src = torch.randn(64 << 20, device=dev)  # 256 MB
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), a.iters)
    emit("copy", [src.numel()], t, 2 * src.numel() * 4)
    for out_f, in_f in [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]:
        w = torch.randn(out_f, in_f, device=dev, dtype=torch.float16) * 0.02
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        x = torch.randn(1, in_f, device=dev, dtype=torch.float16)
        t = median_time(lambda: F.gemv_4bit(x, packed.t(), state=state), a.iters)
        nbytes = packed.numel() + state.absmax.numel() * 4 + (in_f + out_f) * 2
        emit("gemv_4bit", [out_f, in_f], t, nbytes, dtype="f16", format="nf4")
        del w, packed
    n = 64 << 20  # 128 MB of f16 values per quantize/dequantize test (256 MB in f32)
    x = torch.randn(n, device=dev, dtype=torch.float32)
    t = median_time(lambda: F.quantize_4bit(x, blocksize=64, quant_type="nf4"), a.iters)
    emit("quantize_4bit", [n], t, n * 4 + n // 2 + n // 64 * 4, dtype="f32")
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    t = median_time(lambda: F.dequantize_4bit(packed, state), a.iters)
    emit("dequantize_4bit", [n], t, n * 4 + n // 2 + n // 64 * 4, dtype="f32")
    t = median_time(lambda: F.quantize_blockwise(x, blocksize=4096), a.iters)
    emit("quantize_blockwise", [n], t, n * 4 + n + n // 4096 * 4, dtype="f32")
    # matmul_4bit batch 512 and the dense f16 matmul it is compared with.
    import bitsandbytes as bnb
    w = torch.randn(4096, 4096, device=dev, dtype=torch.float16) * 0.02
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    xb = torch.randn(512, 4096, device=dev, dtype=torch.float16)
    t = median_time(lambda: bnb.matmul_4bit(xb, packed.t(), quant_state=state), a.iters)
    emit("matmul_4bit", [4096, 4096], t, 0, batch=512, tflops=2 * 512 * 4096 * 4096 / t / 1e12)
    t = median_time(lambda: xb @ w.t(), a.iters)
    emit("matmul_f16_torch", [4096, 4096], t, 0, batch=512, tflops=2 * 512 * 4096 * 4096 / t / 1e12)


if __name__ == "__main__":
    main()
