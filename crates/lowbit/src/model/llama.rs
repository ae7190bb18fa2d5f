//! Llama-family causal language models (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM, TinyLlama) and BitNet
//! b1.58 on one device, loaded from a Hugging Face model directory in transformers' names. Every op runs on
//! the model's device; the host sends token ids and reads logits.

use super::adapter::PeftAdapter;
use super::checkpoint::{Checkpoint, StoredWeight};
use super::config::{Architecture, ModelConfig};
pub use super::kv_cache::KvCache;
use super::kv_cache::next_id;
use super::loader::Loader;
use super::projections::Projections;
use crate::capability::{StepArgs, StepKey, StepRun};
use crate::device_tensor::DeviceTensor;
use crate::format::rope::{cos_sin_table, inv_freq};
use crate::nn::linear::{Linear, LoadFormat};
use crate::nn::lora::LoraAdapter;
use crate::runtime::Device;
use crate::tensor::{DType, Tensor, TensorData};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

mod forward;

/// The longest prompt [`Model::warm_up`] runs: a longer one is warmed at this length.
pub const WARM_UP_MAX_TOKENS: usize = 1024;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Format of the decoder's linear layers when the checkpoint holds float weights (pre-quantized
    /// weights keep their format). Embeddings, norms and `lm_head` stay float, as bitsandbytes leaves them.
    pub format: LoadFormat,
    /// Widen every float weight (float linear layers, `lm_head`, embeddings) to f32 on the device instead of
    /// keeping the checkpoint's dtype: the same logits (widening is exact and the kernels widen in registers
    /// anyway) for twice the bytes; a baseline for tests and measurements.
    pub widen_float_weights: bool,
    /// Longest context to serve (RoPE tables and KV cache); default `min(config, 4096)`.
    pub max_context: Option<usize>,
    /// PEFT LoRA adapters: (name, directory).
    pub adapters: Vec<(String, PathBuf)>,
    /// Merge the first adapter into the float weights before quantizing (PEFT's `merge_and_unload`).
    pub merge_adapter: bool,
    /// Int8 activations on the CPU (`format::q8`, llama.cpp's CPU arithmetic): 4-bit layers decode with
    /// integer dot products, float linear layers (the output head included) become Q8 blocks. Faster, not
    /// bitsandbytes' arithmetic; logits held to their own bound. A CPU option: other devices refuse it.
    pub int8_activations: bool,
    /// Q, K and V (and gate and up) each as one weight where their formats allow (float or 4-bit, no unmerged
    /// adapter on them): every output row is the same dot product, so the logits are the same bits, from
    /// fewer and larger products (`model::projections`). Off: one layer per module, as transformers has.
    pub fuse_projections: bool,
    /// The activations' dtype between layers and in the KV cache (transformers' `torch_dtype`,
    /// bitsandbytes' `compute_dtype`): f32 (the default), f16 or bf16. Every product still accumulates in
    /// f32; each op rounds its result to this dtype. Half the activation and cache bytes, and batched 4-bit
    /// and float products run on tensor cores (cuBLAS) on CUDA; the logits move by about the dtype's
    /// rounding (bounds in tests/model_logits.rs). Not with `int8_activations`.
    pub activation_dtype: DType,
    /// Decode steps recorded once and replayed on a device that records work (CUDA graphs): the host then
    /// issues one launch per token instead of every op. Off: every step op by op (for comparisons).
    pub record_decode_steps: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: LoadFormat::Float,
            widen_float_weights: false,
            max_context: None,
            adapters: Vec::new(),
            merge_adapter: false,
            int8_activations: false,
            fuse_projections: true,
            activation_dtype: DType::F32,
            record_decode_steps: true,
        }
    }
}

struct Layer {
    input_norm: DeviceTensor,
    post_norm: DeviceTensor,
    /// Q, K, V.
    qkv: Projections,
    o: Linear,
    q_norm: Option<DeviceTensor>,
    k_norm: Option<DeviceTensor>,
    attn_sub_norm: Option<DeviceTensor>,
    /// Gate, up.
    gate_up: Projections,
    down: Linear,
    ffn_sub_norm: Option<DeviceTensor>,
}

