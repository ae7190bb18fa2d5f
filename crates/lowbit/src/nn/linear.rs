//! A linear layer on one device, whatever its weight format: float, NF4/FP4 (fused 4-bit kernels), BitNet
//! ternary; with an optional bias and any number of LoRA adapters, one of them active.

use super::lora::LoraAdapter;
use crate::device_tensor::DeviceTensor;
use crate::format::FourBitType;
use crate::format::q8::{Q8_BLOCK, Q8Weight, fits_4bit};
use crate::model::checkpoint::StoredWeight;
use crate::ops::{
    Linear8bitLt, Quantized4bit, Weight4bit, Weight8bit, WeightQ4Lanes, WeightQ8, WeightTernary,
};
use crate::runtime::Device;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The format a float weight is quantized to when a model is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadFormat {
    /// Keep float weights, in the checkpoint's own dtype (f32, f16 or bf16) on the device.
    Float,
    /// bitsandbytes 4-bit (block size 64, double quantization), as `BitsAndBytesConfig(load_in_4bit=True,
    /// bnb_4bit_use_double_quant=True)` quantizes on load.
    FourBit(FourBitType),
    /// LLM.int8(): int8 rows with per-row absmax, activations above the outlier threshold in float, as
    /// `BitsAndBytesConfig(load_in_8bit=True)` does.
    Int8,
    /// BitNet b1.58 absmean ternary (only meaningful for models trained for it).
    Ternary,
}

impl LoadFormat {
    /// `none`, `nf4`, `fp4`, `ternary`.
    pub fn parse(s: &str) -> Option<LoadFormat> {
        Some(match s {
            "none" | "float" => LoadFormat::Float,
            "nf4" => LoadFormat::FourBit(FourBitType::Nf4),
            "fp4" => LoadFormat::FourBit(FourBitType::Fp4),
            "int8" => LoadFormat::Int8,
            "ternary" => LoadFormat::Ternary,
            _ => return None,
        })
    }
}

/// A weight resident on a device.
#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// `[out, in]` in its stored float dtype (f32, f16 or bf16): the kernels widen it in registers.
    Float(DeviceTensor),
    FourBit(Weight4bit),
    /// LLM.int8() weight (its bias inside) and the outlier threshold.
    Int8(Weight8bit, f32),
    Ternary(WeightTernary),
    /// A float weight quantized to int8 blocks for int8 activations ([`Linear::use_int8_activations`]).
    Q8(WeightQ8),
    /// A 4-bit weight repacked for int8 activations ([`Linear::use_int8_activations`]).
    Q4Lanes(WeightQ4Lanes),
}

/// `y = x W^T + b (+ s·B(A x) for the active adapter)`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<DeviceTensor>,
    out_features: usize,
    in_features: usize,
    adapters: Vec<(String, LoraAdapter)>,
    active: Option<usize>,
}

/// A float weight quantized to 4 bits as a layer loads it: on the CPU from its exact f32 widening (so the
/// codes do not depend on the stored dtype), block size 64 with double quantization (bitsandbytes'
/// `Linear4bit` defaults). Fused projections quantize each part with it too, so a fused row has the codes of
/// its separate layer.
pub(crate) fn quantize_4bit_on_load(t: Tensor, q: FourBitType) -> Result<Quantized4bit> {
    Device::cpu().quantize_4bit(&t.into_f32("linear")?, q, 64, true)
}

