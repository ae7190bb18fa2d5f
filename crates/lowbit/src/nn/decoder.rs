//! One Llama-family decoder block on device tensors: RMSNorm -> 4-bit Q/K/V -> RoPE -> causal grouped-query
//! attention over a KV cache -> 4-bit O -> residual -> RMSNorm -> 4-bit gate/up -> SiLU * up -> 4-bit down
//! -> residual. Everything stays on one device; the host sends token activations in and reads results out.

use crate::device_tensor::DeviceTensor;
use crate::format::FourBitType;
use crate::format::rope::{RopeLayout, cos_sin_table, inv_freq};
use crate::ops::Weight4bit;
use crate::runtime::Device;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// The shape of a block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub rope_theta: f64,
    pub rms_eps: f32,
    /// KV cache rows (the longest context the block serves).
    pub max_positions: usize,
}

impl BlockConfig {
    /// Llama-3-8B's block.
    pub fn llama3_8b(max_positions: usize) -> BlockConfig {
        BlockConfig {
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14336,
            rope_theta: 500000.0,
            rms_eps: 1e-5,
            max_positions,
        }
    }
}

/// The op kinds of one decode step of a block (`DecoderBlock::repeat_op` times them one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    RmsNorm,
    LinearQ,
    /// The K or the V projection.
    LinearKv,
    LinearO,
    /// The gate or the up projection.
    LinearGateUp,
    LinearDown,
    RopeQ,
    RopeK,
    /// Appending one token's K or V row to its cache.
    CacheWrite,
    Attention,
    /// A residual add.
    Add,
    SiluMul,
}

impl BlockOp {
    pub const ALL: [BlockOp; 12] = [
        BlockOp::RmsNorm,
        BlockOp::LinearQ,
        BlockOp::LinearKv,
        BlockOp::LinearO,
        BlockOp::LinearGateUp,
        BlockOp::LinearDown,
        BlockOp::RopeQ,
        BlockOp::RopeK,
        BlockOp::CacheWrite,
        BlockOp::Attention,
        BlockOp::Add,
        BlockOp::SiluMul,
    ];

    /// How often the kind occurs in one block's forward pass.
    pub fn per_block(self) -> usize {
        match self {
            BlockOp::RmsNorm
            | BlockOp::LinearKv
            | BlockOp::LinearGateUp
            | BlockOp::CacheWrite
            | BlockOp::Add => 2,
            _ => 1,
        }
    }
}

/// A block's weights on a device and its KV cache.
pub struct DecoderBlock {
    pub config: BlockConfig,
    input_norm: DeviceTensor,
    post_norm: DeviceTensor,
    q: Weight4bit,
    k: Weight4bit,
    v: Weight4bit,
    o: Weight4bit,
    gate: Weight4bit,
    up: Weight4bit,
    down: Weight4bit,
    cos: DeviceTensor,
    sin: DeviceTensor,
    k_cache: DeviceTensor,
    v_cache: DeviceTensor,
    /// Rows of the KV cache in use.
    len: usize,
}