impl Layer {
    /// The decoder's linear layers with their transformers module names (relative to the layer).
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut v = self.qkv.linears_mut();
        v.push(("self_attn.o_proj", &mut self.o));
        v.extend(self.gate_up.linears_mut());
        v.push(("mlp.down_proj", &mut self.down));
        v
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut v = self.qkv.linears();
        v.push(&self.o);
        v.extend(self.gate_up.linears());
        v.push(&self.down);
        v
    }
}

/// A loaded model on one device.
pub struct Model {
    config: ModelConfig,
    dev: Device,
    embed: DeviceTensor,
    layers: Vec<Layer>,
    norm: DeviceTensor,
    lm_head: Linear,
    cos: DeviceTensor,
    sin: DeviceTensor,
    max_context: usize,
    adapter_names: Vec<String>,
    active_adapter: Option<String>,
    /// [`LoadOptions::activation_dtype`].
    act: DType,
    /// [`LoadOptions::record_decode_steps`].
    record_steps: bool,
    /// Decode steps run from a recording so far.
    graph_steps: std::sync::atomic::AtomicU64,
    /// Unique per loaded model in this process, and bumped whenever the active adapter changes: a recorded
    /// step is keyed by it (with the cache's id), since it bakes in the weights it ran.
    step_key: u64,
}

/// The transformers module prefix of layer `i`.
fn layer_prefix(i: usize) -> String {
    format!("model.layers.{i}")
}

impl Model {
    /// Loads `dir` (config.json + safetensors) onto `dev`.
    pub fn load(dir: &Path, dev: &Device, opts: &LoadOptions) -> Result<Model> {
        let act = opts.activation_dtype;
        if !act.is_float() {
            return Err(Error::invalid(
                "load",
                format!("activation dtype {act} is not a float dtype: use f32, f16 or bf16"),
            ));
        }
        if opts.int8_activations && act != DType::F32 {
            return Err(Error::invalid(
                "load",
                "int8 activations are quantized from f32 ones: use activation dtype f32 with them",
            ));
        }
        let config = ModelConfig::from_file(&dir.join(crate::io::model_dir::CONFIG))?;
        let ckpt = Checkpoint::open(dir)?;
        let adapters: Vec<(String, PeftAdapter)> = opts
            .adapters
            .iter()
            .map(|(n, d)| Ok((n.clone(), PeftAdapter::open(d)?)))
            .collect::<Result<_>>()?;
        let merge = if opts.merge_adapter {
            Some(
                &adapters
                    .first()
                    .ok_or_else(|| Error::invalid("load", "merge_adapter without an adapter"))?
                    .1,
            )
        } else {
            None
        };
        Model::build(config, &ckpt, dev, opts, merge, &adapters)
    }

