//! Int8 activations on device tensors (`format::q8`, the CPU's arithmetic): a dense weight quantized to Q8
//! blocks once ([`WeightQ8`]) and its linear ([`Device::linear_q8`]); a 4-bit weight repacked once into the
//! lanes layout ([`WeightQ4Lanes`]) and its linear ([`Device::linear_4bit_q8`]).

use super::device::{Weight4bit, check_linear_input, operands};
use crate::capability::Op;
use crate::device_tensor::DeviceTensor;
use crate::format::FourBitType;
use crate::format::q8::{Q4Lanes, Q8_BLOCK, Q8Weight, fits_4bit};
use crate::runtime::Device;
use crate::tensor::{Tensor, TensorData};
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

/// A 4-bit weight in `format::q8::Q4Lanes`' layout, resident on one device: packed codes (u8) and one f32
/// scale per row and block of 64 columns, rows in groups of 16.
#[derive(Clone, Debug)]
pub struct WeightQ4Lanes {
    packed: DeviceTensor,
    scales: DeviceTensor,
    quant_type: FourBitType,
    rows: usize,
    cols: usize,
}

impl WeightQ4Lanes {
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

    /// Repacks a resident 4-bit weight into the lanes layout of the int8-activation kernels
    /// (`format::q8::Q4Lanes`), once; the codes stay 4-bit. Needs `cols` and the blocksize to be multiples of
    /// 64 ([`fits_4bit`]).
    pub fn upload_4bit_lanes(&self, w: &Weight4bit) -> Result<WeightQ4Lanes> {
        const OP: &str = "upload_4bit_lanes";
        if !fits_4bit(w.cols, w.blocksize) {
            return Err(Error::shape(
                OP,
                format!(
                    "int8 activations need columns and blocksize in multiples of 64, got {} and {}",
                    w.cols, w.blocksize
                ),
            ));
        }
        let packed = self.to_host(&w.packed)?;
        let absmax = self.to_host(&w.absmax)?;
        let TensorData::U8(codes) = packed.data() else {
            return Err(Error::shape(OP, "packed 4-bit codes must be u8"));
        };
        let lanes = Q4Lanes::from_4bit(
            codes,
            &absmax.floats(OP)?.to_f32_vec(),
            w.quant_type,
            w.blocksize,
            w.rows,
            w.cols,
        );
        Ok(WeightQ4Lanes {
            packed: self.to_device(&Tensor::vector(lanes.packed))?,
            scales: self.to_device(&Tensor::f32(vec![lanes.scales.len()], lanes.scales)?)?,
            quant_type: w.quant_type,
            rows: w.rows,
            cols: w.cols,
        })
    }

    /// `x W^T (+ bias)` on a 4-bit weight in the lanes layout, x quantized to int8 blocks per row and integer
    /// dot products (`format::q8`: llama.cpp's CPU arithmetic, not bitsandbytes'); one row and several give
    /// the same bits per row. Output in x's dtype.
    pub fn linear_4bit_q8(
        &self,
        x: &DeviceTensor,
        w: &WeightQ4Lanes,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        check_linear_input("linear_4bit_q8", x, w.rows, w.cols, bias)?;
        self.run_op(
            &Op::Linear4bitQ8 {
                quant_type: w.quant_type,
                rows: w.rows,
                cols: w.cols,
                bias: bias.is_some(),
            },
            &operands(&[x, &w.packed, &w.scales], bias),
        )
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
