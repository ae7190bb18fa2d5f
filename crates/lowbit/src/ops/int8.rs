//! LLM.int8() ops and the `Linear8bitLt` layer (FORMATS.md §7).

use super::{bias_floats, check_len, with_last_dim};
use crate::backend::Int8Rows;
use crate::format::int8::DEFAULT_THRESHOLD;
use crate::runtime::{Device, MemoryEstimate, OpKind, OpParams};
use crate::tensor::{FloatVec, Floats, Tensor, TensorData};
use crate::{Error, Result};
use half::f16;

/// Row-wise int8 quantization of a 2-D tensor.
pub type Int8Quantized = Int8Rows;

fn dims2(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape()[..] {
        [r, c] => Ok((r, c)),
        _ => Err(Error::shape(
            op,
            format!("expected a 2-D tensor, got shape {:?}", t.shape()),
        )),
    }
}

fn i8_data<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a [i8]> {
    match t.data() {
        TensorData::I8(v) => Ok(v),
        _ => Err(Error::DType {
            op,
            got: t.dtype().to_string(),
            expected: "i8",
        }),
    }
}

impl Device {
    /// `int8_vectorwise_quant(A, threshold)`: row absmax over inliers, `q = rn(a * 127 / absmax)`, outliers
    /// (|a| >= threshold) zeroed and their columns reported. bitsandbytes' CUDA kernel takes f16 only; other
    /// float dtypes are widened exactly, so f16 input gives its bytes.
    pub fn int8_vectorwise_quant(&self, a: &Tensor, threshold: f32) -> Result<Int8Quantized> {
        const OP: &str = "int8_vectorwise_quant";
        let af = a.floats(OP)?;
        let (rows, cols) = dims2(OP, a)?;
        if !(threshold >= 0.0 && threshold.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("threshold must be finite and >= 0, got {threshold}"),
            ));
        }
        // Not split: a column that holds an outlier in any row is zeroed in every row.
        self.run(OpKind::Int8VectorwiseQuant, |b| {
            b.int8_vectorwise_quant(af, rows, cols, threshold)
        })
    }

    /// `q * row_stats / 127` as float32, shape of `q`.
    pub fn int8_vectorwise_dequant(&self, q: &Tensor, row_stats: &[f32]) -> Result<Tensor> {
        const OP: &str = "int8_vectorwise_dequant";
        let (rows, cols) = dims2(OP, q)?;
        check_len(OP, "row_stats", row_stats.len(), rows)?;
        let qd = i8_data(OP, q)?;
        let params = OpParams::new(OpKind::Int8VectorwiseDequant)
            // Saturating: a tensor with no rows may claim any column count.
            .memory(
                MemoryEstimate::new(rows)
                    .buffer(0, (cols as u64).saturating_mul(5).saturating_add(4)),
            );
        let out = self.run_split(&params, |b, r| {
            b.int8_vectorwise_dequant(&qd[r.start * cols..r.end * cols], &row_stats[r], cols)
        })?;
        Tensor::f32(q.shape().to_vec(), out)
    }

    /// Exact `A[m,k] @ B[n,k]^T` as i32 `[m, n]`.
    pub fn int8_linear_matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "int8_linear_matmul";
        let (m, k) = dims2(OP, a)?;
        let (n, kb) = dims2(OP, b)?;
        if k != kb {
            return Err(Error::shape(
                OP,
                format!("A is [{m}, {k}] but B is [{n}, {kb}]; inner dims must match"),
            ));
        }
        let c = self.int8_matmul_rows(i8_data(OP, a)?, i8_data(OP, b)?, m, n, k)?;
        Tensor::new(vec![m, n], c)
    }

    /// `A[m,k] @ B[n,k]^T` on validated slices, split by rows of A when the runtime chunks it.
    fn int8_matmul_rows(
        &self,
        ad: &[i8],
        bd: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        if k >= 1 << 17 {
            return Err(Error::invalid(
                "int8_linear_matmul",
                format!("k = {k} could overflow i32 accumulation; split k"),
            ));
        }
        let params = OpParams::new(OpKind::Int8LinearMatmul).memory(
            MemoryEstimate::new(m)
                .buffer((n * k) as u64, 0)
                .buffer(0, k as u64)
                .buffer(0, 4 * n as u64),
        );
        self.run_split(&params, |be, r| {
            be.int8_linear_matmul(&ad[r.start * k..r.end * k], bd, r.len(), n, k)
        })
    }

    /// `int8_mm_dequant(C, row_stats, col_stats, bias)` -> f16 `[m, n]`.
    pub fn int8_mm_dequant(
        &self,
        c: &Tensor,
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        const OP: &str = "int8_mm_dequant";
        let (m, n) = dims2(OP, c)?;
        let cd = match c.data() {
            TensorData::I32(v) => v,
            _ => {
                return Err(Error::DType {
                    op: OP,
                    got: c.dtype().to_string(),
                    expected: "i32",
                });
            }
        };
        check_len(OP, "row_stats", row_stats.len(), m)?;
        check_len(OP, "col_stats", col_stats.len(), n)?;
        let bias = bias_floats(OP, bias, n)?;
        let params = OpParams::new(OpKind::Int8MmDequant).memory(
            MemoryEstimate::new(m)
                .buffer(8 * n as u64, 0)
                .buffer(0, 6 * n as u64 + 4),
        );
        let out = self.run_split(&params, |b, r| {
            b.int8_mm_dequant(&cd[r.start * n..r.end * n], &row_stats[r], col_stats, bias)
        })?;
        Tensor::from_floats(vec![m, n], FloatVec::F16(out))
    }
}