    fn build(
        config: ModelConfig,
        ckpt: &Checkpoint,
        dev: &Device,
        opts: &LoadOptions,
        merge: Option<&PeftAdapter>,
        adapters: &[(String, PeftAdapter)],
    ) -> Result<Model> {
        let c = &config;
        let ld = Loader {
            dev,
            ckpt,
            format: opts.format,
            merge,
            unmerged: &adapters[usize::from(merge.is_some())..],
            ternary_scale: c.ternary_scale,
            int8_threshold: c.int8_threshold,
            widen: opts.widen_float_weights,
            fuse: opts.fuse_projections,
        };
        // The table keeps the checkpoint's dtype; the gather's rows are widened to the f32 activations.
        let embed_t = ld.float_weight("model.embed_tokens.weight")?;
        if embed_t.shape() != [c.vocab_size, c.hidden_size] {
            return Err(Error::Checkpoint {
                path: ckpt.dir().to_path_buf(),
                detail: format!(
                    "model.embed_tokens.weight must be [{}, {}], got {:?}",
                    c.vocab_size,
                    c.hidden_size,
                    embed_t.shape()
                ),
            });
        }
        let embed = dev.to_device(&embed_t)?;
        drop(embed_t);
        let bitnet = c.architecture == Architecture::BitNet;
        let (qb, ob) = match c.architecture {
            Architecture::Qwen2 => (true, false),
            _ => (c.attention_bias, c.attention_bias),
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = layer_prefix(i);
            let h = c.hidden_size;
            let hd_norm = |name: &str| ld.norm(&format!("{p}.self_attn.{name}.weight"), c.head_dim);
            layers.push(Layer {
                input_norm: ld.norm(&format!("{p}.input_layernorm.weight"), h)?,
                post_norm: ld.norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                qkv: ld.projections(
                    &p,
                    &[
                        ("self_attn.q_proj", c.q_dim()),
                        ("self_attn.k_proj", c.kv_dim()),
                        ("self_attn.v_proj", c.kv_dim()),
                    ],
                    h,
                    qb,
                )?,
                o: ld.linear(&format!("{p}.self_attn.o_proj"), h, c.q_dim(), ob)?,
                q_norm: c.qk_norm.then(|| hd_norm("q_norm")).transpose()?,
                k_norm: c.qk_norm.then(|| hd_norm("k_norm")).transpose()?,
                attn_sub_norm: bitnet
                    .then(|| ld.norm(&format!("{p}.self_attn.attn_sub_norm.weight"), c.q_dim()))
                    .transpose()?,
                gate_up: ld.projections(
                    &p,
                    &[
                        ("mlp.gate_proj", c.intermediate_size),
                        ("mlp.up_proj", c.intermediate_size),
                    ],
                    h,
                    c.mlp_bias,
                )?,
                down: ld.linear(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                ffn_sub_norm: bitnet
                    .then(|| ld.norm(&format!("{p}.mlp.ffn_sub_norm.weight"), c.intermediate_size))
                    .transpose()?,
            });
        }
        let norm = ld.norm("model.norm.weight", c.hidden_size)?;
        let lm_head = if c.tie_word_embeddings || !ckpt.contains("lm_head.weight") {
            if !c.tie_word_embeddings {
                return Err(Error::Checkpoint {
                    path: ckpt.dir().to_path_buf(),
                    detail: "lm_head.weight is missing and tie_word_embeddings is false".into(),
                });
            }
            Linear::from_device(embed.clone())?
        } else {
            // bitsandbytes and transformers keep lm_head in float.
            let w = ld.float_weight("lm_head.weight")?;
            Linear::load(
                dev,
                "lm_head.weight",
                StoredWeight::Float(w),
                None,
                LoadFormat::Float,
                0.0,
            )?
        };
        let max_context = opts
            .max_context
            .unwrap_or(c.max_positions.min(4096))
            .min(c.max_positions)
            .max(1);
        let freqs = inv_freq(c.head_dim, c.rope_theta, c.rope_scaling.as_ref());
        let (cos, sin) = cos_sin_table(&freqs, 0..max_context);
        let half = c.head_dim / 2;
        let mut model = Model {
            cos: dev.to_device(&Tensor::f32(vec![max_context, half], cos)?)?,
            sin: dev.to_device(&Tensor::f32(vec![max_context, half], sin)?)?,
            config,
            dev: dev.clone(),
            embed,
            layers,
            norm,
            lm_head,
            max_context,
            adapter_names: Vec::new(),
            active_adapter: None,
            act: opts.activation_dtype,
            record_steps: opts.record_decode_steps,
            graph_steps: Default::default(),
            step_key: next_id(),
        };
        for (name, a) in adapters.iter().skip(usize::from(merge.is_some())) {
            model.add_adapter(name, a)?;
        }
        if opts.int8_activations {
            model.use_int8_activations()?;
        }
        Ok(model)
    }

    /// Every linear layer and the output head to int8 activations (see [`LoadOptions::int8_activations`]).
    fn use_int8_activations(&mut self) -> Result<()> {
        if self.dev.backend().kind() != crate::backend::BackendKind::Cpu {
            return Err(Error::InvalidArgument {
                op: "load",
                detail: format!(
                    "int8 activations are a CPU decode path and {} is not a CPU: load without them \
                     (--activations float) or on the CPU (--device cpu)",
                    self.dev.id()
                ),
            });
        }
        let dev = self.dev.clone();
        for l in &mut self.layers {
            for (_, lin) in l.linears_mut() {
                lin.use_int8_activations(&dev)?;
            }
        }
        self.lm_head.use_int8_activations(&dev)?;
        Ok(())
    }

    fn add_adapter(&mut self, name: &str, a: &PeftAdapter) -> Result<()> {
        let mut used = 0;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = layer_prefix(i);
            for (m, lin) in l.linears_mut() {
                if let Some(w) = a.modules.get(&format!("{p}.{m}")) {
                    lin.add_adapter(name, LoraAdapter::upload(&self.dev, w)?)?;
                    used += 1;
                }
            }
        }
        if used != a.modules.len() {
            let known: Vec<String> = (0..self.layers.len()).map(layer_prefix).collect();
            let stray = a
                .modules
                .keys()
                .find(|k| !known.iter().any(|p| k.starts_with(&format!("{p}."))))
                .cloned()
                .unwrap_or_default();
            return Err(Error::Checkpoint {
                path: a.dir.clone(),
                detail: format!(
                    "{} of {} adapted modules are not decoder linear layers of this model (e.g. {stray:?})",
                    a.modules.len() - used,
                    a.modules.len()
                ),
            });
        }
        self.adapter_names.push(name.to_string());
        Ok(())
    }