impl Linear {
    /// Uploads a stored weight `[out, in]` to `dev`, quantizing a float weight to `format` first (from its
    /// f32 widening, exact, so the codes do not depend on the stored dtype) or keeping its float dtype;
    /// `int8_threshold` is LLM.int8()'s outlier threshold (bitsandbytes' default 6.0).
    pub fn load(
        dev: &Device,
        name: &str,
        stored: StoredWeight,
        bias: Option<&Tensor>,
        format: LoadFormat,
        int8_threshold: f32,
    ) -> Result<Linear> {
        let cpu = Device::cpu();
        let mut bias_inside = false;
        let (weight, out_features, in_features) = match stored {
            StoredWeight::Int8 {
                weight,
                scb,
                rows,
                cols,
            } => {
                // bitsandbytes keeps an int8 layer's bias in float16, inside the layer.
                let bias16 = bias
                    .map(|b| -> Result<Vec<half::f16>> {
                        let v = b.floats("linear")?.to_f32_vec();
                        Ok(v.into_iter().map(half::f16::from_f32).collect())
                    })
                    .transpose()?;
                let layer = Linear8bitLt {
                    weight,
                    scb,
                    bias: bias16,
                    out_features: rows,
                    in_features: cols,
                    threshold: int8_threshold,
                };
                bias_inside = true;
                (
                    LinearWeight::Int8(dev.upload_8bit(&layer)?, int8_threshold),
                    rows,
                    cols,
                )
            }
            StoredWeight::Float(t) => {
                let (o, i) = dims(name, &t)?;
                // Quantizers start from the exact f32 widening, as they did when every weight was widened.
                let t = match format {
                    LoadFormat::Float => t,
                    _ => t.into_f32("linear")?,
                };
                let w = match format {
                    LoadFormat::Float => LinearWeight::Float(dev.to_device(&t)?),
                    LoadFormat::Int8 => {
                        bias_inside = true;
                        // from_weight rounds the bias to float16, as bitsandbytes keeps it.
                        let layer = Linear8bitLt::from_weight(&cpu, &t, bias, int8_threshold)?;
                        LinearWeight::Int8(dev.upload_8bit(&layer)?, int8_threshold)
                    }
                    LoadFormat::FourBit(q) => {
                        LinearWeight::FourBit(dev.upload_4bit(&quantize_4bit_on_load(t, q)?)?)
                    }
                    LoadFormat::Ternary => {
                        LinearWeight::Ternary(dev.upload_ternary(&cpu.ternary_quantize(&t)?)?)
                    }
                };
                (w, o, i)
            }
            StoredWeight::FourBit(q) => {
                let w = dev.upload_4bit(&q)?;
                let (o, i) = (w.rows(), w.cols());
                (LinearWeight::FourBit(w), o, i)
            }
            StoredWeight::Ternary(t) => {
                let w = dev.upload_ternary(&t)?;
                let (o, i) = (w.rows(), w.cols());
                (LinearWeight::Ternary(w), o, i)
            }
        };
        let bias = match bias {
            _ if bias_inside => None,
            Some(b) if b.shape() != [out_features] => {
                return Err(Error::shape(
                    "linear",
                    format!("{name}: bias must be [{out_features}], got {:?}", b.shape()),
                ));
            }
            Some(b) => Some(dev.to_device(b)?),
            None => None,
        };
        Ok(Linear {
            weight,
            bias,
            out_features,
            in_features,
            adapters: Vec::new(),
            active: None,
        })
    }

