//! `lowbit generate MODEL --prompt "..."`: loads a model (quantizing float weights on load if asked), prints
//! the text as it is made, then prefill and decode speed, bytes read per token and peak memory.

use super::{CliResult, open_device};
use crate::{Global, out, outln, output};
use lowbit::model::{
    GenerateOptions, Generator, LoadOptions, Message, Model, SamplingParams, TextStream,
    TextTokenizer,
};
use lowbit::nn::LoadFormat;
use lowbit::tensor::DType;
use std::path::PathBuf;
use std::time::Instant;

/// Options shared by `generate` and `perplexity`: how the model is loaded.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json, safetensors, tokenizer.json), float or bitsandbytes/BitNet-quantized.
    pub model: PathBuf,
    /// Quantize float linear weights on load: none, nf4, fp4, int8, ternary (pre-quantized weights keep theirs).
    #[arg(long, default_value = "none", value_parser = ["none", "nf4", "fp4", "int8", "ternary"])]
    pub format: String,
    /// A PEFT LoRA adapter directory (repeat for several; the first is active).
    #[arg(long)]
    pub lora: Vec<PathBuf>,
    /// Merge the first --lora adapter into the float weights before quantizing.
    #[arg(long, requires = "lora")]
    pub merge_lora: bool,
    /// Longest context (KV cache and RoPE tables); default min(model's, 4096).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Keep float weights (embeddings, lm_head, float linear layers) in f32 instead of the checkpoint's
    /// dtype: the same output for twice the bytes (a baseline for measurements).
    #[arg(long)]
    pub widen_weights: bool,
    /// Activations between layers and in the KV cache: float (f32, bitsandbytes' arithmetic), f16 or bf16
    /// (transformers' torch_dtype: half the activation bytes, tensor cores for batched products on CUDA,
    /// logits within the dtype's rounding), or int8 on the CPU (llama.cpp's: activations in int8 blocks of
    /// 64 with integer dot products, float layers and the output head as int8 blocks; faster decode, logits
    /// within their own bound; GPUs refuse it).
    #[arg(long, default_value = "float", value_parser = ["float", "f16", "bf16", "int8"])]
    pub activations: String,
    /// Load Q, K, V and gate, up as one layer per module instead of one fused weight per group (the same
    /// output; a baseline for measurements).
    #[arg(long)]
    pub separate_projections: bool,
    /// Run every decode step op by op, never as a recorded step (on CUDA a step is otherwise recorded once
    /// as a CUDA graph and replayed with one launch per token; the same logits; a baseline for
    /// measurements).
    #[arg(long)]
    pub no_step_graphs: bool,
}

impl ModelArgs {
    pub fn load(
        &self,
        global: &Global,
    ) -> Result<(Model, f64), Box<dyn std::error::Error + Send + Sync>> {
        let dev = open_device(global)?;
        let format = LoadFormat::parse(&self.format).ok_or("unknown --format")?;
        let opts = LoadOptions {
            format,
            max_context: self.max_context,
            adapters: self
                .lora
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("lora{i}"), d.clone()))
                .collect(),
            merge_adapter: self.merge_lora,
            widen_float_weights: self.widen_weights,
            int8_activations: self.activations == "int8",
            activation_dtype: match self.activations.as_str() {
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                _ => DType::F32,
            },
            fuse_projections: !self.separate_projections,
            record_decode_steps: !self.no_step_graphs,
        };
        let t = Instant::now();
        let mut model = Model::load(&self.model, &dev, &opts)?;
        if !self.lora.is_empty() && !self.merge_lora {
            model.set_adapter(Some("lora0"))?;
        }
        Ok((model, t.elapsed().as_secs_f64()))
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long, short)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// CTRL repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the warm-up run (a prompt of the same length, up to 1024 tokens, and one decode step on a
    /// scratch cache, after loading) that makes the reported prefill and decode speeds steady-state figures;
    /// without it the prefill also pays the device's one-time setup.
    #[arg(long)]
    pub no_warmup: bool,
}

