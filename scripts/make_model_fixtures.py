#!/usr/bin/env python3
"""Writes the model test fixtures: tiny random-weight models saved by transformers, with the logits and
greedy continuations transformers computes for them, LoRA adapters made by PEFT, and (with --bnb, on a CUDA
machine with bitsandbytes) the same models quantized on load by transformers + bitsandbytes, saved in
bitsandbytes' layout, with their logits.

    python3 scripts/make_model_fixtures.py crates/lowbit/tests/fixtures/models          # float, LoRA (CPU)
    python3 scripts/make_model_fixtures.py crates/lowbit/tests/fixtures/models --bnb    # + NF4/FP4 (CUDA)

Every expected value is computed by transformers in float32 with eager attention; nothing is computed by
lowbit. Weights are Gaussian (not transformers' tiny init) so that logits are well separated and greedy ids
are stable under float rounding.
"""
import argparse
import json
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # BitNet's torch.compile helpers run eagerly: same ops
import torch
from safetensors.torch import save_file

SEED = 1234
PROMPT = [5, 17, 42, 7, 99, 3, 64, 28, 11, 73, 2, 50]
NEW_TOKENS = 10

CORPUS = """lowbit runs quantized language models on every accelerator a user has.
The quick brown fox jumps over the lazy dog. A model reads tokens and writes tokens.
Four bits per weight, sixteen levels, one scale per block of sixty-four weights.
Ternary weights are minus one, zero or one. Every recovery is logged and counted.
""" * 8

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def expected(model, ids):
    model.eval()
    with torch.no_grad():
        x = torch.tensor([ids], device=model.device)
        logits = model(x).logits[0].float().cpu().contiguous()
        out = model.generate(x, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                             eos_token_id=None, pad_token_id=0)
        greedy = out[0, len(ids):].cpu().to(torch.int64).contiguous()
    return logits, greedy


def make_tokenizer(path, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=1)


def configs():
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                  bos_token_id=0, eos_token_id=1, dtype="float32")
    return {
        # GQA (4 query heads over 2 KV heads), untied head, llama3 frequency scaling.
        "tiny-llama": LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                   "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 64}),
        # q/k norms, head_dim decoupled from hidden/heads, tied embeddings.
        "tiny-qwen3": Qwen3Config(**common, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        # q/k/v biases.
        "tiny-qwen2": Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    }


def build(name, config):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(SEED)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float()
    randomize(model, SEED + sum(map(ord, name)))
    return model


def save_expected(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "expected.safetensors"))


def float_fixtures(root):
    from peft import LoraConfig, get_peft_model
    ids = torch.tensor(PROMPT, dtype=torch.int64)
    for name, config in configs().items():
        path = os.path.join(root, name)
        os.makedirs(path, exist_ok=True)
        model = build(name, config)
        model.save_pretrained(path, safe_serialization=True)
        logits, greedy = expected(model, PROMPT)
        tensors = {"input_ids": ids, "logits": logits, "greedy": greedy}
        if name == "tiny-llama":
            make_tokenizer(path, config.vocab_size)
            for tag, rslora in (("lora", False), ("lora-rs", True)):
                lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                  init_lora_weights=False, use_rslora=rslora, lora_dropout=0.0)
                torch.manual_seed(SEED + 7)
                peft_model = get_peft_model(build(name, config), lcfg)
                peft_model.save_pretrained(os.path.join(path, tag))
                tensors[f"{tag}_logits"], _ = expected(peft_model, PROMPT)
        save_expected(path, tensors)
        print("wrote", path)


def bitnet_fixtures(root):
    """BitNet b1.58 with ternary weights in transformers' 2-bit packing, for both linear classes: `bitlinear`
    (weight_scale = 1 / mean|W|, lowbit's layout) and `autobitlinear` offline (weight_scale = mean|W|, the
    layout of microsoft/bitnet-b1.58-2B-4T). transformers loads each and computes the expected values."""
    from safetensors.torch import save_file as save
    from transformers import AutoModelForCausalLM, BitNetConfig
    from transformers.integrations.bitnet import pack_weights
    for linear_class in ("bitlinear", "autobitlinear"):
        name = f"tiny-bitnet-{linear_class}"
        config = BitNetConfig(vocab_size=320, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True,
                              hidden_act="relu2", dtype="float32",
                              rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
        model = build(name, config)
        path = os.path.join(root, name)
        os.makedirs(path, exist_ok=True)
        sd = {}
        for k, v in model.state_dict().items():
            if k == "lm_head.weight":
                continue
            module = k[: -len(".weight")]
            if k.endswith("_proj.weight"):
                mean = v.abs().mean().clamp(min=1e-5)
                t = (v / mean).round().clamp(-1, 1)
                sd[k] = pack_weights(t.clone())
                scale = mean if linear_class == "autobitlinear" else 1.0 / mean
                sd[module + ".weight_scale"] = scale.reshape(1).float()
            else:
                sd[k] = v.contiguous()
        save(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        cfg = config.to_dict()
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                      "quantization_mode": "offline"}
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        logits, greedy = expected(loaded, PROMPT)
        save_expected(path, {"input_ids": torch.tensor(PROMPT, dtype=torch.int64), "logits": logits,
                             "greedy": greedy})
        print("wrote", path)


def bnb_fixtures(root):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    for name in configs():
        src = os.path.join(root, name)
        for qt in ("nf4", "fp4", "int8"):
            if qt == "int8":
                q = BitsAndBytesConfig(load_in_8bit=True)
            else:
                q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, dtype=torch.float32,
                                                         attn_implementation="eager", device_map="cuda:0")
            dst = os.path.join(root, f"{name}-{qt}")
            model.save_pretrained(dst, safe_serialization=True)
            logits, greedy = expected(model, PROMPT)
            save_expected(dst, {"input_ids": torch.tensor(PROMPT, dtype=torch.int64), "logits": logits,
                                "greedy": greedy})
            print("wrote", dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--bnb", action="store_true", help="only the bitsandbytes fixtures (needs CUDA)")
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if a.bnb:
        bnb_fixtures(a.out)
    else:
        float_fixtures(a.out)
        bitnet_fixtures(a.out)


if __name__ == "__main__":
    main()
