//! LoRA adapters over any linear layer (PEFT's `y = W x + s · B(A x)`), unmerged on the device or merged into
//! a float weight on the host.

use crate::device_tensor::DeviceTensor;
use crate::runtime::Device;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One adapter of one layer: `A [r, in]` and `s · B [out, r]` on a device.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    a: DeviceTensor,
    b_scaled: DeviceTensor,
}

/// The host matrices of an adapter and its scale (`lora_alpha / r`, or `/ sqrt(r)` with rsLoRA).
pub struct LoraWeights {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f32,
}

/// An adapter's dimensions and values: `r`, `in`, `out`, A `[r, in]`, B `[out, r]`.
struct Checked {
    r: usize,
    i: usize,
    o: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl LoraWeights {
    fn checked(&self) -> Result<Checked> {
        let (r, i) = match self.a.shape() {
            [r, i] => (*r, *i),
            s => {
                return Err(Error::shape(
                    "lora",
                    format!("lora_A must be [r, in], got {s:?}"),
                ));
            }
        };
        let o = match self.b.shape() {
            [o, rb] if *rb == r => *o,
            s => {
                return Err(Error::shape(
                    "lora",
                    format!("lora_B must be [out, {r}] for lora_A [{r}, {i}], got {s:?}"),
                ));
            }
        };
        let a = self.a.floats("lora")?.to_f32_vec();
        let b = self.b.floats("lora")?.to_f32_vec();
        Ok(Checked { r, i, o, a, b })
    }

    /// `W + s · B A` for a float weight `[out, in]` (PEFT's `merge_and_unload`), in f64 then rounded once.
    pub fn merge_into(&self, w: &Tensor) -> Result<Tensor> {
        let Checked { r, i, o, a, b } = self.checked()?;
        if w.shape() != [o, i] {
            return Err(Error::shape(
                "lora",
                format!("adapter is {o}x{i} for a weight {:?}", w.shape()),
            ));
        }
        let wv = w.floats("lora")?.to_f32_vec();
        let s = self.scale as f64;
        let mut out = Vec::with_capacity(o * i);
        for row in 0..o {
            for col in 0..i {
                let d: f64 = (0..r)
                    .map(|k| b[row * r + k] as f64 * a[k * i + col] as f64)
                    .sum();
                out.push((wv[row * i + col] as f64 + s * d) as f32);
            }
        }
        Tensor::f32(vec![o, i], out)
    }
}

impl LoraAdapter {
    /// Uploads an adapter; the scale is folded into B once.
    pub fn upload(dev: &Device, w: &LoraWeights) -> Result<LoraAdapter> {
        let Checked { r, i, o, a, b } = w.checked()?;
        let b_scaled: Vec<f32> = b.iter().map(|v| v * w.scale).collect();
        Ok(LoraAdapter {
            a: dev.to_device(&Tensor::f32(vec![r, i], a)?)?,
            b_scaled: dev.to_device(&Tensor::f32(vec![o, r], b_scaled)?)?,
        })
    }

    pub fn in_features(&self) -> usize {
        self.a.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.b_scaled.shape()[0]
    }

    /// `s · B (A x)`.
    pub fn delta(&self, dev: &Device, x: &DeviceTensor) -> Result<DeviceTensor> {
        let ax = dev.linear(x, &self.a, None)?;
        dev.linear(&ax, &self.b_scaled, None)
    }
}