    /// A float layer from a weight already on the device (tied embeddings share the table).
    pub fn from_device(weight: DeviceTensor) -> Result<Linear> {
        let (o, i) = match weight.shape() {
            [o, i] => (*o, *i),
            s => {
                return Err(Error::shape(
                    "linear",
                    format!("weight must be 2-D, got {s:?}"),
                ));
            }
        };
        Ok(Linear {
            weight: LinearWeight::Float(weight),
            bias: None,
            out_features: o,
            in_features: i,
            adapters: Vec::new(),
            active: None,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// Bytes of weight a forward pass reads (packed codes and scales for quantized weights).
    pub fn weight_bytes(&self) -> u64 {
        let n = (self.out_features * self.in_features) as u64;
        match &self.weight {
            LinearWeight::Float(w) => w.dtype().size_in_bytes() as u64 * n,
            LinearWeight::FourBit(w) => n / 2 + 4 * n.div_ceil(w.blocksize() as u64),
            LinearWeight::Int8(..) => n + 4 * self.out_features as u64,
            LinearWeight::Ternary(_) => n / 4,
            LinearWeight::Q8(_) => n + 4 * n.div_ceil(Q8_BLOCK as u64),
            LinearWeight::Q4Lanes(_) => n / 2 + 4 * n.div_ceil(Q8_BLOCK as u64),
        }
    }

    /// Switches this layer to int8 activations (`format::q8`, llama.cpp's CPU arithmetic), where its weight
    /// allows: a 4-bit weight keeps its codes, repacked once into the lanes layout, and its products take
    /// [`Device::linear_4bit_q8`] (decode and prefill alike); a float weight is quantized to Q8 blocks
    /// once, here, and every product takes [`Device::linear_q8`]. Widths that are not a multiple of 64, and
    /// int8 or ternary weights (which quantize their activations already), are left as they are. Returns
    /// whether the layer changed.
    pub fn use_int8_activations(&mut self, dev: &Device) -> Result<bool> {
        let fits = self.in_features.is_multiple_of(Q8_BLOCK);
        match &self.weight {
            LinearWeight::FourBit(w) if fits_4bit(w.cols(), w.blocksize()) => {
                self.weight = LinearWeight::Q4Lanes(dev.upload_4bit_lanes(w)?);
                Ok(true)
            }
            LinearWeight::Float(w) if fits && self.in_features > 0 => {
                let host = dev.to_host(w)?.floats("linear")?.to_f32_vec();
                let q = Q8Weight::quantize(&host, self.out_features, self.in_features);
                self.weight = LinearWeight::Q8(dev.upload_q8(&q)?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Adds a LoRA adapter under `name` (inactive until [`Linear::set_adapter`]).
    pub fn add_adapter(&mut self, name: &str, adapter: LoraAdapter) -> Result<()> {
        if adapter.in_features() != self.in_features || adapter.out_features() != self.out_features
        {
            return Err(Error::shape(
                "lora",
                format!(
                    "adapter {name:?} is {}x{} for a {}x{} layer",
                    adapter.out_features(),
                    adapter.in_features(),
                    self.out_features,
                    self.in_features
                ),
            ));
        }
        self.adapters.retain(|(n, _)| n != name);
        self.adapters.push((name.to_string(), adapter));
        Ok(())
    }

    /// Activates the adapter `name` (false when this layer has none of that name), or none.
    pub fn set_adapter(&mut self, name: Option<&str>) -> bool {
        self.active = name.and_then(|n| self.adapters.iter().position(|(a, _)| a == n));
        name.is_none() || self.active.is_some()
    }

    pub fn forward(&self, dev: &Device, x: &DeviceTensor) -> Result<DeviceTensor> {
        let y = self.product(dev, x, self.bias.as_ref())?;
        match self.active {
            Some(i) => dev.add(&y, &self.adapters[i].1.delta(dev, x)?),
            None => Ok(y),
        }
    }

    /// `residual + forward(x)` (a residual connection). For one row of a layer with no bias of its own and
    /// no active adapter, the residual `[1, out]` rides in the bias slot of the product, whose kernel adds it:
    /// one op fewer per connection (on a GPU one kernel or dispatch less per decode step). The sum is the
    /// same bits with f32 activations; with f16/bf16 ones it is rounded once instead of twice.
    pub fn forward_residual(
        &self,
        dev: &Device,
        x: &DeviceTensor,
        residual: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        // LLM.int8() keeps its bias inside its weight, and wgpu's ternary rescale takes no bias yet.
        let bias_slot_free = self.bias.is_none()
            && self.active.is_none()
            && matches!(
                self.weight,
                LinearWeight::Float(_)
                    | LinearWeight::FourBit(_)
                    | LinearWeight::Q8(_)
                    | LinearWeight::Q4Lanes(_)
            );
        if bias_slot_free && x.rows_cols().0 == 1 && residual.shape() == [1, self.out_features] {
            let bias = residual.reshape(vec![self.out_features])?;
            return self.product(dev, x, Some(&bias));
        }
        dev.add(residual, &self.forward(dev, x)?)
    }

    /// `x W^T + bias` on the layer's weight, adapters aside.
    fn product(
        &self,
        dev: &Device,
        x: &DeviceTensor,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        Ok(match &self.weight {
            LinearWeight::Float(w) => dev.linear(x, w, bias)?,
            LinearWeight::FourBit(w) => dev.linear_4bit(x, w, bias)?,
            LinearWeight::Q8(w) => dev.linear_q8(x, w, bias)?,
            LinearWeight::Q4Lanes(w) => dev.linear_4bit_q8(x, w, bias)?,
            LinearWeight::Ternary(w) => dev.linear_ternary(x, w, bias)?,
            // LLM.int8() returns float16, as bitsandbytes does; the model continues in x's dtype.
            LinearWeight::Int8(w, threshold) => {
                dev.cast(&dev.linear_8bit(x, w, *threshold)?, x.dtype())?
            }
        })
    }
}

fn dims(name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape() {
        [o, i] => Ok((*o, *i)),
        s => Err(Error::shape(
            "linear",
            format!("{name}: weight must be [out, in], got {s:?}"),
        )),
    }
}