/// bitsandbytes' `Linear8bitLt` with `has_fp16_weights=False`: an int8 row-quantized weight and its
/// per-row scales (`SCB`), mixed-precision forward with outlier columns in f16.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear8bitLt {
    /// `[out, in]` int8.
    pub weight: Vec<i8>,
    /// `SCB`: per-output-row absmax of the f16 weight.
    pub scb: Vec<f32>,
    pub bias: Option<Vec<f16>>,
    pub out_features: usize,
    pub in_features: usize,
    /// Outlier threshold for activations (bitsandbytes' default 6.0; 0 disables the outlier path).
    pub threshold: f32,
}

impl Linear8bitLt {
    /// Quantizes a float weight `[out, in]` as bitsandbytes does on `.cuda()`: `int8_vectorwise_quant(W.half())`.
    pub fn from_weight(
        dev: &Device,
        weight: &Tensor,
        bias: Option<&Tensor>,
        threshold: f32,
    ) -> Result<Self> {
        const OP: &str = "Linear8bitLt";
        let (out_features, in_features) = dims2(OP, weight)?;
        let w16 = to_f16(weight.floats(OP)?);
        let wt = Tensor::from_floats(weight.shape().to_vec(), FloatVec::F16(w16))?;
        let q = dev.int8_vectorwise_quant(&wt, 0.0)?;
        let bias = bias_floats(OP, bias, out_features)?.map(to_f16);
        Ok(Linear8bitLt {
            weight: q.q,
            scb: q.row_stats,
            bias,
            out_features,
            in_features,
            threshold,
        })
    }

    /// The layer with the default outlier threshold.
    pub fn default_threshold() -> f32 {
        DEFAULT_THRESHOLD
    }

    /// Forward pass: x `[..., in]` (any float dtype; computed in f16 as bitsandbytes does) -> f16 `[..., out]`.
    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "Linear8bitLt.forward";
        let (rows, k) = super::rows_cols(OP, x)?;
        if k != self.in_features {
            return Err(Error::shape(
                OP,
                format!("x has {k} features, layer expects {}", self.in_features),
            ));
        }
        let x16 = to_f16(x.floats(OP)?);
        let x2 = Tensor::from_floats(vec![rows, k], FloatVec::F16(x16.clone()))?;
        let xq = dev.int8_vectorwise_quant(&x2, self.threshold)?;
        if self.weight.len() != self.out_features * k {
            return Err(Error::Length {
                op: OP,
                what: "weight",
                got: self.weight.len(),
                expected: self.out_features * k,
            });
        }
        // The layer's weight is used in place: no copy of it per forward pass.
        let c = dev.int8_matmul_rows(&xq.q, &self.weight, rows, self.out_features, k)?;
        let c = Tensor::new(vec![rows, self.out_features], c)?;
        let bias_t = self
            .bias
            .as_ref()
            .map(|b| Tensor::vector(FloatVec::F16(b.clone())));
        let y = dev.int8_mm_dequant(&c, &xq.row_stats, &self.scb, bias_t.as_ref())?;
        let mut y16 = match y.into_parts().1 {
            TensorData::Float(FloatVec::F16(v)) => v,
            _ => unreachable!("int8_mm_dequant returns f16"),
        };
        if let Some(cols) = xq.outlier_cols.filter(|c| !c.is_empty()) {
            let (xs, ws) = outlier_operands(&x16, k, &cols, &self.weight, &self.scb);
            let extra = dev.run(OpKind::Matmul, |b| {
                b.matmul(
                    Floats::F16(&xs),
                    Floats::F16(&ws),
                    None,
                    rows,
                    self.out_features,
                    cols.len(),
                )
            })?;
            add_outliers(&mut y16, &extra);
        }
        Tensor::from_floats(
            with_last_dim(x.shape(), self.out_features),
            FloatVec::F16(y16),
        )
    }
}

/// The outlier columns' operands of `Linear8bitLt` (x16 `[rows, k]`, weight `[out, k]`): x16[:, cols]
/// `[rows, nc]` and f16(W[:, cols] * SCB / 127) `[out, nc]`, multiplied in floating point.
pub(crate) fn outlier_operands(
    x16: &[f16],
    k: usize,
    cols: &[i64],
    weight: &[i8],
    scb: &[f32],
) -> (Vec<f16>, Vec<f16>) {
    let xs: Vec<f16> = x16
        .chunks(k.max(1))
        .flat_map(|row| cols.iter().map(move |&c| row[c as usize]))
        .collect();
    let ws: Vec<f16> = weight
        .chunks(k.max(1))
        .zip(scb)
        .flat_map(|(row, &s)| {
            cols.iter()
                .map(move |&c| f16::from_f32(row[c as usize] as f32 * s * (1.0 / 127.0)))
        })
        .collect();
    (xs, ws)
}

/// `y = f16(y + extra)`: the outlier columns' product added to the int8 result.
pub(crate) fn add_outliers(y16: &mut [f16], extra: &FloatVec) {
    for (yv, e) in y16.iter_mut().zip(extra.to_f32_vec()) {
        *yv = f16::from_f32(yv.to_f32() + e);
    }
}

/// Float values rounded to f16 (round to nearest even), as bitsandbytes casts the layer's input.
pub(crate) fn to_f16(x: Floats) -> Vec<f16> {
    match x {
        Floats::F16(s) => s.to_vec(),
        other => other.to_f32_vec().into_iter().map(f16::from_f32).collect(),
    }
}
