//! Device-tensor ops on host memory: each [`Op`] runs through the host-slice kernels of a backend (the fast
//! CPU kernels, or the reference ones). The runtime's CPU fallback runs the same code, so an op gives the same
//! answer whether the CPU was chosen or fallen back to.

use super::fast;
use super::fast::q8_gemm::Q8View;
use super::reference::model;
use crate::backend::{Backend, Packed4bit, PackedTernary};
use crate::capability::Op;
use crate::ops::int8;
use crate::tensor::{DType, FloatVec, Floats, Tensor, TensorData, split_last_dim, with_last_dim};
use crate::with_floats;
use crate::{Error, Result};

/// A borrowed host operand.
#[derive(Clone, Copy, Debug)]
pub struct HostView<'a> {
    pub shape: &'a [usize],
    pub data: &'a TensorData,
}

impl<'a> HostView<'a> {
    fn floats(&self, op: &'static str) -> Result<Floats<'a>> {
        match self.data {
            TensorData::Float(f) => Ok(f.as_floats()),
            _ => Err(dtype_err(op, self.data, "f32, f16, bf16")),
        }
    }
    fn u8(&self, op: &'static str) -> Result<&'a [u8]> {
        match self.data {
            TensorData::U8(v) => Ok(v),
            _ => Err(dtype_err(op, self.data, "u8")),
        }
    }
    fn i8(&self, op: &'static str) -> Result<&'a [i8]> {
        match self.data {
            TensorData::I8(v) => Ok(v),
            _ => Err(dtype_err(op, self.data, "i8")),
        }
    }
    fn i32(&self, op: &'static str) -> Result<&'a [i32]> {
        match self.data {
            TensorData::I32(v) => Ok(v),
            _ => Err(dtype_err(op, self.data, "i32")),
        }
    }
    fn rows_cols(&self) -> (usize, usize) {
        split_last_dim(self.shape)
    }
}

fn dtype_err(op: &'static str, d: &TensorData, expected: &'static str) -> Error {
    let got = match d {
        TensorData::Float(f) => f.dtype(),
        TensorData::U8(_) => DType::U8,
        TensorData::I8(_) => DType::I8,
        TensorData::I32(_) => DType::I32,
        TensorData::I64(_) => DType::I64,
    };
    Error::DType {
        op,
        got: got.to_string(),
        expected,
    }
}

fn out(shape: Vec<usize>, v: FloatVec) -> Result<Tensor> {
    Tensor::from_floats(shape, v)
}

/// Runs an elementwise kernel of two operands of one float dtype.
macro_rules! binary {
    ($op:expr, $a:expr, $b:expr, $f:path) => {
        match ($a, $b) {
            (Floats::F32(a), Floats::F32(b)) => FloatVec::from($f(a, b)),
            (Floats::F16(a), Floats::F16(b)) => FloatVec::from($f(a, b)),
            (Floats::BF16(a), Floats::BF16(b)) => FloatVec::from($f(a, b)),
            (a, b) => {
                return Err(Error::DType {
                    op: $op,
                    got: format!("{} and {}", a.dtype(), b.dtype()),
                    expected: "two operands of one dtype",
                });
            }
        }
    };
}

/// Which model-op kernels a host backend runs (the `Backend` trait has no model ops: they live here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKernels {
    /// `reference::model`: the executable spec.
    Reference,
    /// The fast CPU kernels where one exists (attention, f32 SwiGLU), within the reference's bounds.
    Fast,
}

/// The attention kernel of `kernels` for element type `T`.
type AttentionFn<T> = fn(&[T], &[T], &[T], usize, usize, usize, usize, usize, f32) -> Vec<T>;
fn attention_kernel<T: crate::tensor::Float>(kernels: ModelKernels) -> AttentionFn<T> {
    match kernels {
        ModelKernels::Reference => model::attention,
        ModelKernels::Fast => super::fast::attention::attention,
    }
}

/// Runs `op` on host operands through `b`'s host-slice kernels and the model kernels `kernels`. Operands were
/// validated by the op layer.
pub fn run_host_op(
    b: &dyn Backend,
    kernels: ModelKernels,
    op: &Op,
    inputs: &[HostView],
) -> Result<Tensor> {
    let name = op.kind().name();
    let bias = |i: usize, present: bool| -> Result<Option<Floats>> {
        if present {
            inputs[i].floats(name).map(Some)
        } else {
            Ok(None)
        }
    };
    match *op {
        Op::Linear { bias: has_bias } => {
            let x = inputs[0].floats(name)?;
            let w = inputs[1].floats(name)?;
            let (m, k) = inputs[0].rows_cols();
            let n = inputs[1].shape[0];
            let y = b.matmul(x, w, bias(2, has_bias)?, m, n, k)?;
            out(with_last_dim(inputs[0].shape, n), y)
        }
        Op::Linear4bit {
            quant_type,
            blocksize,
            rows,
            cols,
            bias: has_bias,
        } => {
            let x = inputs[0].floats(name)?;
            let w = packed_4bit(name, inputs, quant_type, blocksize, rows, cols)?;
            let (m, _) = inputs[0].rows_cols();
            let bias = bias(3, has_bias)?;
            let y = if m == 1 {
                b.gemv_4bit(x, w, bias)?
            } else {
                b.matmul_4bit(x, m, w, bias)?
            };
            out(with_last_dim(inputs[0].shape, rows), y)
        }
        Op::Linear4bitQ8 {
            quant_type,
            rows,
            cols,
            bias: has_bias,
        } => {
            let x = inputs[0].floats(name)?;
            let w = fast::q4_lanes::LanesView {
                packed: inputs[1].u8(name)?,
                scales: f32s(name, &inputs[2])?,
                quant_type,
                rows,
                cols,
            };
            let bias = bias(3, has_bias)?.map(|b| b.to_f32_vec());
            let y = q8_rows(x, cols, |xf, m| {
                fast::q4_lanes::linear(xf, m, w, bias.as_deref(), vnni(kernels))
            });
            out(with_last_dim(inputs[0].shape, rows), y)
        }
        Op::LinearQ8 {
            rows,
            cols,
            bias: has_bias,
        } => {
            let x = inputs[0].floats(name)?;
            let (codes, scales) = (inputs[1].u8(name)?, f32s(name, &inputs[2])?);
            let bias = bias(3, has_bias)?.map(|b| b.to_f32_vec());
            let y = q8_rows(x, cols, |xf, m| match m {
                1 => fast::q8::gemv_q8(
                    xf,
                    codes,
                    scales,
                    rows,
                    cols,
                    bias.as_deref(),
                    vnni(kernels),
                ),
                _ => {
                    let w = Q8View {
                        codes,
                        scales,
                        rows,
                        cols,
                    };
                    fast::q8_gemm::gemm(xf, m, w, bias.as_deref(), vnni(kernels))
                }
            });
            out(with_last_dim(inputs[0].shape, rows), y)
        }
        Op::LinearTernary {
            weight_scale,
            rows,
            cols,
            bias: has_bias,
        } => {
            let x = inputs[0].floats(name)?;
            let (m, _) = inputs[0].rows_cols();
            let (xq, xs) = b.ternary_act_quant(x, m, cols)?;
            let w = PackedTernary {
                packed: inputs[1].u8(name)?,
                weight_scale,
                rows,
                cols,
            };
            let y = b.ternary_matmul(&xq, &xs, m, w, bias(2, has_bias)?)?;
            out(
                with_last_dim(inputs[0].shape, rows),
                FloatVec::from_f32(y, x.dtype()),
            )
        }
        Op::Linear8bit {
            threshold,
            rows,
            cols,
            bias: has_bias,
        } => {
            let x16 = int8::to_f16(inputs[0].floats(name)?);
            let (m, _) = inputs[0].rows_cols();
            let (w, scb) = (inputs[1].i8(name)?, f32s(name, &inputs[2])?);
            // The host layer's forward (ops::int8::Linear8bitLt::forward), step for step.
            let xq = b.int8_vectorwise_quant(Floats::F16(&x16), m, cols, threshold)?;
            let c = b.int8_linear_matmul(&xq.q, w, m, rows, cols)?;
            let mut y = b.int8_mm_dequant(&c, &xq.row_stats, scb, bias(3, has_bias)?)?;
            if let Some(oc) = xq.outlier_cols.filter(|c| !c.is_empty()) {
                let (xs, ws) = int8::outlier_operands(&x16, cols, &oc, w, scb);
                let extra =
                    b.matmul(Floats::F16(&xs), Floats::F16(&ws), None, m, rows, oc.len())?;
                int8::add_outliers(&mut y, &extra);
            }
            out(with_last_dim(inputs[0].shape, rows), FloatVec::F16(y))
        }
        Op::RmsNorm { eps } => {
            let x = inputs[0].floats(name)?;
            let w = inputs[1].floats(name)?;
            let cols = inputs[0].rows_cols().1;
            out(inputs[0].shape.to_vec(), b.rms_norm(x, w, eps, cols)?)
        }
        Op::Softmax => {
            let x = inputs[0].floats(name)?;
            let cols = inputs[0].rows_cols().1;
            out(inputs[0].shape.to_vec(), b.softmax(x, cols)?)
        }
        Op::Cast { to } => {
            let x = inputs[0].floats(name)?;
            let y = if x.dtype() == to {
                with_floats!(x, s => FloatVec::from(s.to_vec()))
            } else {
                FloatVec::from_f32(x.to_f32_vec(), to)
            };
            out(inputs[0].shape.to_vec(), y)
        }
        Op::Narrow { start, len } => {
            let x = inputs[0].floats(name)?;
            let (rows, cols) = inputs[0].rows_cols();
            let y = with_floats!(x, s => {
                let mut y = Vec::with_capacity(rows * len);
                for row in s.chunks_exact(cols.max(1)) {
                    y.extend_from_slice(&row[start..start + len]);
                }
                FloatVec::from(y)
            });
            out(with_last_dim(inputs[0].shape, len), y)
        }
        Op::Embedding => {
            let table = inputs[0].floats(name)?;
            let ids: Vec<u32> = inputs[1].i32(name)?.iter().map(|&i| i as u32).collect();
            let dim = inputs[0].shape[1];
            let y = with_floats!(table, t => FloatVec::from(model::embedding(t, dim, &ids)));
            out(vec![ids.len(), dim], y)
        }
        Op::Rope {
            heads,
            head_dim,
            rotary_dim,
            pos_start,
            layout,
        } => {
            let x = inputs[0].floats(name)?;
            let (cos, sin) = (f32s(name, &inputs[1])?, f32s(name, &inputs[2])?);
            let y = with_floats!(x, s => FloatVec::from(model::rope(
                s, heads, head_dim, rotary_dim, cos, sin, pos_start, layout
            )));
            out(inputs[0].shape.to_vec(), y)
        }
        Op::SiluMul => {
            let (g, u) = (inputs[0].floats(name)?, inputs[1].floats(name)?);
            let y = match (g, u, kernels) {
                (Floats::F32(g), Floats::F32(u), ModelKernels::Fast) => {
                    FloatVec::from(fast::activation::silu_mul(g, u))
                }
                (g, u, _) => binary!(name, g, u, model::silu_mul),
            };
            out(inputs[0].shape.to_vec(), y)
        }
        Op::Relu2Mul => {
            let (g, u) = (inputs[0].floats(name)?, inputs[1].floats(name)?);
            let y = binary!(name, g, u, model::relu2_mul);
            out(inputs[0].shape.to_vec(), y)
        }
        Op::Add => {
            let (a, c) = (inputs[0].floats(name)?, inputs[1].floats(name)?);
            let y = binary!(name, a, c, model::add);
            out(inputs[0].shape.to_vec(), y)
        }
        Op::Gelu { kind } => {
            let x = inputs[0].floats(name)?;
            let y = with_floats!(x, s => FloatVec::from(model::gelu(s, kind)));
            out(inputs[0].shape.to_vec(), y)
        }
        Op::Attention {
            n_heads,
            n_kv_heads,
            head_dim,
            kv_len,
            pos_start,
            scale,
        } => {
            let q = inputs[0].floats(name)?;
            let k = inputs[1].floats(name)?;
            let v = inputs[2].floats(name)?;
            let y = match (q, k, v) {
                (Floats::F32(q), Floats::F32(k), Floats::F32(v)) => {
                    FloatVec::from(attention_kernel(kernels)(
                        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
                    ))
                }
                (Floats::F16(q), Floats::F16(k), Floats::F16(v)) => {
                    FloatVec::from(attention_kernel(kernels)(
                        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
                    ))
                }
                (Floats::BF16(q), Floats::BF16(k), Floats::BF16(v)) => {
                    FloatVec::from(attention_kernel(kernels)(
                        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
                    ))
                }
                _ => {
                    return Err(Error::DType {
                        op: name,
                        got: format!("{}/{}/{}", q.dtype(), k.dtype(), v.dtype()),
                        expected: "q, k and v of one dtype",
                    });
                }
            };
            out(inputs[0].shape.to_vec(), y)
        }
    }
}

/// Whether the int8-activation GEMVs use VNNI: the fast kernels where the CPU has it. The portable kernel
/// gives the same bits, so this choice changes speed only.
fn vnni(kernels: ModelKernels) -> bool {
    kernels == ModelKernels::Fast && fast::q8::has_vnni()
}

/// An int8-activation product of x's rows (`product(x, rows)`: the GEMV for one, the batched kernel for
/// several; `format::q8` defines both), in x's dtype.
fn q8_rows(x: Floats, cols: usize, product: impl Fn(&[f32], usize) -> Vec<f32>) -> FloatVec {
    let xf = x.to_f32_vec();
    let y = product(&xf, xf.len() / cols.max(1));
    FloatVec::from_f32(y, x.dtype())
}

/// The packed codes (operand 1) and f32 absmax (operand 2) of a 4-bit linear.
fn packed_4bit<'a>(
    op: &'static str,
    inputs: &[HostView<'a>],
    quant_type: crate::format::FourBitType,
    blocksize: usize,
    rows: usize,
    cols: usize,
) -> Result<Packed4bit<'a>> {
    Ok(Packed4bit {
        packed: inputs[1].u8(op)?,
        absmax: f32s(op, &inputs[2])?,
        quant_type,
        blocksize,
        rows,
        cols,
    })
}

fn f32s<'a>(op: &'static str, v: &HostView<'a>) -> Result<&'a [f32]> {
    match v.data {
        TensorData::Float(FloatVec::F32(s)) => Ok(s),
        d => Err(dtype_err(op, d, "f32")),
    }
}

/// The CPU backends' `run_op`: operands in host storage, output in new host storage.
pub fn run_on_host_storage(
    b: &dyn Backend,
    device: &'static str,
    kernels: ModelKernels,
    op: &Op,
    inputs: &[&crate::device_tensor::DeviceTensor],
) -> Result<crate::device_tensor::DeviceTensor> {
    let name = op.kind().name();
    let storages = inputs
        .iter()
        .map(|t| super::storage::host_storage(name, t))
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = storages.iter().map(|s| s.read()).collect();
    let views: Vec<HostView> = inputs
        .iter()
        .zip(&guards)
        .map(|(t, g)| HostView {
            shape: t.shape(),
            data: g,
        })
        .collect();
    let y = run_host_op(b, kernels, op, &views)?;
    drop(guards);
    super::storage::host_tensor(y, device)
}
