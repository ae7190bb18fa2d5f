#!/usr/bin/env python3
"""transformers + bitsandbytes quantizing a float checkpoint on load (what `lowbit quantize` replaces):
`from_pretrained(DIR, quantization_config=BitsAndBytesConfig(...), device_map="cuda:0")`, timed to the end of
the load (the GPU synchronized), with the process's peak resident memory and the GPU's peak allocation.
Prints one JSON object per format. The checkpoint is the one `scripts/bench_quantize.sh` writes.

usage: python3 scripts/bench_bnb_quantize_load.py DIR [nf4|int8 ...]
needs: torch with CUDA, transformers, bitsandbytes.
"""
import json
import resource
import subprocess
import sys
import time


def one(path, fmt):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if fmt == "int8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=fmt, bnb_4bit_use_double_quant=False,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map="cuda:0")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return dict(impl="transformers+bitsandbytes", format=fmt, seconds=seconds,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                gpu_peak_bytes=torch.cuda.max_memory_allocated(),
                params=sum(p.numel() for p in model.parameters()))


def main():
    path, formats = sys.argv[1], sys.argv[2:] or ["nf4", "int8"]
    if len(formats) > 1:
        # One process per format, so each peak memory figure is its own.
        for f in formats:
            subprocess.run([sys.executable, __file__, path, f], check=True)
        return
    print(json.dumps(one(path, formats[0])), flush=True)


if __name__ == "__main__":
    main()
