#!/usr/bin/env python3
"""Writes a synthetic Llama-shaped model (random bf16 weights, a real tokenizer copied from
models/demo-llama) and times transformers + bitsandbytes NF4 `generate` on it (CUDA): prefill tokens/s for a
512-token prompt and decode tokens/s at batch 1, plus torch's copy bandwidth, as JSON. lowbit is timed on the
same directory by the caller (`lowbit generate DIR --format nf4 ...`).

    python3 scripts/bench_models.py --shape 1b --out /tmp/llama-1b --json bnb.json
"""
import argparse
import json
import os
import shutil
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {
    # Llama-3.2-1B and Llama-3-8B shapes.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


def copy_bandwidth():
    src = torch.randn(64 << 20, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); dst.copy_(src); e.record(); e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return 2 * src.numel() * 4 / sorted(ts)[len(ts) // 2]


def main():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--write-only", action="store_true", help="write the model, time nothing")
    a = ap.parse_args()
    cfg = LlamaConfig(**SHAPES[a.shape], max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=0,
                      eos_token_id=1, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(a.out, safe_serialization=True)
    del model
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(HERE, "..", "models", "demo-llama", f), a.out)
    if a.write_only:
        return
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(a.out, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map="cuda:0").eval()
    prompt = torch.randint(2, 500, (1, 512), device="cuda")
    with torch.no_grad():
        model.generate(prompt[:, :16], max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
        torch.cuda.synchronize(); t = time.perf_counter()
        model(prompt)
        torch.cuda.synchronize(); prefill = 512 / (time.perf_counter() - t)
        n = 128
        torch.cuda.synchronize(); t = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, do_sample=False, min_new_tokens=n)
        torch.cuda.synchronize(); total = time.perf_counter() - t
        decode = (n - 1) / max(total - 512 / prefill, 1e-9)
    r = {"shape": a.shape, "bnb_nf4_prefill_tok_s": prefill, "bnb_nf4_decode_tok_s": decode,
         "torch_copy_GBs": copy_bandwidth() / 1e9, "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(r))
    json.dump(r, open(a.json, "w"))


if __name__ == "__main__":
    main()
