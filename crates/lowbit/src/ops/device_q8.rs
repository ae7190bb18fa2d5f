//! Int8 activations on device tensors (`format::q8`, the CPU's decode path): a dense weight quantized to Q8
//! blocks once ([`WeightQ8`]) and its linear ([`Device::linear_q8`]); the 4-bit form is
//! [`Device::linear_4bit_q8`].

use super::device::{check_linear_input, operands};
use crate::capability::Op;
use crate::device_tensor::DeviceTensor;
use crate::format::q8::{Q8_BLOCK, Q8Weight};
use crate::runtime::Device;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A dense linear weight `[rows, cols]` as Q8 blocks resident on one device: offset int8 codes (u8) and one
/// f32 scale per block of 64.
#[derive(Clone, Debug)]
pub struct WeightQ8 {
    codes: DeviceTensor,
    scales: DeviceTensor,
    rows: usize,
    cols: usize,
}

impl WeightQ8 {
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
    /// Uploads a Q8 weight once.
    pub fn upload_q8(&self, w: &Q8Weight) -> Result<WeightQ8> {
        const OP: &str = "upload_q8";
        if !w.cols.is_multiple_of(Q8_BLOCK) || w.cols == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "Q8 weights need a multiple of {Q8_BLOCK} columns, got {}",
                    w.cols
                ),
            ));
        }
        let n = w
            .rows
            .checked_mul(w.cols)
            .ok_or_else(|| Error::shape(OP, format!("{} x {} overflows", w.rows, w.cols)))?;
        if w.codes.len() != n || w.scales.len() != n / Q8_BLOCK {
            return Err(Error::shape(
                OP,
                format!(
                    "a {} x {} Q8 weight has {n} codes and {} scales, got {} and {}",
                    w.rows,
                    w.cols,
                    n / Q8_BLOCK,
                    w.codes.len(),
                    w.scales.len()
                ),
            ));
        }
        Ok(WeightQ8 {
            codes: self.to_device(&Tensor::vector(w.codes.clone()))?,
            scales: self.to_device(&Tensor::f32(vec![w.scales.len()], w.scales.clone())?)?,
            rows: w.rows,
            cols: w.cols,
        })
    }

    /// `x W^T (+ bias)` with x quantized to int8 blocks per row (`format::q8`); output in x's dtype.
    pub fn linear_q8(
        &self,
        x: &DeviceTensor,
        w: &WeightQ8,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        check_linear_input("linear_q8", x, w.rows, w.cols, bias)?;
        self.run_op(
            &Op::LinearQ8 {
                rows: w.rows,
                cols: w.cols,
                bias: bias.is_some(),
            },
            &operands(&[x, &w.codes, &w.scales], bias),
        )
    }
}
