#!/usr/bin/env python3
"""Times bitsandbytes' CUDA kernels on the shapes `lowbit bench --device vulkan` and
`cargo run --example cuda_bench` use, so they can be put side by side on the same GPU. Prints one JSON object
per line: op, shape, median_s (or mean_s for the queued loops), gbps.

The 4-bit linear layers are timed as the lowbit example times them: `iters` calls queued back to back,
cycling through enough weight copies to exceed the L2 cache (`weights_from: rotated`) or one copy (`one_copy`), the
time per call being the total over `iters`.

usage: python3 scripts/bench_bnb_cuda.py [--iters 50] [--quick] [--rows] [--kernels]
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


ROTATE_BYTES = 160 << 20


def loop_time(fns, iters):
    """Mean seconds per call over `iters` queued calls cycling through `fns`, after a warm-up."""
    for f in fns[:3]:
        f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(iters):
        fns[i % len(fns)]()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def linear_4bit(dev, out_f, in_f, dtype, batch, rotate):
    import bitsandbytes as bnb
    w = torch.randn(out_f, in_f, device=dev, dtype=torch.float16) * 0.02
    packed, state = F.quantize_4bit(w.to(dtype), blocksize=64, quant_type="nf4")
    wbytes = packed.numel() + state.absmax.numel() * 4
    copies = min(max(-(-ROTATE_BYTES // wbytes), 2), 16) if rotate else 1
    weights = [(packed.clone(), state) for _ in range(copies)]
    x = torch.randn(batch, in_f, device=dev, dtype=dtype)
    if batch == 1:
        fns = [lambda p=p, s=s: F.gemv_4bit(x, p.t(), state=s) for p, s in weights]
    else:
        fns = [lambda p=p, s=s: bnb.matmul_4bit(x, p.t(), quant_state=s) for p, s in weights]
    iters = 20 if batch >= 512 else 200
    t = loop_time(fns, iters)
    nbytes = wbytes + batch * (in_f + out_f) * 2
    print(json.dumps(dict(op="gemv_4bit" if batch == 1 else "matmul_4bit", impl="bitsandbytes-cuda",
                          shape=[out_f, in_f], batch=batch, dtype=str(dtype).replace("torch.", ""),
                          weights_from="rotated" if rotate else "one_copy", mean_s=t, gbps=nbytes / t / 1e9,
                          tflops=2 * batch * out_f * in_f / t / 1e12)), flush=True)
    del w, packed, weights


def rows_bench(dev, out_f, in_f):
    """bitsandbytes' NF4 (double quant) and LLM.int8() (threshold 6.0) layers at 1-32 rows, as
    `examples/rows_bench.rs` times lowbit's: the module's forward, queued, weights rotated out of L2."""
    import bitsandbytes as bnb
    w = torch.randn(out_f, in_f, device="cpu", dtype=torch.float16) * 0.02
    layers = {}
    for fmt, bytes_ in (("nf4", out_f * in_f // 2), ("int8", out_f * in_f)):
        copies = min(max(-(-ROTATE_BYTES // bytes_), 2), 16)
        mods = []
        for _ in range(copies):
            if fmt == "nf4":
                m = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=torch.float16, quant_type="nf4",
                                      compress_statistics=True)
                m.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
            else:
                m = bnb.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False, threshold=6.0)
                m.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
            mods.append(m.to(dev).eval())
        layers[fmt] = (mods, bytes_)
    with torch.no_grad():
        for fmt, (mods, bytes_) in layers.items():
            one = None
            for rows in (1, 2, 4, 8, 16, 32):
                x = torch.randn(rows, in_f, device=dev, dtype=torch.float16)
                t = loop_time([lambda m=m: m(x) for m in mods], 200)
                one = one or t
                print(json.dumps(dict(op=f"linear_{fmt}", impl="bitsandbytes-cuda", shape=[out_f, in_f], rows=rows,
                                      dtype="f16", mean_s=t, vs_one_row=t / one, weight_gbps=bytes_ / t / 1e9)),
                      flush=True)


def emit(op, shape, seconds, nbytes, **extra):
    print(json.dumps(dict(op=op, impl="bitsandbytes-cuda", shape=shape, median_s=seconds,
                          gbps=nbytes / seconds / 1e9, **extra)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", action="store_true", help="only the 1-32 row layers (rows_bench's shapes)")
    ap.add_argument("--kernels", action="store_true",
                    help="only the copy, quantizers, dequantizers and int8 products (`cuda_bench --kernels`)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    if a.rows:
        for out_f, in_f in [(4096, 4096), (4096, 14336), (14336, 4096)]:
            rows_bench(dev, out_f, in_f)
        return
    # Copy bandwidth (bytes read + written), the ceiling both sides are measured against.
    src = torch.randn(64 << 20, device=dev)  # 256 MB
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), a.iters)
    emit("copy", [src.numel()], t, 2 * src.numel() * 4)
    shapes = [(4096, 4096)] if a.quick else [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
    if a.kernels:
        shapes = []
    for out_f, in_f in shapes:
        for dtype in [torch.float16, torch.bfloat16]:
            for batch in [1, 2, 4, 8, 16]:
                linear_4bit(dev, out_f, in_f, dtype, batch, True)
        linear_4bit(dev, out_f, in_f, torch.float16, 1, False)
    for out_f, in_f in shapes[:2]:
        linear_4bit(dev, out_f, in_f, torch.float16, 512, False)
    if a.quick:
        return
    # Quantizers and dequantizers on 64 Mi values (`cuda_bench --kernels` times lowbit's on the same sizes).
    n = 64 << 20
    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        name = "f32" if size == 4 else "f16"
        x = torch.randn(n, device=dev, dtype=dtype)
        t = median_time(lambda: F.quantize_4bit(x, blocksize=64, quant_type="nf4"), a.iters)
        emit("quantize_4bit", [n], t, n * size + n // 2 + n // 16, detail=f"nf4 bs64 {name}")
        packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
        t = median_time(lambda: F.dequantize_4bit(packed, state), a.iters)
        emit("dequantize_4bit", [n], t, n * size + n // 2 + n // 16, detail=f"nf4 bs64 {name}")
        for bs in (256, 4096):
            t = median_time(lambda: F.quantize_blockwise(x, blocksize=bs), a.iters)
            emit("quantize_blockwise", [n], t, n * size + n + n // bs * 4, detail=f"bs{bs} {name}")
            codes, qs = F.quantize_blockwise(x, blocksize=bs)
            t = median_time(lambda: F.dequantize_blockwise(codes, qs), a.iters)
            emit("dequantize_blockwise", [n], t, n * size + n + n // bs * 4, detail=f"bs{bs} {name}")
        del x, packed, state, codes, qs
    # LLM.int8()'s integer product (i32 out) at 8, 16, 256 and 4096 rows.
    for rows, cols in ((4096, 4096), (4096, 14336)):
        b = torch.randint(-127, 128, (rows, cols), device=dev, dtype=torch.int8)
        for m in (8, 16, 256, 4096):
            a8 = torch.randint(-127, 128, (m, cols), device=dev, dtype=torch.int8)
            t = median_time(lambda: F.int8_linear_matmul(a8, b), a.iters)
            emit("int8_linear_matmul", [n], t, (m + rows) * cols + m * rows * 4,
                 detail=f"{m}x{cols} @ {rows}x{cols}^T")
    if a.kernels:
        return
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
