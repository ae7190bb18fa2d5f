#!/usr/bin/env python3
"""Interop check on a CPU machine: checkpoints written by `lowbit quantize` load in transformers.

1. Creates a tiny random Llama (LlamaConfig, 2 layers) and saves it with save_pretrained (sharded, so the
   index path is exercised).
2. Runs `lowbit quantize` in each format (nf4, nf4 + double quant, fp4, int8, ternary).
3. Loads each output with AutoModelForCausalLM.from_pretrained (transformers + bitsandbytes' CPU backend for
   the bnb formats, transformers' BitNet integration for ternary), runs a forward pass and compares logits with
   the unquantized model: relative error ||l - l_ref|| / ||l_ref|| must stay under the bound stated in BOUNDS.
4. For the bnb formats, also has transformers quantize the same model itself (BitsAndBytesConfig, CPU) and
   compares the two quantized models' logits (bound SELF_BOUND) and the quantized tensors byte for byte
   (reported; bitsandbytes' CPU kernels differ from its CUDA kernels, which lowbit reproduces, so a few bytes
   may differ here: the byte-exact check is scripts/interop_cuda.sh on an NVIDIA machine).
5. Reads transformers' own 4-bit output back with `lowbit dequantize` and compares with bitsandbytes'
   dequantize_4bit of the same tensors.

Usage: python3 scripts/interop_transformers.py [--lowbit target/debug/lowbit] [--keep DIR]
Needs: torch, transformers, bitsandbytes (>= 0.45, CPU backend), safetensors.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

# Relative L2 error of the logits vs the unquantized float32 model (tiny random model, hidden 128).
BOUNDS = {"nf4": 0.35, "nf4-dq": 0.35, "fp4": 0.45, "int8": 0.05, "ternary": 1.2}
# lowbit-quantized vs transformers-quantized (same format) logits.
SELF_BOUND = 0.02


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def make_model(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    # Larger-than-default weights so quantization error is visible in the logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(path, max_shard_size="300KB")
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def run_lowbit(lowbit, args):
    r = subprocess.run([lowbit, "--json", "-q", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"lowbit {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", default=os.path.join("target", "debug", "lowbit"))
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    work = a.keep or tempfile.mkdtemp(prefix="lowbit-interop-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "tiny-llama")
    ref_model = make_model(src)
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (2, 16))
    ref = logits(ref_model.float(), ids)
    results, failures = [], []

    formats = [("nf4", ["--format", "nf4"]), ("nf4-dq", ["--format", "nf4", "--double-quant"]),
               ("fp4", ["--format", "fp4"]), ("int8", ["--format", "int8"]), ("ternary", ["--format", "ternary", "--allow-ptq-ternary"])]
    for name, flags in formats:
        out = os.path.join(work, f"lowbit-{name}")
        summary = run_lowbit(a.lowbit, ["quantize", src, out, "--force", *flags])
        model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
        got = logits(model, ids)
        err = rel(got, ref)
        row = {"format": name, "quantized": summary["quantized"], "weight_rel_error": summary["mean_rel_error"],
               "logits_rel_error_vs_float": err, "bound": BOUNDS[name]}
        if err > BOUNDS[name] or not torch.isfinite(got).all():
            failures.append(f"{name}: logits error {err:.4f} > {BOUNDS[name]}")
        if name != "ternary":
            qc = {"nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
                  "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
                  "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
                  "int8": dict(load_in_8bit=True)}[name]
            try:
                theirs = AutoModelForCausalLM.from_pretrained(
                    src, device_map="cpu", quantization_config=BitsAndBytesConfig(**qc)).eval()
                tl = logits(theirs, ids)
                row["logits_rel_error_vs_transformers"] = rel(got, tl)
                if row["logits_rel_error_vs_transformers"] > SELF_BOUND:
                    failures.append(f"{name}: vs transformers' own quantization {row['logits_rel_error_vs_transformers']:.4f} > {SELF_BOUND}")
                tdir = os.path.join(work, f"transformers-{name}")
                theirs.save_pretrained(tdir)
                row.update(compare_dirs(out, tdir, load_file))
                if name.startswith("nf4") or name == "fp4":
                    row.update(check_dequantize(a.lowbit, tdir, os.path.join(work, f"deq-{name}"), bnb, load_file))
            except Exception as e:  # transformers / bitsandbytes CPU support varies by version
                row["transformers_self_quantize"] = f"error: {type(e).__name__}: {e}"[:400]
                failures.append(f"{name}: {row['transformers_self_quantize']}")
        results.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{len(results)} formats loaded in transformers; work dir {work}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("all logits within bounds")


def _tensors(d, load_file):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def compare_dirs(ours, theirs, load_file):
    """Byte comparison of every tensor key (bitsandbytes' CPU kernels are not CUDA's: differences expected)."""
    a, b = _tensors(ours, load_file), _tensors(theirs, load_file)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    same = diff = 0
    diff_names = []
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.uint8) if x.dim() else x, y.view(torch.uint8) if y.dim() else y):
            same += 1
        else:
            diff += 1
            diff_names.append(f"{k} ({x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)})")
    return {"keys_only_lowbit": only_a[:5], "keys_only_transformers": only_b[:5],
            "tensors_identical": same, "tensors_differing": diff, "differing_examples": diff_names[:3]}


def check_dequantize(lowbit, tdir, out, bnb, load_file):
    """lowbit dequantize of transformers' 4-bit output vs bitsandbytes' dequantize_4bit."""
    from bitsandbytes.functional import QuantState, dequantize_4bit

    run_lowbit(lowbit, ["dequantize", tdir, out, "--force"])
    ours = _tensors(out, load_file)
    sd = _tensors(tdir, load_file)
    worst, n = 0.0, 0
    for k in sd:
        if ".quant_state.bitsandbytes__" not in k:
            continue
        w = k.split(".quant_state.")[0]
        qs = QuantState.from_dict({kk[len(w) + 1:]: v for kk, v in sd.items() if kk.startswith(w + ".") and kk != w}, device="cpu")
        ref = dequantize_4bit(sd[w], qs)
        got = ours[w]
        worst = max(worst, float((got.float() - ref.float()).abs().max()))
        n += 1
    return {"dequantized_checked": n, "dequantize_max_abs_diff_vs_bitsandbytes": worst}


if __name__ == "__main__":
    main()
