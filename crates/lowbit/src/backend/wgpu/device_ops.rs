//! The wgpu backend's device tensors: storage is a GPU buffer, ops are recorded and submitted without
//! waiting (a download waits), and `supports_op` says exactly which ops and dtypes have kernels here; the
//! runtime runs the rest on the CPU and counts it.

use super::WgpuBackend;
use super::tensor::{GpuPacked4bit, GpuPackedTernary, GpuTensor};
use crate::backend::Backend;
use crate::capability::{Op, Support};
use crate::device_tensor::{BackendStorage, DeviceTensor};
use crate::tensor::{DType, FloatVec, Tensor, TensorData};
use crate::{Error, Result};
use half::{bf16, f16};
use std::any::Any;
use std::sync::Arc;

/// A GPU buffer owned by one wgpu device.
pub struct GpuStorage {
    pub(crate) buffer: wgpu::Buffer,
    device: Arc<str>,
}

impl BackendStorage for GpuStorage {
    fn device_id(&self) -> &str {
        &self.device
    }
    fn size_in_bytes(&self) -> u64 {
        self.buffer.size()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn bytes_of(data: &TensorData) -> &[u8] {
    match data {
        TensorData::Float(FloatVec::F32(v)) => bytemuck::cast_slice(v),
        TensorData::Float(FloatVec::F16(v)) => bytemuck::cast_slice(v),
        TensorData::Float(FloatVec::BF16(v)) => bytemuck::cast_slice(v),
        TensorData::U8(v) => v,
        TensorData::I8(v) => bytemuck::cast_slice(v),
        TensorData::I32(v) => bytemuck::cast_slice(v),
        TensorData::I64(v) => bytemuck::cast_slice(v),
    }
}

fn data_from_bytes(dtype: DType, b: &[u8]) -> TensorData {
    match dtype {
        DType::F32 => TensorData::Float(FloatVec::F32(bytemuck::pod_collect_to_vec(b))),
        DType::F16 => TensorData::Float(FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(b))),
        DType::BF16 => {
            TensorData::Float(FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(b)))
        }
        DType::U8 => TensorData::U8(b.to_vec()),
        DType::I8 => TensorData::I8(bytemuck::pod_collect_to_vec(b)),
        DType::I32 => TensorData::I32(bytemuck::pod_collect_to_vec(b)),
        DType::I64 => TensorData::I64(bytemuck::pod_collect_to_vec(b)),
    }
}

impl WgpuBackend {
    fn storage<'a>(&self, op: &'static str, t: &'a DeviceTensor) -> Result<&'a GpuStorage> {
        match t.storage_as::<GpuStorage>() {
            Some(s) if s.device_id() == self.device_id() => Ok(s),
            _ => Err(Error::WrongDevice {
                op,
                got: t.device_id().to_string(),
                expected: self.device_id().to_string(),
            }),
        }
    }

    /// The resident-kernel view of a device tensor of this backend.
    fn view(&self, op: &'static str, t: &DeviceTensor) -> Result<GpuTensor> {
        Ok(GpuTensor {
            buffer: self.storage(op, t)?.buffer.clone(),
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        })
    }

    fn wrap(&self, t: GpuTensor) -> Result<DeviceTensor> {
        let storage = GpuStorage {
            buffer: t.buffer,
            device: self.device_id_arc(),
        };
        DeviceTensor::new(t.shape, t.dtype, Arc::new(storage))
    }

    pub(crate) fn upload_tensor(&self, t: &Tensor) -> Result<DeviceTensor> {
        let bytes = bytes_of(&t.data);
        super::kernels::check_binding(self.gpu(), "upload", bytes.len())?;
        let g = self.upload_raw(bytes, t.shape.clone(), t.dtype());
        self.wrap(g)
    }

    pub(crate) fn download_tensor(&self, t: &DeviceTensor) -> Result<Tensor> {
        let s = self.storage("download", t)?;
        let bytes = self.gpu().read(&s.buffer, t.size_in_bytes())?;
        Ok(Tensor {
            shape: t.shape().to_vec(),
            data: data_from_bytes(t.dtype(), &bytes),
        })
    }