/// Bytes per second a device copies (each byte read and written counted once each), best of three runs of
/// ten copies of 96 MiB (larger than the last-level caches, within wgpu's default 128 MiB binding limit); None where the
/// device cannot be measured (the figure is then left out, never guessed).
fn device_copy_bandwidth(dev: &lowbit::Device) -> Option<f64> {
    const ROWS: usize = 24 << 10;
    const COLS: usize = 1 << 10; // 24 Mi f32 = 96 MiB
    let zeros = lowbit::Tensor::f32(vec![ROWS, COLS], vec![0.0; ROWS * COLS]).ok()?;
    let (src, dst) = (dev.to_device(&zeros).ok()?, dev.to_device(&zeros).ok()?);
    drop(zeros);
    dev.copy_rows(&dst, 0, &src).ok()?;
    dev.synchronize().ok()?;
    // Ten queued copies per wait, so the wait's own latency does not count as slow memory.
    const COPIES: usize = 10;
    let best = (0..3)
        .filter_map(|_| {
            let t = Instant::now();
            for _ in 0..COPIES {
                dev.copy_rows(&dst, 0, &src).ok()?;
            }
            dev.synchronize().ok()?;
            Some(t.elapsed().as_secs_f64())
        })
        .fold(f64::INFINITY, f64::min);
    best.is_finite()
        .then(|| 2.0 * (COPIES * ROWS * COLS * 4) as f64 / best)
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let (model, load_s) = args.model.load(global)?;
    let tok = TextTokenizer::load(&args.model.model, &model.config().eos_token_ids)?;
    let ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        tok.encode(&tok.apply_chat_template(&messages)?, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let t = Instant::now();
    if !args.no_warmup {
        model.warm_up(ids.len())?;
    }
    let warmup_s = t.elapsed().as_secs_f64();
    let opts = GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_ids: tok.stop_ids().to_vec(),
    };
    let mut generator = Generator::new(&model, &ids, opts)?;
    let mut stream = TextStream::new();
    let mut text = String::new();
    let mut generated = Vec::new();
    for id in generator.by_ref() {
        let id = id?;
        generated.push(id);
        if let Some(piece) = stream.push(&tok, id)? {
            if !global.json {
                out!("{piece}");
                output::flush()?;
            }
            text.push_str(&piece);
        }
    }
    let stats = generator.stats();
    let kv_len = generator.cached();
    let bytes = model.bytes_per_token(kv_len);
    let decode_gbs = bytes as f64 * stats.decode_tokens_per_s() / 1e9;
    // Bytes per token against the memory bandwidth measured now: the host read probe on the CPU, a device
    // copy (read + write, as torch reports copies) elsewhere.
    let fraction = match model.device().id() {
        "cpu" => Some(lowbit::bench::measure_read_bandwidth_with(256 << 20, 3)),
        _ => device_copy_bandwidth(model.device()),
    }
    .map(|bw| decode_gbs * 1e9 / bw);
    let peak = lowbit::io::peak_rss_bytes();
    let dev_stats = model.device().stats();
    // CPU fallbacks of ops; a step's fallback is a step that ran op by op instead of from a recording.
    let fallbacks: u64 = dev_stats
        .ops
        .iter()
        .filter(|(k, _)| k.as_str() != lowbit::runtime::OpKind::Step.name())
        .map(|(_, s)| s.fallbacks)
        .sum();
    let unrecorded = dev_stats.op(lowbit::runtime::OpKind::Step).fallbacks;
    let recorded = model.recorded_decode_steps();
    if global.json {
        // Host time per call of each op kind (launch and bookkeeping on GPUs, where the work is queued).
        let ops: serde_json::Map<String, serde_json::Value> = dev_stats
            .ops
            .iter()
            .map(|(kind, s)| {
                let per_call_us = s.total_ns as f64 / s.runs.max(1) as f64 / 1e3;
                let v = serde_json::json!({ "runs": s.runs, "host_us_per_call": per_call_us });
                (kind.clone(), v)
            })
            .collect();
        output::print_json(&serde_json::json!({
            "text": text, "prompt_tokens": ids.len(), "generated_ids": generated,
            "device": model.device().id(), "load_s": load_s, "warmup_s": warmup_s,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
            "decode_issue_fraction": stats.decode_issue_fraction(),
            "bytes_per_token": bytes, "decode_gb_per_s": decode_gbs,
            "bandwidth_fraction": fraction, "peak_rss_bytes": peak, "fallbacks": fallbacks,
            "decode_steps": stats.decode_steps, "decode_steps_recorded": recorded,
            "steps_not_recorded": unrecorded, "ops": ops,
        }))?;
        return Ok(());
    }
    outln!();
    output::flush()?;
    let mut line = format!(
        "{} prompt tokens, {} generated on {} | load {:.2} s{} | prefill {:.1} tok/s | decode {:.1} tok/s, \
         {:.1} MB/token, {:.2} GB/s",
        ids.len(),
        stats.generated,
        model.device().id(),
        load_s,
        if args.no_warmup {
            String::new()
        } else {
            format!(" (warm-up {warmup_s:.2} s)")
        },
        stats.prefill_tokens_per_s(),
        stats.decode_tokens_per_s(),
        bytes as f64 / 1e6,
        decode_gbs
    );
    if let Some(f) = fraction {
        line.push_str(&format!(
            " ({:.1}% of the memory bandwidth measured now)",
            100.0 * f
        ));
    }
    if let Some(p) = peak {
        line.push_str(&format!(
            " | peak RSS {:.0} MiB",
            p as f64 / (1 << 20) as f64
        ));
    }
    if recorded > 0 {
        line.push_str(&format!(
            " | {recorded} of {} decode steps replayed as recorded graphs",
            stats.decode_steps
        ));
    }
    if unrecorded > 0 {
        line.push_str(&format!(
            " | {unrecorded} decode steps could not be recorded (see the log)"
        ));
    }
    if fallbacks > 0 {
        line.push_str(&format!(
            " | {fallbacks} ops fell back to the CPU (see the log)"
        ));
    }
    eprintln!("{line}");
    Ok(())
}
