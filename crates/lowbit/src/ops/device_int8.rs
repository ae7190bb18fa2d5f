//! LLM.int8() on device tensors: a `Linear8bitLt` weight uploaded once ([`Weight8bit`]) and its forward pass
//! as one device op ([`Device::linear_8bit`]), with the bits of the host layer's forward.

use super::Linear8bitLt;
use super::device::{check_linear_input, operands};
use crate::capability::Op;
use crate::device_tensor::DeviceTensor;
use crate::runtime::Device;
use crate::tensor::{FloatVec, Tensor};
use crate::{Error, Result};

/// An LLM.int8() linear weight resident on one device, as bitsandbytes' `Linear8bitLt` holds it: int8 rows
/// `[rows, cols]`, their absmax (`SCB`, f32 `[rows]`) and an optional f16 bias `[rows]`.
#[derive(Clone, Debug)]
pub struct Weight8bit {
    weight: DeviceTensor,
    scb: DeviceTensor,
    bias: Option<DeviceTensor>,
    rows: usize,
    cols: usize,
}

impl Weight8bit {
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl Device {
    /// Uploads a `Linear8bitLt` weight (int8 rows, SCB, bias) once; its threshold is chosen per call.
    pub fn upload_8bit(&self, layer: &Linear8bitLt) -> Result<Weight8bit> {
        const OP: &str = "upload_8bit";
        let (rows, cols) = (layer.out_features, layer.in_features);
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::shape(OP, format!("{rows} x {cols} overflows")))?;
        let len = |what, got, expected| -> Result<()> {
            if got == expected {
                Ok(())
            } else {
                Err(Error::Length {
                    op: OP,
                    what,
                    got,
                    expected,
                })
            }
        };
        len("weight", layer.weight.len(), n)?;
        len("SCB", layer.scb.len(), rows)?;
        if let Some(b) = &layer.bias {
            len("bias", b.len(), rows)?;
        }
        let bias = match &layer.bias {
            Some(b) => Some(self.to_device(&Tensor::vector(FloatVec::F16(b.clone())))?),
            None => None,
        };
        Ok(Weight8bit {
            weight: self.to_device(&Tensor::new(vec![rows, cols], layer.weight.clone())?)?,
            scb: self.to_device(&Tensor::vector(layer.scb.clone()))?,
            bias,
            rows,
            cols,
        })
    }

    /// bitsandbytes' `Linear8bitLt` forward on a resident weight: x `[.., cols]` (any float dtype, rounded to
    /// f16 as bitsandbytes computes it) -> f16 `[.., rows]`. Columns where some row of x has
    /// `|x| >= threshold` are multiplied in floating point against the dequantized weight (threshold 0: none),
    /// the rest through int8; the same bits as [`Linear8bitLt::forward`] on the same backend.
    pub fn linear_8bit(
        &self,
        x: &DeviceTensor,
        w: &Weight8bit,
        threshold: f32,
    ) -> Result<DeviceTensor> {
        const OP: &str = "linear_8bit";
        check_linear_input(OP, x, w.rows, w.cols, w.bias.as_ref())?;
        if !(threshold >= 0.0 && threshold.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("threshold must be finite and >= 0, got {threshold}"),
            ));
        }
        // Products of up to 127 * 127 per column must fit the i32 accumulator (as the host op checks).
        if w.cols >= 1 << 17 {
            return Err(Error::invalid(
                OP,
                format!("k = {} could overflow i32 accumulation; split k", w.cols),
            ));
        }
        self.run_op(
            &Op::Linear8bit {
                threshold,
                rows: w.rows,
                cols: w.cols,
                bias: w.bias.is_some(),
            },
            &operands(&[x, &w.weight, &w.scb], w.bias.as_ref()),
        )
    }
}
