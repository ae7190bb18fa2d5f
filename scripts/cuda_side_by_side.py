#!/usr/bin/env python3
"""Puts the JSON lines of `examples/cuda_bench.rs` (lowbit), `scripts/bench_bnb_cuda.py` (bitsandbytes) and
`scripts/bench_ggml_cuda.sh` (ggml) from one run into one markdown table: microseconds per call for every
shape and batch, and lowbit's speed against each (above 1.0x: lowbit is faster). Records with a "detail"
(`cuda_bench --kernels`: quantizers, dequantizers, int8 products) and the ternary GEMVs get a second table
with the fraction of the copy bandwidth measured in the same run.

usage: python3 scripts/cuda_side_by_side.py LOWBIT.jsonl BNB.jsonl [GGML.jsonl]
"""
import json
import sys


def rows(path):
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def main():
    lowbit, bnb = rows(sys.argv[1]), rows(sys.argv[2])
    ggml = rows(sys.argv[3]) if len(sys.argv) > 3 else []
    copy = next((r["gbps"] for r in lowbit if r["op"] == "copy"), None)
    if copy:
        print(f"Device-to-device copy in the same run: {copy} GB/s.\n")
    us = lambda r: r.get("mean_s", r.get("median_s")) * 1e6
    key = lambda r: (tuple(r["shape"]), r.get("batch", 1))
    ggml_by = {}
    for r in ggml:
        ggml_by[(key(r), r["impl"])] = us(r)
    # torch names its dtypes float16 / bfloat16 / float32.
    short = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}
    bnb_by = {(key(r), short.get(r["dtype"], r["dtype"]), r.get("weights_from")): us(r)
              for r in bnb if "shape" in r and "dtype" in r}
    print("| shape [out, in] | batch | activations | weights from | lowbit us | bitsandbytes us | ggml q4_0 us "
          "| ggml iq4_nl us | vs bnb | vs q4_0 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in lowbit:
        if r["op"] not in ("gemv_4bit", "matmul_4bit"):
            continue
        k = key(r)
        mine = us(r)
        b = bnb_by.get((k, r["dtype"], r.get("weights_from")))
        q4, nl = ggml_by.get((k, "ggml-cuda-q4_0")), ggml_by.get((k, "ggml-cuda-iq4_nl"))
        fmt = lambda v: f"{v:.1f}" if v else "-"
        ratio = lambda v: f"{v / mine:.2f}x" if v else "-"
        print(f"| {list(k[0])} | {k[1]} | {r['dtype']} | {r.get('weights_from', '')} | {mine:.1f} | {fmt(b)} "
              f"| {fmt(q4)} | {fmt(nl)} | {ratio(b)} | {ratio(q4)} |")
    kernels(lowbit, bnb, copy, us)


def kernels(lowbit, bnb, copy, us):
    """Quantizers, dequantizers, int8 products and ternary GEMVs: us, GB/s, % of copy, bitsandbytes."""
    bnb_by = {(r["op"], r["detail"]): r for r in bnb if "detail" in r}
    mine = [r for r in lowbit if "detail" in r or r["op"] == "ternary_gemv"]
    if not mine:
        return
    print("\n| op | operands | lowbit us | lowbit GB/s | % of copy | bitsandbytes us | bitsandbytes GB/s "
          "| bnb / lowbit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in mine:
        what = r.get("detail") or f"{r['shape']} {r['dtype']}"
        b = bnb_by.get((r["op"], r.get("detail")))
        pct = f"{100 * r['gbps'] / copy:.0f}%" if copy else "-"
        bus = f"{us(b):.1f}" if b else "-"
        bgb = f"{b['gbps']:.0f}" if b else "-"
        ratio = f"{us(b) / us(r):.2f}x" if b else "-"
        print(f"| {r['op']} | {what} | {us(r):.1f} | {r['gbps']:.0f} | {pct} | {bus} | {bgb} | {ratio} |")


if __name__ == "__main__":
    main()
