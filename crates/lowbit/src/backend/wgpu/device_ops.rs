//! The wgpu backend's device tensors: storage is a GPU buffer, ops are recorded and submitted without
//! waiting (a download waits), and `supports_op` says exactly which ops and dtypes have kernels here; the
//! runtime runs the rest on the CPU and counts it.

use super::WgpuBackend;
use super::int8_linear::Int8LinearArgs;
use super::kernels::{encode_linear_half_weight, half_weight_kind};
use super::model_ops::{self as mk, AttentionDims, RopeDims};
use super::pool::{BufferPool, Use};
use super::tensor::GpuTensor;
use super::weights::{GpuPacked4bit, GpuPackedTernary};
use crate::capability::{Op, Support};
use crate::device_tensor::{BackendStorage, DeviceTensor};
use crate::tensor::{DType, Tensor, TensorData, with_last_dim};
use crate::{Error, Result};
use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

/// A GPU buffer owned by one wgpu device.
pub struct GpuStorage {
    pub(crate) buffer: wgpu::Buffer,
    /// The byte the tensor starts at: 0, or a window's start in its parent's buffer.
    offset: u64,
    device: Arc<str>,
    /// Where the buffer goes when the last tensor over it is dropped: set for a buffer this storage owns
    /// alone (a fresh op output or upload), never for a window into another storage's buffer.
    pool: Option<Arc<BufferPool>>,
    /// A window keeps the storage it looks into alive (so its buffer does not go back to the pool).
    _parent: Option<Arc<dyn BackendStorage>>,
}

impl Drop for GpuStorage {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(Use::Storage, self.buffer.clone());
        }
    }
}

