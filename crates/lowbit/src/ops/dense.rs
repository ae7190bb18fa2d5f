//! Floating-point ops: matmul (nn.Linear layout), softmax, RMSNorm.

use super::{bias_floats, check_len, rows_cols, with_last_dim};
use crate::runtime::{Device, MemoryEstimate, OpKind, OpParams};
use crate::tensor::Tensor;
use crate::{Error, Result};

impl Device {
    /// `y = x @ w^T + bias` with x `[..., k]`, w `[n, k]`; output in x's dtype.
    pub fn matmul(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "matmul";
        let (xf, wf) = (x.floats(OP)?, w.floats(OP)?);
        let (m, k) = rows_cols(OP, x)?;
        let (n, kw) = match w.shape()[..] {
            [n, kw] => (n, kw),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("w must be 2-D [n, k], got {:?}", w.shape()),
                ));
            }
        };
        if k != kw {
            return Err(Error::shape(
                OP,
                format!("x has {k} features but w is [{n}, {kw}]"),
            ));
        }
        let bias = bias_floats(OP, bias, n)?;
        let es = x.dtype().size_in_bytes() as u64;
        let params = OpParams::new(OpKind::Matmul).dtype(x.dtype()).memory(
            MemoryEstimate::new(m)
                .buffer((n * k * w.dtype().size_in_bytes()) as u64, 0)
                .buffer(0, k as u64 * es)
                .buffer(0, n as u64 * es)
                .buffer(n as u64 * es, 0),
        );
        let y = self.run_split(&params, |b, r| {
            b.matmul(xf.slice(r.start * k..r.end * k), wf, bias, r.len(), n, k)
        })?;
        Tensor::from_floats(with_last_dim(x.shape(), n), y)
    }

    /// Softmax over the last dimension.
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax";
        let xf = x.floats(OP)?;
        let (_, cols) = rows_cols(OP, x)?;
        if cols == 0 {
            return Err(Error::shape(OP, "last dimension is empty"));
        }
        let params = OpParams::new(OpKind::Softmax).dtype(x.dtype()).memory(
            MemoryEstimate::new(xf.len() / cols)
                .buffer(
                    0,
                    (cols as u64).saturating_mul(x.dtype().size_in_bytes() as u64),
                )
                .buffer(
                    0,
                    (cols as u64).saturating_mul(x.dtype().size_in_bytes() as u64),
                ),
        );
        let y = self.run_split(&params, |b, r| {
            b.softmax(xf.slice(r.start * cols..r.end * cols), cols)
        })?;
        Tensor::from_floats(x.shape().to_vec(), y)
    }

    /// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`.
    pub fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let (xf, wf) = (x.floats(OP)?, weight.floats(OP)?);
        let (_, cols) = rows_cols(OP, x)?;
        check_len(OP, "weight", wf.len(), cols)?;
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and > 0, got {eps}"),
            ));
        }
        let row_bytes = (cols * x.dtype().size_in_bytes()) as u64;
        let params = OpParams::new(OpKind::RmsNorm).dtype(x.dtype()).memory(
            MemoryEstimate::new(xf.len().checked_div(cols).unwrap_or(0))
                .buffer(
                    (cols as u64).saturating_mul(weight.dtype().size_in_bytes() as u64),
                    0,
                )
                .buffer(0, row_bytes)
                .buffer(0, row_bytes),
        );
        let y = self.run_split(&params, |b, r| {
            b.rms_norm(xf.slice(r.start * cols..r.end * cols), wf, eps, cols)
        })?;
        Tensor::from_floats(x.shape().to_vec(), y)
    }
}
