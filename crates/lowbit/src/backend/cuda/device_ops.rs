//! Device-tensor ops of the CUDA backend: operands are CUDA allocations of this device, results stay
//! there, and nothing waits except LLM.int8()'s outlier columns (their count sizes the float product).

use super::CudaBackend;
use super::ops::{Bias, Buf, TernaryWeight, Weight4};
use super::storage::CudaStorage;
use crate::Result;
use crate::capability::{Op, Support};
use crate::device_tensor::DeviceTensor;
use crate::tensor::{DType, with_last_dim};

impl CudaBackend {
    pub(super) fn storage<'a>(
        &self,
        op: &'static str,
        t: &'a DeviceTensor,
    ) -> Result<&'a CudaStorage> {
        t.storage_on(op, self.device_id())
    }

    fn arc(&self, op: &'static str, t: &DeviceTensor) -> Result<Buf> {
        t.storage_arc_on(op, self.device_id())
    }

    pub(super) fn supports_device_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        let floats_ok = dtypes
            .iter()
            .enumerate()
            .all(|(i, d)| d.is_float() || !op.is_float_operand(i));
        let same = |n: usize| dtypes.iter().take(n).all(|d| Some(d) == dtypes.first());
        let ok = floats_ok
            && match op {
                Op::SiluMul | Op::Relu2Mul | Op::Add => same(2),
                Op::Attention { .. } => same(3),
                Op::Linear8bit { cols, .. } => *cols > 0,
                // Int8 activations are the CPU's decode path (format::q8); GPUs run the float kernels.
                Op::Linear4bitQ8 { .. } | Op::LinearQ8 { .. } => false,
                _ => true,
            };
        if ok {
            Support::Yes
        } else {
            Support::No(format!(
                "no {} kernel for operands {dtypes:?} in the CUDA backend",
                op.kind().name()
            ))
        }
    }

    fn wrap(&self, shape: Vec<usize>, dtype: DType, s: Buf) -> Result<DeviceTensor> {
        DeviceTensor::new(shape, dtype, s)
    }

    /// An f32 result as a tensor of `dtype` (narrowed on the device when needed).
    fn narrowed(&self, y: Buf, shape: Vec<usize>, dtype: DType) -> Result<DeviceTensor> {
        let n = shape.iter().product();
        let y = if dtype == DType::F32 {
            y
        } else {
            self.cuda.cast_dev(&y, DType::F32, n, dtype)?
        };
        self.wrap(shape, dtype, y)
    }

    /// A linear layer's bias (or residual) as stored, with its dtype: the linear kernels widen it.
    fn bias(&self, op: &'static str, t: Option<&DeviceTensor>) -> Result<Option<(Buf, DType)>> {
        t.map(|b| Ok((self.arc(op, b)?, b.dtype()))).transpose()
    }

    fn bias_f32(&self, op: &'static str, t: Option<&DeviceTensor>) -> Result<Option<Buf>> {
        t.map(|b| self.cuda.as_f32(&self.arc(op, b)?, b.dtype(), b.numel()))
            .transpose()
    }

    pub(super) fn run_device_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        let name = op.kind().name();
        let x = inputs[0];
        let (dtype, shape0) = (x.dtype(), x.shape().to_vec());
        let buf = |i: usize| self.arc(name, inputs[i]);
        let st = |i: usize| self.storage(name, inputs[i]);
        let c = &self.cuda;
        match *op {
            Op::Linear4bitQ8 { .. } | Op::LinearQ8 { .. } => {
                Err(crate::backend::Backend::unsupported(
                    self,
                    name,
                    "int8 activations run on the CPU only",
                ))
            }
            Op::Linear { bias } => {
                let w = inputs[1];
                let (m, k) = x.rows_cols();
                let n = w.shape()[0];
                let b = self.bias(name, bias.then(|| inputs[2]))?;
                let b = b.as_ref().map(|(buf, dtype)| Bias { buf, dtype: *dtype });
                let (xb, wb) = (buf(0)?, buf(1)?);
                let y = if w.dtype() == dtype {
                    c.linear_dev(&xb, &wb, dtype, b, m, n, k, dtype)?
                } else {
                    // A weight kept in its checkpoint's dtype (f16/bf16) under f32 activations.
                    let dims = (m, n, k);
                    c.linear_mixed_dev(&xb, dtype, &wb, w.dtype(), b, dims, dtype)?
                };
                self.wrap(with_last_dim(&shape0, n), dtype, y)
            }
            Op::Linear4bit {
                quant_type,
                blocksize,
                rows,
                cols,
                bias,
            } => {
                let (packed, absmax) = (st(1)?, st(2)?);
                let w = Weight4 {
                    packed,
                    absmax,
                    quant_type,
                    blocksize,
                    rows,
                    cols,
                };
                let b = self.bias(name, bias.then(|| inputs[3]))?;
                let b = b.as_ref().map(|(buf, dtype)| Bias { buf, dtype: *dtype });
                let m = x.rows_cols().0;
                let y = c.linear_4bit_dev(st(0)?, dtype, m, &w, b, dtype)?;
                self.wrap(with_last_dim(&shape0, rows), dtype, y)
            }
            Op::LinearTernary {
                weight_scale,
                rows,
                cols,
                bias,
            } => {
                let m = x.rows_cols().0;
                let b = self.bias(name, bias.then(|| inputs[2]))?;
                let b = b.as_ref().map(|(buf, dtype)| Bias { buf, dtype: *dtype });
                let w = TernaryWeight {
                    packed: st(1)?,
                    weight_scale,
                    rows,
                    cols,
                };
                let shape = with_last_dim(&shape0, rows);
                if let Some(y) = c.ternary_linear_r1_dev(st(0)?, dtype, m, w, b, dtype)? {
                    return self.wrap(shape, dtype, y);
                }
                let (q, s) = c.ternary_act_quant_dev(st(0)?, dtype, m, cols)?;
                let y = c.ternary_matmul_dev(&q, &s, m, w, b)?;
                self.narrowed(y, shape, dtype)
            }
            Op::Linear8bit {
                threshold,
                rows,
                cols,
                bias,
            } => self.linear_8bit(inputs, threshold, rows, cols, bias),
            Op::RmsNorm { eps } => {
                let (rows, cols) = x.rows_cols();
                let y =
                    c.rms_norm_dev(st(0)?, dtype, st(1)?, inputs[1].dtype(), rows, cols, eps)?;
                self.wrap(shape0, dtype, y)
            }
            Op::Softmax => {
                let (rows, cols) = x.rows_cols();
                let y = c.softmax_dev(st(0)?, dtype, rows, cols)?;
                self.wrap(shape0, dtype, y)
            }
            Op::Embedding => {
                c.step_vocab(x.shape()[0]);
                let dim = x.shape()[1];
                let n = inputs[1].numel();
                let y = c.embedding_dev(st(0)?, st(1)?, n, dim * dtype.size_in_bytes())?;
                self.wrap(vec![n, dim], dtype, y)
            }
            Op::Rope {
                heads,
                head_dim,
                rotary_dim,
                pos_start,
                layout,
            } => {
                let dims = [shape0[0], heads, head_dim, rotary_dim, pos_start];
                let tables = (st(1)?, st(2)?, inputs[1].shape()[0]);
                let y = c.rope_dev(st(0)?, dtype, dims, layout, tables)?;
                self.wrap(shape0, dtype, y)
            }
            Op::SiluMul | Op::Relu2Mul | Op::Add => {
                let code = match op {
                    Op::Add => 0,
                    Op::SiluMul => 1,
                    _ => 2,
                };
                let y = c.binary_dev(st(0)?, st(1)?, dtype, x.numel(), code)?;
                self.wrap(shape0, dtype, y)
            }
            Op::Narrow { start, len } => {
                let y = c.narrow_dev(&buf(0)?, dtype, x.rows_cols(), start, len)?;
                self.wrap(with_last_dim(&shape0, len), dtype, y)
            }
            Op::Gelu { kind } => {
                let y = c.gelu_dev(st(0)?, dtype, x.numel(), kind)?;
                self.wrap(shape0, dtype, y)
            }
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                kv_len,
                pos_start,
                scale,
            } => {
                let capacity = inputs[1].shape()[0];
                let dims = [
                    shape0[0], n_heads, n_kv_heads, head_dim, kv_len, pos_start, capacity,
                ];
                let y = c.attention_dev(st(0)?, st(1)?, st(2)?, dtype, dims, scale)?;
                self.wrap(shape0, dtype, y)
            }
            Op::Cast { to } => {
                let y = c.cast_dev(st(0)?, dtype, x.numel(), to)?;
                self.wrap(shape0, to, y)
            }
        }
    }

    /// bitsandbytes' `Linear8bitLt` forward, step for step as the host layer (ops::int8): x rounded to f16,
    /// outlier columns flagged, int8 rows, the exact int8 GEMM, `int8_mm_dequant`, and the outlier columns'
    /// f16 product added in f16. Output f16, as bitsandbytes'.
    fn linear_8bit(
        &self,
        inputs: &[&DeviceTensor],
        threshold: f32,
        rows: usize,
        cols: usize,
        bias: bool,
    ) -> Result<DeviceTensor> {
        const OP: &str = "linear8bitlt";
        let c = &self.cuda;
        let x = inputs[0];
        let m = x.rows_cols().0;
        let shape = with_last_dim(x.shape(), rows);
        let xb = self.arc(OP, x)?;
        let x16 = if x.dtype() == DType::F16 {
            xb
        } else {
            c.cast_dev(&xb, x.dtype(), m * cols, DType::F16)?
        };
        let (w, scb) = (self.arc(OP, inputs[1])?, self.arc(OP, inputs[2])?);
        let flags = if threshold > 0.0 {
            Some(c.int8_col_outliers_dev(&x16, DType::F16, m, cols, threshold)?)
        } else {
            None
        };
        let zero = flags.as_ref().filter(|_| m > 1);
        let (q, stats) = c.int8_row_quant_dev(&x16, DType::F16, m, cols, threshold, zero)?;
        let acc = c.int8_gemm_dev(&q, &w, m, rows, cols)?;
        let b = self.bias_f32(OP, bias.then(|| inputs[3]))?;
        let y = c.int8_mm_dequant_dev(&acc, &stats, &scb, b.as_ref(), m, rows)?;
        if let Some(f) = flags.as_ref().filter(|_| c.int8_few_rows(m)) {
            c.int8_outliers_few_rows_dev(&y, &x16, &w, &scb, f, m, rows, cols)?;
        } else if let Some(f) = flags {
            // Many rows: the outlier columns gathered into one f16 product (bitsandbytes' route).
            let f: Vec<u32> = bytemuck::pod_collect_to_vec(&c.download_bytes(OP, &f, cols * 4)?);
            let list: Vec<u32> = crate::backend::outlier_columns(&f)
                .map(|c| c as u32)
                .collect();
            if !list.is_empty() {
                let nc = list.len();
                let lb = c.upload_bytes(OP, bytemuck::cast_slice(&list))?;
                let (xs, ws) =
                    c.int8_outlier_operands_dev(&x16, &w, &scb, &lb, nc, m, rows, cols)?;
                let extra16 = c.linear_dev(&xs, &ws, DType::F16, None, m, rows, nc, DType::F16)?;
                c.add_f16_dev(&y, &extra16, m * rows)?;
            }
        }
        self.wrap(shape, DType::F16, y)
    }
}
