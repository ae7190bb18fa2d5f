//! BitNet b1.58 ops: ternary weight quantization and packing, per-token int8 activations, BitLinear.

use super::{bias_floats, rows_cols, with_last_dim};
use crate::backend::PackedTernary;
use crate::format::ternary::{abs_sum, packed_rows, weight_scale};
use crate::runtime::{Device, MemoryEstimate, OpKind, OpParams};
use crate::tensor::{FloatVec, Tensor};
use crate::{Error, Result};

/// A ternary weight in transformers' BitNet packing: `[ceil(rows/4), cols]` bytes and its `weight_scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryWeight {
    pub packed: Vec<u8>,
    /// The multiplier: ternary = round(W * weight_scale).
    pub weight_scale: f32,
    pub rows: usize,
    pub cols: usize,
}

impl TernaryWeight {
    pub fn as_packed(&self) -> PackedTernary<'_> {
        PackedTernary {
            packed: &self.packed,
            weight_scale: self.weight_scale,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// transformers' `BitLinear`: packed ternary weight, optional bias, int8 per-token activations.
#[derive(Clone, Debug, PartialEq)]
pub struct BitLinear {
    pub weight: TernaryWeight,
    pub bias: Option<Vec<f32>>,
}

impl Device {
    /// Absmean ternary quantization of `w [rows, cols]` and the 2-bit packing.
    pub fn ternary_quantize(&self, w: &Tensor) -> Result<TernaryWeight> {
        const OP: &str = "ternary_quantize";
        let wf = w.floats(OP)?;
        let (rows, cols) = match w.shape()[..] {
            [r, c] => (r, c),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("weight must be 2-D [out, in], got {:?}", w.shape()),
                ));
            }
        };
        if rows * cols == 0 {
            return Err(Error::shape(OP, "weight is empty"));
        }
        let n = rows * cols;
        let scale = weight_scale(abs_sum((0..n).map(|i| wf.get_f32(i))), n);
        self.ternary_quantize_scaled(w, scale)
    }

    /// [`ternary_quantize`](Self::ternary_quantize) with `weight_scale` already computed (the streaming
    /// checkpoint writer sums |W| while reading).
    pub fn ternary_quantize_scaled(&self, w: &Tensor, scale: f32) -> Result<TernaryWeight> {
        const OP: &str = "ternary_quantize";
        let wf = w.floats(OP)?;
        let (rows, cols) = match *w.shape() {
            [r, c] => (r, c),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("weight must be 2-D [out, in], got {:?}", w.shape()),
                ));
            }
        };
        if rows * cols == 0 {
            return Err(Error::shape(OP, "weight is empty"));
        }
        let packed = self.run(OpKind::TernaryQuantize, |b| {
            b.ternary_quantize(wf, rows, cols, scale)
        })?;
        debug_assert_eq!(packed.len(), packed_rows(rows) * cols);
        Ok(TernaryWeight {
            packed,
            weight_scale: scale,
            rows,
            cols,
        })
    }

    /// Per-token int8 activations of `x [..., cols]`: (q, scale per row).
    pub fn ternary_act_quant(&self, x: &Tensor) -> Result<(Vec<i8>, Vec<f32>)> {
        const OP: &str = "ternary_act_quant";
        let xf = x.floats(OP)?;
        let (rows, cols) = rows_cols(OP, x)?;
        let params = OpParams::new(OpKind::TernaryActQuant)
            .dtype(x.dtype())
            .memory(
                MemoryEstimate::new(rows)
                    .buffer(0, (cols * (x.dtype().size_in_bytes() + 1) + 4) as u64),
            );
        self.run_split(&params, |b, r| {
            b.ternary_act_quant(xf.slice(r.start * cols..r.end * cols), r.len(), cols)
        })
    }

    /// BitLinear forward: quantize activations per token, exact i32 ternary matmul, rescale; f32 output.
    pub fn bitlinear(&self, x: &Tensor, layer: &BitLinear) -> Result<Tensor> {
        const OP: &str = "bitlinear";
        let w = &layer.weight;
        let (batch, k) = rows_cols(OP, x)?;
        if k != w.cols {
            return Err(Error::shape(
                OP,
                format!("x has {k} features, weight expects {}", w.cols),
            ));
        }
        if w.packed.len() != packed_rows(w.rows) * w.cols {
            return Err(Error::Length {
                op: OP,
                what: "packed weight",
                got: w.packed.len(),
                expected: packed_rows(w.rows) * w.cols,
            });
        }
        let bias_t = layer.bias.as_ref().map(|b| Tensor::vector(b.clone()));
        let bias = bias_floats(OP, bias_t.as_ref(), w.rows)?;
        let (xq, xs) = self.ternary_act_quant(x)?;
        let params = OpParams::new(OpKind::TernaryMatmul).memory(
            MemoryEstimate::new(batch)
                .buffer(w.packed.len() as u64 + 4 * w.rows as u64, 0)
                .buffer(0, k as u64 + 4)
                .buffer(0, 4 * w.rows as u64),
        );
        let y = self.run_split(&params, |b, r| {
            b.ternary_matmul(
                &xq[r.start * k..r.end * k],
                &xs[r.clone()],
                r.len(),
                w.as_packed(),
                bias,
            )
        })?;
        Tensor::from_floats(with_last_dim(x.shape(), w.rows), FloatVec::F32(y))
    }
}
