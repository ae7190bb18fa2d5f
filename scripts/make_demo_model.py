#!/usr/bin/env python3
"""Trains the built-in demo model: a 0.9M-parameter Llama (4 layers, grouped KV heads) and a byte-level BPE
tokenizer on scripts/data/perplexity.txt (public-domain text), saved by transformers as a Hugging Face model
directory with a chat template. It memorises its small corpus, so `lowbit generate` has real, checkable
text to continue offline: "We hold these truths" goes on as the Declaration of Independence does.

    python3 scripts/make_demo_model.py models/demo-llama     # seconds on a GPU, minutes on two CPU cores
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer(text, out, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=1)
    return tok


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    text = open(os.path.join(HERE, "data", "perplexity.txt")).read()
    tok = tokenizer(text, out, 512)
    ids = torch.tensor(tok.encode(text).ids, dtype=torch.long)
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=384,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                     "rope_theta": 10000.0})
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(config).to(dev)
    ids = ids.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq, batch, steps = 96, 32, 1500
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,)).tolist()
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 3e-3 * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    model.to("cpu", torch.bfloat16).save_pretrained(out, safe_serialization=True)
    print("wrote", out, sum(p.numel() for p in model.parameters()), "parameters")
    # transformers' own greedy continuation of the saved (bf16) model in float32: the CLI test's expectation.
    saved = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    prompt = "We hold these truths"
    p = torch.tensor([tok.encode(prompt).ids])
    with torch.no_grad():
        g = saved.generate(p, max_new_tokens=32, do_sample=False)[0, p.shape[1]:].tolist()
    with open(os.path.join(out, "expected_greedy.json"), "w") as f:
        json.dump({"prompt": prompt, "max_new_tokens": 32, "ids": g, "text": tok.decode(g)}, f, indent=1)
    print(prompt + tok.decode(g))


if __name__ == "__main__":
    main()