impl BackendStorage for GpuStorage {
    fn device_id(&self) -> &str {
        &self.device
    }
    fn size_in_bytes(&self) -> u64 {
        self.buffer.size() - self.offset
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WgpuBackend {
    fn storage<'a>(&self, op: &'static str, t: &'a DeviceTensor) -> Result<&'a GpuStorage> {
        t.storage_on(op, self.device_id())
    }

    /// The resident-kernel view of a device tensor of this backend, which must start at its buffer's first
    /// byte (`materialized` makes a window do so).
    pub(super) fn view(&self, op: &'static str, t: &DeviceTensor) -> Result<GpuTensor> {
        let s = self.storage(op, t)?;
        if s.offset != 0 {
            return Err(Error::invalid(
                op,
                "a window into another tensor reached a kernel that reads from its buffer's start"
                    .to_string(),
            ));
        }
        Ok(GpuTensor {
            buffer: s.buffer.clone(),
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        })
    }

    /// `t` itself, or, for a window that does not start at its buffer's first byte, a copy of it in a
    /// pooled buffer of its own (given back when the copy is dropped).
    fn materialized(&self, op: &'static str, t: &DeviceTensor) -> Result<Option<DeviceTensor>> {
        let s = self.storage(op, t)?;
        if s.offset == 0 {
            return Ok(None);
        }
        let bytes = t.size_in_bytes() as u64;
        let y = self.gpu().pooled(bytes)?;
        let gpu = self.gpu();
        gpu.submit(|enc| mk::encode_copy_words(gpu, enc, (&s.buffer, s.offset), &y, 0, bytes))?;
        let copy = GpuTensor {
            buffer: y,
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        };
        self.wrap_owned(copy).map(Some)
    }

    /// Columns `start..start + len` of a one-row tensor as a window into its buffer: no copy, no dispatch.
    /// The window starts on a 4-byte word (the kernels that take windows read words).
    fn window(&self, x: &DeviceTensor, start: usize, len: usize) -> Result<Option<DeviceTensor>> {
        let s = self.storage("narrow", x)?;
        let at = (start * x.dtype().size_in_bytes()) as u64;
        if x.rows_cols().0 != 1 || !at.is_multiple_of(4) {
            return Ok(None);
        }
        let storage = GpuStorage {
            buffer: s.buffer.clone(),
            offset: s.offset + at,
            device: self.device_id_arc(),
            pool: None,
            _parent: Some(x.storage().clone()),
        };
        let shape = with_last_dim(x.shape(), len);
        DeviceTensor::new(shape, x.dtype(), Arc::new(storage)).map(Some)
    }

    /// A device tensor that owns `t`'s buffer alone (a fresh output or upload): the buffer goes back to the
    /// pool when the tensor is dropped.
    pub(super) fn wrap_owned(&self, t: GpuTensor) -> Result<DeviceTensor> {
        let storage = GpuStorage {
            buffer: t.buffer,
            offset: 0,
            device: self.device_id_arc(),
            pool: Some(self.gpu().pool().clone()),
            _parent: None,
        };
        DeviceTensor::new(t.shape, t.dtype, Arc::new(storage))
    }

    pub(crate) fn upload_tensor(&self, t: &Tensor) -> Result<DeviceTensor> {
        let bytes = t.data().as_bytes();
        super::kernels::check_binding(self.gpu(), "upload", bytes.len())?;
        let g = GpuTensor {
            buffer: self.gpu().pooled_upload(bytes)?,
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        };
        self.wrap_owned(g)
    }

    pub(crate) fn download_tensor(&self, t: &DeviceTensor) -> Result<Tensor> {
        let copy = self.materialized("download", t)?;
        let t = copy.as_ref().unwrap_or(t);
        let s = self.storage("download", t)?;
        let bytes = self.gpu().read(&s.buffer, t.size_in_bytes())?;
        Tensor::new(
            t.shape().to_vec(),
            TensorData::from_bytes(t.dtype(), &bytes),
        )
    }

    pub(crate) fn supports_device_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        // Float operands may be f32, f16 or bf16 (widened and narrowed on the device); packed weights and
        // ids have the dtypes the op layer checked.
        let floats_ok = dtypes
            .iter()
            .enumerate()
            .all(|(i, d)| d.is_float() || !op.is_float_operand(i));
        let ok = match op {
            // A layer without input features has no int8 rows to quantize: the CPU computes its bias-only output.
            Op::Linear8bit { cols, .. } => floats_ok && *cols > 0,
            // Int8 activations are the CPU's decode path (format::q8); GPUs run the float kernels.
            Op::Linear4bitQ8 { .. } | Op::LinearQ8 { .. } => false,
            // Whole 32-bit words: halves in even windows (the row length is checked when it runs).
            Op::Narrow { start, len } => {
                floats_ok
                    && (dtypes.first() == Some(&DType::F32)
                        || (start.is_multiple_of(2) && len.is_multiple_of(2)))
            }
            _ => floats_ok,
        };
        if ok {
            Support::Yes
        } else {
            Support::No(format!(
                "no {} kernel for operands {dtypes:?} in the wgpu backend",
                op.kind().name()
            ))
        }
    }

    /// `t` as f32 on the device: itself, or widened exactly by the cast kernel into a new buffer, which is
    /// also pushed onto `scratch` (given back to the pool once the op using it is recorded).
    fn widened(
        &self,
        name: &'static str,
        t: &DeviceTensor,
        scratch: &RefCell<Vec<wgpu::Buffer>>,
    ) -> Result<GpuTensor> {
        let v = self.view(name, t)?;
        if v.dtype == DType::F32 {
            return Ok(v);
        }
        let n = t.numel();
        let out = self.gpu().pooled((n * 4) as u64)?;
        scratch.borrow_mut().push(out.clone());
        let gpu = self.gpu();
        gpu.submit(|enc| mk::encode_cast(gpu, enc, v.dtype, DType::F32, n, &v.buffer, &out))?;
        Ok(GpuTensor {
            buffer: out,
            shape: v.shape,
            dtype: DType::F32,
        })
    }

    /// An f32 result narrowed to `to` on the device (round to nearest even, the CPU's bits). When narrowed
    /// and `y_owned` (nothing else holds y's buffer), y's buffer goes back to the pool once the cast is
    /// recorded.
    fn narrowed(&self, y: GpuTensor, to: DType, y_owned: bool) -> Result<GpuTensor> {
        if to == DType::F32 {
            return Ok(y);
        }
        let n = y.numel();
        let out = self.gpu().pooled((n * 2) as u64)?;
        let gpu = self.gpu();
        gpu.submit(|enc| mk::encode_cast(gpu, enc, DType::F32, to, n, &y.buffer, &out))?;
        if y_owned {
            gpu.recycle(y.buffer);
        }
        Ok(GpuTensor {
            buffer: out,
            shape: y.shape,
            dtype: to,
        })
    }

    /// A new f32 output buffer of `n` elements, checked against the kernels' limits.
    fn f32_out(&self, op: &'static str, shape: Vec<usize>) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        super::kernels::u32_len(op, n)?;
        super::kernels::check_binding(self.gpu(), op, n * 4)?;
        Ok(GpuTensor {
            buffer: self.gpu().pooled((n * 4) as u64)?,
            shape,
            dtype: DType::F32,
        })
    }

    pub(crate) fn run_device_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        let name = op.kind().name();
        // Windows (one-row narrows) are read in place by the element-wise kernels and narrowed again in
        // place; every other kernel reads its operands from their buffers' start, so a window is copied
        // for it first.
        let copies = if matches!(op, Op::SiluMul | Op::Relu2Mul | Op::Add | Op::Narrow { .. }) {
            Vec::new()
        } else {
            inputs
                .iter()
                .map(|t| self.materialized(name, t))
                .collect::<Result<Vec<_>>>()?
        };
        let inputs: Vec<&DeviceTensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| copies.get(i).and_then(Option::as_ref).unwrap_or(t))
            .collect();
        let inputs = &inputs[..];
        let out_dtype = inputs[0].dtype();
        let shape0 = inputs[0].shape().to_vec();
        let v = |i: usize| self.view(name, inputs[i]);
        // Operands widened to f32 for this op only; their buffers go back to the pool at the end.
        let scratch = RefCell::new(Vec::new());
        let w = |i: usize| self.widened(name, inputs[i], &scratch);
        let gpu = self.gpu();
        let y = match *op {
            Op::Linear4bitQ8 { .. } | Op::LinearQ8 { .. } => {
                return Err(crate::backend::Backend::unsupported(
                    self,
                    name,
                    "int8 activations run on the CPU only",
                ));
            }
            Op::Linear { bias } => {
                let b = if bias { Some(w(2)?.buffer) } else { None };
                let x = w(0)?.into_matrix();
                let n = inputs[1].shape()[0];
                let y = match half_weight_kind(inputs[1].dtype()) {
                    // A half-precision weight is read as stored: nothing widened per call.
                    Some(kind) => {
                        let (m, k) = (x.shape[0], x.shape[1]);
                        let (wt, y) = (v(1)?, self.f32_out(name, vec![m, n])?);
                        gpu.submit(|enc| {
                            encode_linear_half_weight(
                                gpu,
                                enc,
                                kind,
                                (m, n, k),
                                &x.buffer,
                                &wt.buffer,
                                b.as_ref(),
                                &y.buffer,
                            )
                        })?;
                        y
                    }
                    None => self.linear_f32(name, &x, &w(1)?, b.as_ref())?,
                };
                y.with_shape(with_last_dim(&shape0, n))
            }
            Op::Linear4bit {
                quant_type,
                blocksize,
                rows,
                cols,
                bias,
            } => {
                let wt = GpuPacked4bit::from_parts(
                    v(1)?,
                    v(2)?,
                    gpu.table_4bit(quant_type).clone(),
                    blocksize,
                    rows,
                    cols,
                );
                let (batch, _) = inputs[0].rows_cols();
                let b = if bias { Some(w(3)?.buffer) } else { None };
                self.linear_4bit(
                    name,
                    &w(0)?,
                    batch,
                    with_last_dim(&shape0, rows),
                    &wt,
                    b.as_ref(),
                )?
            }
            Op::LinearTernary {
                weight_scale,
                rows,
                cols,
                bias,
            } => {
                let wt = GpuPackedTernary::from_parts(v(1)?, weight_scale, rows, cols);
                let b = if bias { Some(w(2)?) } else { None };
                // The activation quantizer reads f16/bf16 itself: no widening.
                let y = self.ternary_linear_bias_resident(&v(0)?.into_matrix(), &wt, b.as_ref())?;
                y.with_shape(with_last_dim(&shape0, rows))
            }
            Op::RmsNorm { eps } => {
                let y = self.rms_norm_resident(&w(0)?.into_matrix(), &w(1)?, eps)?;
                y.with_shape(shape0)
            }
            Op::Softmax => {
                let y = self.softmax_resident(&w(0)?.into_matrix())?;
                y.with_shape(shape0)
            }
            Op::Narrow { start, len } => {
                if let Some(w) = self.window(inputs[0], start, len)? {
                    return Ok(w);
                }
                // Moved as stored: the result keeps x's dtype and bits.
                let x = self.materialized(name, inputs[0])?;
                let x = self.view(name, x.as_ref().unwrap_or(inputs[0]))?;
                let (rows, cols) = inputs[0].rows_cols();
                let y = self
                    .gpu()
                    .pooled((rows * len * x.dtype.size_in_bytes()) as u64)?;
                gpu.submit(|enc| {
                    mk::encode_narrow(gpu, enc, x.dtype, (rows, cols), start, len, &x.buffer, &y)
                })?;
                return self.wrap_owned(GpuTensor {
                    buffer: y,
                    shape: with_last_dim(&shape0, len),
                    dtype: x.dtype,
                });
            }
            Op::Cast { to } => {
                // From f32 to f32 the result is the operand itself: its storage, shared and kept alive by
                // the result (a buffer only borrowed would go back to the pool when the operand is dropped).
                if inputs[0].dtype() == DType::F32 && to == DType::F32 {
                    return Ok(inputs[0].clone());
                }
                let x = w(0)?;
                // A widened x is narrowed here: the narrowing gives it back, not the scratch list.
                let x_owned = !scratch.borrow_mut().is_empty();
                scratch.borrow_mut().clear();
                let y = self.narrowed(x, to, x_owned)?;
                return self.wrap_owned(y);
            }
            Op::Linear8bit {
                threshold,
                rows,
                cols,
                bias,
            } => {
                // Its output is f16 whatever x's dtype, as bitsandbytes' layer.
                return self.linear_8bit_on_device(&Int8LinearArgs {
                    x: inputs[0],
                    weight: inputs[1],
                    scb: inputs[2],
                    bias: bias.then(|| inputs[3]),
                    threshold,
                    rows,
                    cols,
                });
            }
            Op::Embedding => {
                let (vocab, dim) = (inputs[0].shape()[0], inputs[0].shape()[1]);
                let n = inputs[1].numel();
                let (t, ids) = (v(0)?, v(1)?);
                let y = self.f32_out(name, vec![n, dim])?;
                gpu.submit(|enc| {
                    mk::encode_embedding(
                        gpu,
                        enc,
                        t.dtype,
                        vocab,
                        dim,
                        n,
                        &t.buffer,
                        &ids.buffer,
                        &y.buffer,
                    )
                })?;
                y
            }
            Op::Rope {
                heads,
                head_dim,
                rotary_dim,
                pos_start,
                layout,
            } => {
                let dims = RopeDims {
                    tokens: shape0[0],
                    heads,
                    head_dim,
                    rotary_dim,
                    pos_start,
                    layout,
                };
                let (x, cos, sin) = (v(0)?, v(1)?, v(2)?);
                let y = self.f32_out(name, shape0)?;
                gpu.submit(|enc| {
                    mk::encode_rope(
                        gpu,
                        enc,
                        x.dtype,
                        &dims,
                        &x.buffer,
                        &cos.buffer,
                        &sin.buffer,
                        &y.buffer,
                    )
                })?;
                y
            }
            Op::SiluMul | Op::Relu2Mul | Op::Add => {
                let (a, b) = (
                    self.storage(name, inputs[0])?,
                    self.storage(name, inputs[1])?,
                );
                let dtype = inputs[0].dtype();
                let n = inputs[0].numel();
                let es = dtype.size_in_bytes() as u64;
                let ab = (&a.buffer, (a.offset / es) as usize);
                let bb = (&b.buffer, (b.offset / es) as usize);
                let y = self.f32_out(name, shape0)?;
                gpu.submit(|enc| {
                    let yb = &y.buffer;
                    match op {
                        Op::SiluMul => mk::encode_silu_mul(gpu, enc, dtype, n, ab, bb, yb),
                        Op::Relu2Mul => mk::encode_relu2_mul(gpu, enc, dtype, n, ab, bb, yb),
                        _ => mk::encode_add(gpu, enc, dtype, n, ab, bb, yb),
                    }
                })?;
                y
            }
            Op::Gelu { kind } => {
                let x = v(0)?;
                let n = x.numel();
                let y = self.f32_out(name, shape0)?;
                gpu.submit(|enc| {
                    mk::encode_gelu(gpu, enc, x.dtype, n, kind, &x.buffer, &y.buffer)
                })?;
                y
            }
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                kv_len,
                pos_start,
                scale,
            } => {
                let dims = AttentionDims {
                    nq: shape0[0],
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    kv_len,
                    pos_start,
                    scale,
                };
                let (q, k, vv) = (v(0)?, v(1)?, v(2)?);
                let y = self.f32_out(name, shape0)?;
                gpu.submit(|enc| {
                    mk::encode_attention(
                        gpu, enc, q.dtype, &dims, &q.buffer, &k.buffer, &vv.buffer, &y.buffer,
                    )
                })?;
                y
            }
        };
        // Every kernel above writes f32 into a new buffer; the result takes the first operand's dtype, as
        // on the CPU.
        let y = self.wrap_owned(self.narrowed(y, out_dtype, true)?)?;
        for b in scratch.into_inner() {
            gpu.recycle(b);
        }
        Ok(y)
    }

    pub(crate) fn write_rows_on_device(
        &self,
        dst: &DeviceTensor,
        row: usize,
        src: &DeviceTensor,
    ) -> Result<()> {
        let d = self.storage("copy_rows", dst)?;
        let s = self.storage("copy_rows", src)?;
        let row_bytes = dst.rows_cols_first().1 * dst.dtype().size_in_bytes();
        let bytes = src.size_in_bytes() as u64;
        let offset = d.offset + (row * row_bytes) as u64;
        if bytes == 0 {
            return Ok(());
        }
        // The copy kernel moves whole 4-byte words (every Llama-family cache row is: head_dim is even).
        if !bytes.is_multiple_of(4) || !offset.is_multiple_of(4) {
            return Err(Error::InvalidArgument {
                op: "copy_rows",
                detail: format!(
                    "rows of {row_bytes} bytes: the wgpu backend copies cache rows in whole 4-byte words"
                ),
            });
        }
        let gpu = self.gpu();
        gpu.submit(|enc| {
            mk::encode_copy_words(gpu, enc, (&s.buffer, s.offset), &d.buffer, offset, bytes)
        })
    }
}