    /// Activates the LoRA adapter `name` in every layer that has one, or none.
    pub fn set_adapter(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name
            && !self.adapter_names.iter().any(|a| a == n)
        {
            return Err(Error::invalid(
                "set_adapter",
                format!("no adapter {n:?}; loaded: {:?}", self.adapter_names),
            ));
        }
        if self.active_adapter.as_deref() == name {
            return Ok(());
        }
        for l in &mut self.layers {
            for (_, lin) in l.linears_mut() {
                lin.set_adapter(name);
            }
        }
        self.active_adapter = name.map(str::to_string);
        self.step_key = next_id();
        Ok(())
    }

    /// Projection groups (Q/K/V, gate/up) loaded as one weight ([`LoadOptions::fuse_projections`]).
    pub fn fused_projection_groups(&self) -> usize {
        self.layers
            .iter()
            .map(|l| usize::from(l.qkv.is_fused()) + usize::from(l.gate_up.is_fused()))
            .sum()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The longest context this model was loaded for.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Runs a prompt of `prompt_tokens` tokens (at most [`WARM_UP_MAX_TOKENS`], at least 16) and one
    /// decode step through a scratch KV cache, so that the device's one-time work (kernel programs loaded,
    /// cuBLAS opened and its kernels for these product shapes loaded, memory pools grown, the CPU's thread
    /// pool woken) is done before anything is timed: a prefill of that length and a decode measured
    /// afterwards are steady-state figures, as after llama.cpp's warm-up run of the same test. The scratch
    /// cache is dropped; the model is unchanged.
    pub fn warm_up(&self, prompt_tokens: usize) -> Result<()> {
        // At least enough rows that a prompt takes the batched products (more than the GEMV routes' 8).
        let n = prompt_tokens
            .clamp(16, WARM_UP_MAX_TOKENS)
            .min(self.max_context.saturating_sub(1))
            .max(1);
        let mut cache = self.new_cache((n + 1).min(self.max_context))?;
        // Token 0 is in every vocabulary.
        let logits = self.queue_last(&vec![0; n], &mut cache)?;
        self.read_logits(&logits)?;
        if cache.len < cache.capacity {
            let logits = self.queue_last(&[0], &mut cache)?;
            self.read_logits(&logits)?;
        }
        Ok(())
    }

    /// An empty KV cache for up to `capacity` positions (at most [`Model::max_context`]).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        if capacity == 0 || capacity > self.max_context {
            return Err(Error::invalid(
                "kv cache",
                format!("capacity {capacity} must be in 1..={}", self.max_context),
            ));
        }
        let c = &self.config;
        // Zero bytes are +0.0 in every float dtype.
        let zeros = Tensor::new(
            vec![capacity, c.num_kv_heads, c.head_dim],
            TensorData::from_bytes(
                self.act,
                &vec![0u8; capacity * c.kv_dim() * self.act.size_in_bytes()],
            ),
        )?;
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(self.dev.to_device(&zeros)?);
            v.push(self.dev.to_device(&zeros)?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
            id: next_id(),
        })
    }

    /// Runs `tokens` at the next positions of `cache` and returns the logits of every token `[n, vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.on_cpu_pool(|| {
            let h = self.hidden(tokens, cache)?;
            let logits = self.lm_head.forward(&self.dev, &h)?;
            self.dev.to_host(&logits)
        })
    }

    /// Like [`Model::forward`], returning only the last token's logits (the head runs on one row).
    pub fn forward_last(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let logits = self.queue_last(tokens, cache)?;
        self.read_logits(&logits)
    }

    /// The ops of [`Model::forward_last`], queued on the device: on a GPU this returns once the host has
    /// issued them (the time it takes is the host's share of a decode step), on the CPU once they ran.
    pub fn queue_last(&self, tokens: &[u32], cache: &mut KvCache) -> Result<DeviceTensor> {
        self.on_cpu_pool(|| match tokens {
            [token] if self.record_steps => self.decode_step(*token, cache),
            _ => self.last_logits(tokens, cache),
        })
    }

    /// `tokens` through the model and the head on the last one's hidden state.
    fn last_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<DeviceTensor> {
        let h = self.hidden(tokens, cache)?;
        let last = match tokens.len() {
            1 => h,
            n => self.dev.embedding(&h, &[n as u32 - 1])?,
        };
        self.lm_head.forward(&self.dev, &last)
    }

    /// One token through the model as a recorded step (`Device::recorded_step`): on a device that records
    /// work, replayed from the third token of a cache on.
    fn decode_step(&self, token: u32, cache: &mut KvCache) -> Result<DeviceTensor> {
        self.check_fits(1, cache)?;
        let pos = cache.len;
        let key = StepKey(self.step_key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ cache.id);
        let args = StepArgs {
            pos,
            tokens: vec![token],
        };
        let (y, run) = self.dev.recorded_step(key, &args, &mut || {
            // A step may run twice (a failed recording, then op by op): both start at `pos`.
            cache.len = pos;
            self.last_logits(&[token], cache)
        })?;
        cache.len = pos + 1;
        if run != StepRun::OpByOp {
            self.graph_steps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(y)
    }

    /// Decode steps this model ran from a recording (a CUDA graph) instead of op by op.
    pub fn recorded_decode_steps(&self) -> u64 {
        self.graph_steps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A typed error unless `n` more tokens fit `cache`.
    fn check_fits(&self, n: usize, cache: &KvCache) -> Result<()> {
        if cache.len + n > cache.capacity || cache.k.len() != self.layers.len() {
            return Err(Error::invalid(
                "forward",
                format!(
                    "{n} tokens after {} cached positions exceed the cache of {} (start a new cache or load \
                     with a longer max_context)",
                    cache.len, cache.capacity
                ),
            ));
        }
        Ok(())
    }

    /// Logits queued by [`Model::queue_last`], read to the host (waiting for the device).
    pub fn read_logits(&self, logits: &DeviceTensor) -> Result<Vec<f32>> {
        Ok(self.dev.to_host(logits)?.floats("forward")?.to_f32_vec())
    }

    /// Runs `f` on a thread of the CPU kernels' thread pool when the model is on the CPU: each parallel
    /// kernel then forks and joins among the pool's own threads, instead of every one of a pass's ~200
    /// kernels handing its work from the caller's thread to the pool and putting the caller to sleep until
    /// it is done (a context switch each way, which cost SmolLM2-135M about a third of its decode time).
    fn on_cpu_pool<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        if self.dev.backend().kind() == crate::backend::BackendKind::Cpu {
            rayon::scope(|_| f())
        } else {
            f()
        }
    }

    /// Bytes one decode step reads at least: every weight once (the embedding row aside), the KV cache
    /// rows attended over, and the norms.
    pub fn bytes_per_token(&self, kv_len: usize) -> u64 {
        let c = &self.config;
        let linears: u64 = self
            .layers
            .iter()
            .map(|l| l.linears().iter().map(|x| x.weight_bytes()).sum::<u64>())
            .sum();
        let kv = (2 * c.num_layers * kv_len * c.kv_dim() * self.act.size_in_bytes()) as u64;
        linears + self.lm_head.weight_bytes() + kv
    }
}