    pub(crate) fn supports_device_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        let all_f32 = dtypes
            .iter()
            .enumerate()
            .all(|(i, d)| *d == DType::F32 || !float_operand(op, i));
        let ok = match op {
            Op::Linear { .. } | Op::RmsNorm { .. } | Op::Softmax | Op::Linear4bit { .. } => all_f32,
            // The activation quantizer reads f32, f16 and bf16; the rescale has no bias input.
            Op::LinearTernary { bias, .. } => !bias,
            _ => false,
        };
        if ok {
            Support::Yes
        } else {
            Support::No(format!(
                "no {} kernel for operands {dtypes:?} in the wgpu backend yet",
                op.kind().name()
            ))
        }
    }

    pub(crate) fn run_device_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        let name = op.kind().name();
        let v = |i: usize| self.view(name, inputs[i]);
        let y = match *op {
            Op::Linear { bias } => {
                let x = v(0)?.into_matrix();
                let b = if bias { Some(v(2)?.buffer) } else { None };
                let y = self.linear_f32(name, &x, &v(1)?, b.as_ref())?;
                y.with_shape(with_last(inputs[0].shape(), inputs[1].shape()[0]))
            }
            Op::Linear4bit {
                quant_type,
                blocksize,
                rows,
                cols,
                bias,
            } => {
                let w = GpuPacked4bit::from_parts(
                    v(1)?,
                    v(2)?,
                    self.gpu().table_4bit(quant_type).clone(),
                    blocksize,
                    rows,
                    cols,
                );
                let (batch, _) = inputs[0].rows_cols();
                let b = if bias { Some(v(3)?.buffer) } else { None };
                let shape = with_last(inputs[0].shape(), rows);
                self.linear_4bit(name, &v(0)?, batch, shape, &w, b.as_ref())?
            }
            Op::LinearTernary {
                weight_scale,
                rows,
                cols,
                ..
            } => {
                let w = GpuPackedTernary::from_parts(v(1)?, weight_scale, rows, cols);
                let x = v(0)?.into_matrix();
                let y = self.ternary_linear_resident(&x, &w)?;
                let y = y.with_shape(with_last(inputs[0].shape(), rows));
                if inputs[0].dtype() != DType::F32 {
                    // Output in x's dtype, as on the CPU: narrowed on the host until the cast kernel lands.
                    return self.narrow_via_host(y, inputs[0].dtype());
                }
                y
            }
            Op::RmsNorm { eps } => {
                let x = v(0)?.into_matrix();
                let y = self.rms_norm_resident(&x, &v(1)?, eps)?;
                y.with_shape(inputs[0].shape().to_vec())
            }
            Op::Softmax => {
                let x = v(0)?.into_matrix();
                let y = self.softmax_resident(&x)?;
                y.with_shape(inputs[0].shape().to_vec())
            }
            _ => return Err(self.unsupported(name, "no kernel in the wgpu backend")),
        };
        self.wrap(y)
    }

    fn narrow_via_host(&self, y: GpuTensor, dtype: DType) -> Result<DeviceTensor> {
        let t = self.download_tensor(&self.wrap(y)?)?;
        let f = match &t.data {
            TensorData::Float(f) => f.to_f32_vec(),
            _ => unreachable!("resident float kernels return f32"),
        };
        self.upload_tensor(&Tensor::from_floats(t.shape, FloatVec::from_f32(f, dtype)))
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
        let offset = (row * row_bytes) as u64;
        if bytes == 0 {
            return Ok(());
        }
        // Buffer copies move whole 4-byte words (every Llama-family cache row is: head_dim is even).
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
            enc.copy_buffer_to_buffer(&s.buffer, 0, &d.buffer, offset, bytes);
            Ok(())
        })
    }
}

/// Whether operand `i` of `op` is float data (not packed codes or scales).
fn float_operand(op: &Op, i: usize) -> bool {
    match op {
        Op::Linear4bit { .. } => i != 1 && i != 2,
        Op::LinearTernary { .. } => i != 1,
        _ => true,
    }
}

fn with_last(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    match s.last_mut() {
        Some(l) => *l = n,
        None => s.push(n),
    }
    s
}