/// The host-side weights of a block, in nn.Linear layout (`[out, in]`), float.
pub struct BlockWeights {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl BlockWeights {
    /// Synthetic weights (Gaussian, fixed seed) of `config`'s shapes.
    pub fn synthetic(config: &BlockConfig, seed: u64) -> BlockWeights {
        let c = config;
        let n = |shape: Vec<usize>, scale: f32, s: u64| {
            crate::synth::normal(shape, scale, seed.wrapping_add(s), DType::F32)
        };
        let qd = c.heads * c.head_dim;
        let kvd = c.kv_heads * c.head_dim;
        let norm = |s: u64| {
            let t = n(vec![c.hidden], 0.1, s);
            let v: Vec<f32> = match t.data() {
                crate::tensor::TensorData::Float(f) => {
                    f.to_f32_vec().iter().map(|x| 1.0 + x).collect()
                }
                _ => unreachable!("synth::normal returns floats"),
            };
            Tensor::vector(v)
        };
        let scale = 1.0 / (c.hidden as f32).sqrt();
        BlockWeights {
            input_norm: norm(1),
            post_norm: norm(2),
            q: n(vec![qd, c.hidden], scale, 3),
            k: n(vec![kvd, c.hidden], scale, 4),
            v: n(vec![kvd, c.hidden], scale, 5),
            o: n(vec![c.hidden, qd], scale, 6),
            gate: n(vec![c.intermediate, c.hidden], scale, 7),
            up: n(vec![c.intermediate, c.hidden], scale, 8),
            down: n(
                vec![c.hidden, c.intermediate],
                1.0 / (c.intermediate as f32).sqrt(),
                9,
            ),
        }
    }
}

impl DecoderBlock {
    /// Quantizes the linear weights to `quant_type` (block size 64, double quantization) on the CPU, then
    /// uploads everything to `dev` once, with an f32 KV cache of `config.max_positions` rows.
    pub fn new(
        dev: &Device,
        config: BlockConfig,
        w: &BlockWeights,
        quant_type: FourBitType,
    ) -> Result<DecoderBlock> {
        let c = config;
        if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) || !c.head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument {
                op: "decoder block",
                detail: format!(
                    "{} heads over {} KV heads of dim {}: heads must divide evenly, head_dim be even",
                    c.heads, c.kv_heads, c.head_dim
                ),
            });
        }
        let cpu = Device::cpu();
        let q4 = |t: &Tensor| -> Result<Weight4bit> {
            dev.upload_4bit(&cpu.quantize_4bit(t, quant_type, 64, true)?)
        };
        let freqs = inv_freq(c.head_dim, c.rope_theta, None);
        let (cos, sin) = cos_sin_table(&freqs, 0..c.max_positions);
        let half = c.head_dim / 2;
        let cache = Tensor::f32(
            vec![c.max_positions, c.kv_heads, c.head_dim],
            vec![0.0; c.max_positions * c.kv_heads * c.head_dim],
        )?;
        Ok(DecoderBlock {
            config,
            input_norm: dev.to_device(&w.input_norm)?,
            post_norm: dev.to_device(&w.post_norm)?,
            q: q4(&w.q)?,
            k: q4(&w.k)?,
            v: q4(&w.v)?,
            o: q4(&w.o)?,
            gate: q4(&w.gate)?,
            up: q4(&w.up)?,
            down: q4(&w.down)?,
            cos: dev.to_device(&Tensor::f32(vec![c.max_positions, half], cos)?)?,
            sin: dev.to_device(&Tensor::f32(vec![c.max_positions, half], sin)?)?,
            k_cache: dev.to_device(&cache)?,
            v_cache: dev.to_device(&cache)?,
            len: 0,
        })
    }

    /// Rows of the KV cache in use.
    pub fn cached(&self) -> usize {
        self.len
    }

    /// Marks `len` cache rows as filled (benchmarks start decoding at a long context without prefilling it).
    pub fn set_cached(&mut self, len: usize) -> Result<()> {
        if len > self.config.max_positions {
            return Err(Error::InvalidArgument {
                op: "decoder block",
                detail: format!(
                    "{len} cached rows exceed the cache of {}",
                    self.config.max_positions
                ),
            });
        }
        self.len = len;
        Ok(())
    }

    /// Runs the block on `x [tokens, hidden]` (f32) at the next positions, appending to the KV cache.
    pub fn forward(&mut self, dev: &Device, x: &DeviceTensor) -> Result<DeviceTensor> {
        let c = self.config;
        let tokens = x.shape().first().copied().unwrap_or(0);
        if x.shape() != [tokens, c.hidden] || self.len + tokens > c.max_positions {
            return Err(Error::shape(
                "decoder block",
                format!(
                    "x must be [tokens, {}] with tokens fitting the cache ({} of {} used), got {:?}",
                    c.hidden,
                    self.len,
                    c.max_positions,
                    x.shape()
                ),
            ));
        }
        let pos = self.len;
        let h = dev.rms_norm_on(x, &self.input_norm, c.rms_eps)?;
        let q = dev.linear_4bit(&h, &self.q, None)?;
        let k = dev.linear_4bit(&h, &self.k, None)?;
        let v = dev.linear_4bit(&h, &self.v, None)?;
        let q = q.reshape(vec![tokens, c.heads, c.head_dim])?;
        let k = k.reshape(vec![tokens, c.kv_heads, c.head_dim])?;
        let v = v.reshape(vec![tokens, c.kv_heads, c.head_dim])?;
        let layout = RopeLayout::Halves;
        let q = dev.rope(&q, &self.cos, &self.sin, pos, c.head_dim, layout)?;
        let k = dev.rope(&k, &self.cos, &self.sin, pos, c.head_dim, layout)?;
        dev.copy_kv_rows(&self.k_cache, &self.v_cache, pos, &k, &v)?;
        self.len = pos + tokens;
        let a = dev.attention(&q, &self.k_cache, &self.v_cache, self.len, None)?;
        let a = a.reshape(vec![tokens, c.heads * c.head_dim])?;
        let o = dev.linear_4bit(&a, &self.o, None)?;
        let x = dev.add(x, &o)?;
        let h = dev.rms_norm_on(&x, &self.post_norm, c.rms_eps)?;
        let g = dev.linear_4bit(&h, &self.gate, None)?;
        let u = dev.linear_4bit(&h, &self.up, None)?;
        let m = dev.silu_mul(&g, &u)?;
        let d = dev.linear_4bit(&m, &self.down, None)?;
        dev.add(&x, &d)
    }

    /// Runs one op kind of a decode step `reps` times, chained on the device (nothing read back), with this
    /// block's weights and one-token shapes at the cached length, on synthetic inputs uploaded first. Returns
    /// how often the kind occurs in one block, so a profiler can time each kind and scale it to the block.
    /// RoPE and cache writes use position `cached()` (the next one; the last row when the cache is full),
    /// whose cache row the next forward overwrites.
    pub fn repeat_op(&self, dev: &Device, kind: BlockOp, reps: usize) -> Result<usize> {
        let c = self.config;
        let input = |shape: Vec<usize>| -> Result<DeviceTensor> {
            dev.to_device(&crate::synth::normal(shape, 1.0, 11, DType::F32))
        };
        let qd = c.heads * c.head_dim;
        let pos = self.len.min(c.max_positions.saturating_sub(1));
        let layout = RopeLayout::Halves;
        let linear = |w: &Weight4bit, cols: usize| -> Result<()> {
            let x = input(vec![1, cols])?;
            for _ in 0..reps {
                dev.linear_4bit(&x, w, None)?;
            }
            Ok(())
        };
        match kind {
            BlockOp::RmsNorm => {
                let x = input(vec![1, c.hidden])?;
                for _ in 0..reps {
                    dev.rms_norm_on(&x, &self.input_norm, c.rms_eps)?;
                }
            }
            BlockOp::LinearQ => linear(&self.q, c.hidden)?,
            BlockOp::LinearKv => linear(&self.k, c.hidden)?,
            BlockOp::LinearO => linear(&self.o, qd)?,
            BlockOp::LinearGateUp => linear(&self.gate, c.hidden)?,
            BlockOp::LinearDown => linear(&self.down, c.intermediate)?,
            BlockOp::RopeQ | BlockOp::RopeK => {
                let heads = if kind == BlockOp::RopeQ {
                    c.heads
                } else {
                    c.kv_heads
                };
                let x = input(vec![1, heads, c.head_dim])?;
                for _ in 0..reps {
                    dev.rope(&x, &self.cos, &self.sin, pos, c.head_dim, layout)?;
                }
            }
            BlockOp::CacheWrite => {
                let x = input(vec![1, c.kv_heads, c.head_dim])?;
                for _ in 0..reps {
                    dev.copy_rows(&self.k_cache, pos, &x)?;
                }
            }
            BlockOp::Attention => {
                let q = input(vec![1, c.heads, c.head_dim])?;
                let kv_len = self.len.max(1);
                for _ in 0..reps {
                    dev.attention(&q, &self.k_cache, &self.v_cache, kv_len, None)?;
                }
            }
            BlockOp::Add | BlockOp::SiluMul => {
                let n = if kind == BlockOp::Add {
                    c.hidden
                } else {
                    c.intermediate
                };
                let (a, b) = (input(vec![1, n])?, input(vec![1, n])?);
                for _ in 0..reps {
                    if kind == BlockOp::Add {
                        dev.add(&a, &b)?;
                    } else {
                        dev.silu_mul(&a, &b)?;
                    }
                }
            }
        }
        Ok(kind.per_block())
    }

    /// Bytes one decode step must move at least: every weight (packed codes + f32 scales) once, the KV cache
    /// rows it attends over, and the norms.
    pub fn bytes_per_token(&self) -> u64 {
        let c = self.config;
        let lin = |r: usize, k: usize| (r * k / 2 + 4 * (r * k).div_ceil(64)) as u64;
        let qd = c.heads * c.head_dim;
        let kvd = c.kv_heads * c.head_dim;
        let weights = lin(qd, c.hidden)
            + 2 * lin(kvd, c.hidden)
            + lin(c.hidden, qd)
            + 2 * lin(c.intermediate, c.hidden)
            + lin(c.hidden, c.intermediate);
        let kv = 2 * (self.len * kvd * 4) as u64;
        weights + kv + 2 * (c.hidden * 4) as u64
    }
}
