#!/usr/bin/env python3
"""Byte-for-byte interop check on an NVIDIA machine (bitsandbytes' CUDA kernels are the reference).

For a tiny random Llama (large enough that double quantization's mean takes torch's vectorized CUDA path):
1. transformers + bitsandbytes quantize it on CUDA (nf4, fp4, each with and without double quant, int8) and
   save_pretrained;
2. `lowbit quantize` quantizes the same checkpoint on the CPU;
3. every tensor key, dtype, shape and byte must be identical (quant_state JSON included);
4. `lowbit dequantize` of transformers' output must equal bitsandbytes' dequantize_4bit / int8 dequant;
5. lowbit's ternary (BitNet) output loads in transformers on CUDA and runs a forward pass.

Usage: python3 scripts/interop_cuda.py --lowbit target/release/lowbit [--keep DIR]
Needs: torch with CUDA, transformers, bitsandbytes, accelerate, safetensors. Exit status 1 on any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_transformers import _tensors, logits, rel  # noqa: E402

FORMATS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "fp4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "int8": dict(load_in_8bit=True),
}
FLAGS = {
    "nf4": ["--format", "nf4"], "nf4-dq": ["--format", "nf4", "--double-quant"],
    "fp4": ["--format", "fp4"], "fp4-dq": ["--format", "fp4", "--double-quant"], "int8": ["--format", "int8"],
}


def make_model(path, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.save_pretrained(path, max_shard_size="2MB")
    return model


def lowbit(exe, *args):
    r = subprocess.run([exe, "--json", "-q", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"lowbit {' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", default=os.path.join("target", "release", "lowbit"))
    ap.add_argument("--keep", default=None)
    ap.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this check needs CUDA"
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from bitsandbytes.functional import QuantState, dequantize_4bit

    work = a.keep or tempfile.mkdtemp(prefix="lowbit-cuda-")
    src = os.path.join(work, "tiny-llama")
    make_model(src, getattr(torch, a.dtype))
    failures = []
    for name, qc in FORMATS.items():
        theirs_dir, ours_dir = os.path.join(work, f"bnb-{name}"), os.path.join(work, f"lowbit-{name}")
        m = AutoModelForCausalLM.from_pretrained(src, device_map="cuda", quantization_config=BitsAndBytesConfig(**qc))
        m.save_pretrained(theirs_dir)
        del m
        lowbit(a.lowbit, "quantize", src, ours_dir, "--force", *FLAGS[name])
        theirs, ours = _tensors(theirs_dir, load_file), _tensors(ours_dir, load_file)
        keys_a, keys_b = set(ours), set(theirs)
        diffs = []
        for k in sorted(keys_a | keys_b):
            if k not in ours or k not in theirs:
                diffs.append(f"{k}: only in {'lowbit' if k in ours else 'bitsandbytes'}")
                continue
            x, y = ours[k], theirs[k]
            if x.dtype != y.dtype or x.shape != y.shape:
                diffs.append(f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            elif not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                n = int((x.reshape(-1).view(torch.uint8) != y.reshape(-1).view(torch.uint8)).sum())
                diffs.append(f"{k}: {n} bytes differ")
        # lowbit reads bitsandbytes' output back to bitsandbytes' floats.
        deq_dir = os.path.join(work, f"deq-{name}")
        lowbit(a.lowbit, "dequantize", theirs_dir, deq_dir, "--force", "--dtype", "f32")
        deq = _tensors(deq_dir, load_file)
        worst = 0.0
        for k in theirs:
            if k.endswith(".quant_state.bitsandbytes__nf4") or k.endswith(".quant_state.bitsandbytes__fp4"):
                w = k.split(".quant_state.")[0]
                parts = {kk[len(w) + 1:]: v.cuda() for kk, v in theirs.items() if kk.startswith(w + ".")}
                qs = QuantState.from_dict(parts, device=torch.device("cuda"))
                ref = dequantize_4bit(theirs[w].cuda(), qs).float().cpu()
                worst = max(worst, float((deq[w] - ref).abs().max()))
            elif k.endswith(".SCB"):
                w = k[: -len("SCB")] + "weight"
                ref = (theirs[w].float() * theirs[k][:, None] * (1.0 / 127)).float()
                worst = max(worst, float((deq[w] - ref).abs().max()))
        row = {"format": name, "tensors": len(keys_a), "differing": len(diffs), "examples": diffs[:5],
               "dequantize_max_abs_diff": worst}
        print(json.dumps(row), flush=True)
        if diffs or worst != 0.0:
            failures.append(name)
    # BitNet: transformers loads lowbit's packed ternary checkpoint on CUDA and runs it.
    tdir = os.path.join(work, "lowbit-ternary")
    lowbit(a.lowbit, "quantize", src, tdir, "--force", "--format", "ternary", "--allow-ptq-ternary")
    ref_model = AutoModelForCausalLM.from_pretrained(src, device_map="cuda").eval()
    tm = AutoModelForCausalLM.from_pretrained(tdir, device_map="cuda").eval()
    ids = torch.randint(0, 1024, (2, 16), device="cuda")
    err = rel(logits(tm, ids), logits(ref_model, ids))
    print(json.dumps({"format": "ternary", "loaded": True, "logits_rel_error_vs_float": err}))
    if failures:
        print("MISMATCH in: " + ", ".join(failures))
        sys.exit(1)
    print("all bitsandbytes formats byte-identical; dequantize identical")


from safetensors.torch import load_file  # noqa: E402

if __name__ == "__main__":
    main()
