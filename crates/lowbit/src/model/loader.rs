//! Reading a model's weights from its checkpoint onto a device: norms, float tensors, linear layers
//! (quantized on load, LoRA merged where asked) and projection groups fused into one weight.

use super::adapter::PeftAdapter;
use super::checkpoint::{Checkpoint, StoredWeight};
use super::config::TernaryScale;
use super::projections::Projections;
use crate::device_tensor::DeviceTensor;
use crate::nn::linear::{Linear, LoadFormat, quantize_4bit_on_load};
use crate::ops::Quantized4bit;
use crate::runtime::Device;
use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};

pub(super) struct Loader<'a> {
    pub dev: &'a Device,
    pub ckpt: &'a Checkpoint,
    pub format: LoadFormat,
    pub merge: Option<&'a PeftAdapter>,
    /// Adapters applied unmerged: the layers they adapt stay separate.
    pub unmerged: &'a [(String, PeftAdapter)],
    pub ternary_scale: Option<TernaryScale>,
    pub int8_threshold: f32,
    pub widen: bool,
    /// Whether projection groups may be fused ([`super::LoadOptions::fuse_projections`]).
    pub fuse: bool,
}

impl Loader<'_> {
    /// A float weight as it will live on the device: its stored dtype, or f32 when asked to widen.
    pub fn float_weight(&self, name: &str) -> Result<Tensor> {
        let t = self.ckpt.float_stored(name)?;
        if self.widen {
            t.into_f32("load")
        } else {
            Ok(t)
        }
    }

    pub fn norm(&self, name: &str, len: usize) -> Result<DeviceTensor> {
        let t = self.ckpt.float(name)?;
        if t.shape() != [len] {
            return Err(self.bad(format!(
                "tensor {name:?} must be [{len}], got {:?}",
                t.shape()
            )));
        }
        self.dev.to_device(&t)
    }

    fn bad(&self, detail: String) -> Error {
        Error::Checkpoint {
            path: self.ckpt.dir().to_path_buf(),
            detail,
        }
    }

    /// Module `module`'s weight as it will be loaded: the ternary scale in lowbit's convention, the merged
    /// adapter applied, widened when asked.
    fn stored(&self, module: &str) -> Result<StoredWeight> {
        let wname = format!("{module}.weight");
        let mut stored = self.ckpt.weight(&wname)?;
        if let (StoredWeight::Ternary(t), Some(TernaryScale::Multiply)) =
            (&mut stored, self.ternary_scale)
        {
            // lowbit's kernels divide by the scale; autobitlinear stores its reciprocal.
            t.weight_scale = 1.0 / t.weight_scale;
        }
        if let Some(lora) = self.merge.and_then(|a| a.modules.get(module)) {
            stored = match stored {
                // The merge is computed in f64 and stored in f32, whatever the base weight's dtype.
                StoredWeight::Float(w) => StoredWeight::Float(lora.merge_into(&w)?),
                _ => {
                    return Err(self.bad(format!(
                        "{wname} is quantized: a LoRA adapter merges into float weights only (load it unmerged)"
                    )));
                }
            };
        }
        Ok(match stored {
            StoredWeight::Float(w) if self.widen => StoredWeight::Float(w.into_f32("load")?),
            s => s,
        })
    }

    fn bias(&self, module: &str, bias: bool) -> Result<Option<Tensor>> {
        bias.then(|| self.ckpt.float(&format!("{module}.bias")))
            .transpose()
    }

    /// The linear layer `module` (`[out, inp]` as config.json implies).
    pub fn linear(&self, module: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let stored = self.stored(module)?;
        let b = self.bias(module, bias)?;
        self.build(&format!("{module}.weight"), stored, b.as_ref(), out, inp)
    }

    fn build(
        &self,
        wname: &str,
        stored: StoredWeight,
        bias: Option<&Tensor>,
        out: usize,
        inp: usize,
    ) -> Result<Linear> {
        let l = Linear::load(
            self.dev,
            wname,
            stored,
            bias,
            self.format,
            self.int8_threshold,
        )?;
        if (l.out_features(), l.in_features()) != (out, inp) {
            return Err(self.bad(format!(
                "{wname} is {}x{}, config.json implies {out}x{inp}",
                l.out_features(),
                l.in_features()
            )));
        }
        Ok(l)
    }

    /// The projections `parts` (module under `prefix`, output features) that all read the same input of
    /// `inp` features: one weight with their rows one after another where the formats allow (float weights
    /// of one dtype, or 4-bit weights, quantized part by part as separate layers are, so every row computes
    /// as it would alone), separate layers otherwise or when an unmerged adapter adapts one of them.
    pub fn projections(
        &self,
        prefix: &str,
        parts: &[(&'static str, usize)],
        inp: usize,
        bias: bool,
    ) -> Result<Projections> {
        let modules: Vec<String> = parts.iter().map(|(m, _)| format!("{prefix}.{m}")).collect();
        let adapted = self
            .unmerged
            .iter()
            .any(|(_, a)| modules.iter().any(|m| a.modules.contains_key(m)));
        let stored: Vec<StoredWeight> = modules
            .iter()
            .map(|m| self.stored(m))
            .collect::<Result<_>>()?;
        let biases: Vec<Option<Tensor>> = modules
            .iter()
            .map(|m| self.bias(m, bias))
            .collect::<Result<_>>()?;
        for ((m, s), (_, out)) in modules.iter().zip(&stored).zip(parts) {
            if let Some(dims) = stored_dims(s)
                && dims != (*out, inp)
            {
                return Err(self.bad(format!(
                    "{m}.weight is {}x{}, config.json implies {out}x{inp}",
                    dims.0, dims.1
                )));
            }
        }
        let fused = if self.fuse && !adapted && parts.len() > 1 {
            self.fused_weight(&stored)?
        } else {
            None
        };
        let Some(weight) = fused else {
            let layers = parts
                .iter()
                .zip(modules.iter().zip(stored.into_iter().zip(biases)))
                .map(|((name, out), (m, (s, b)))| {
                    Ok((
                        *name,
                        self.build(&format!("{m}.weight"), s, b.as_ref(), *out, inp)?,
                    ))
                })
                .collect::<Result<_>>()?;
            return Ok(Projections::Separate(layers));
        };
        let bias = if bias {
            let mut all = Vec::new();
            for b in biases.iter().flatten() {
                all.extend(b.floats("load")?.to_f32_vec());
            }
            Some(Tensor::f32(vec![all.len()], all)?)
        } else {
            None
        };
        let sizes: Vec<usize> = parts.iter().map(|(_, o)| *o).collect();
        let total = sizes.iter().sum();
        let name = format!("{}.weight (fused)", modules.join("+"));
        let linear = self.build(&name, weight, bias.as_ref(), total, inp)?;
        Ok(Projections::Fused {
            linear: Box::new(linear),
            sizes,
        })
    }

    /// The parts' rows as one stored weight, in the form `Linear::load` takes for this load format; `None`
    /// when they cannot be one (mixed kinds or dtypes, int8 or ternary layers).
    fn fused_weight(&self, parts: &[StoredWeight]) -> Result<Option<StoredWeight>> {
        let floats: Option<Vec<&Tensor>> = parts
            .iter()
            .map(|s| match s {
                StoredWeight::Float(t) => Some(t),
                _ => None,
            })
            .collect();
        let fourbit: Option<Vec<&Quantized4bit>> = parts
            .iter()
            .map(|s| match s {
                StoredWeight::FourBit(q) => Some(q),
                _ => None,
            })
            .collect();
        Ok(match (self.format, floats, fourbit) {
            (LoadFormat::Float, Some(f), _) => concat_float_rows(&f)?.map(StoredWeight::Float),
            (LoadFormat::FourBit(q), Some(f), _) => {
                // Part by part, as each separate layer would be quantized.
                let quantized = f
                    .iter()
                    .map(|t| quantize_4bit_on_load((*t).clone(), q))
                    .collect::<Result<Vec<_>>>()?;
                Quantized4bit::concat_rows(&quantized.iter().collect::<Vec<_>>())
                    .map(StoredWeight::FourBit)
            }
            (_, None, Some(q)) => Quantized4bit::concat_rows(&q).map(StoredWeight::FourBit),
            _ => None,
        })
    }
}

/// `[out, in]` of a stored weight whose dims are known before loading.
fn stored_dims(s: &StoredWeight) -> Option<(usize, usize)> {
    match s {
        StoredWeight::Float(t) => match t.shape() {
            [o, i] => Some((*o, *i)),
            _ => None,
        },
        StoredWeight::FourBit(q) => q.linear_dims("load").ok(),
        _ => None,
    }
}

/// 2-D float tensors of one dtype and width stacked by rows; `None` if they differ.
fn concat_float_rows(parts: &[&Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let (dtype, cols) = (first.dtype(), first.shape().get(1).copied());
    if parts
        .iter()
        .any(|t| t.dtype() != dtype || t.shape().len() != 2 || t.shape().get(1).copied() != cols)
    {
        return Ok(None);
    }
    let rows: usize = parts.iter().map(|t| t.shape()[0]).sum();
    let bytes: Vec<u8> = parts
        .iter()
        .flat_map(|t| t.data().as_bytes().iter().copied())
        .collect();
    Ok(Some(Tensor::new(
        vec![rows, cols.unwrap_or(0)],
        TensorData::from_bytes(dtype, &bytes),
    )?))
}
