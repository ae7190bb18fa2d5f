//! Host memory as device-tensor storage: the CPU backend's tensors are host tensors behind a lock (written in
//! place only by `write_rows`, for KV caches).

use crate::device_tensor::{BackendStorage, DeviceTensor};
use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};
use std::any::Any;
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// The id of the host CPU device.
pub const CPU_ID: &str = "cpu";

#[derive(Debug)]
pub struct HostStorage {
    device: &'static str,
    data: RwLock<TensorData>,
    bytes: u64,
}

impl HostStorage {
    pub fn read(&self) -> RwLockReadGuard<'_, TensorData> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl BackendStorage for HostStorage {
    fn device_id(&self) -> &str {
        self.device
    }
    fn size_in_bytes(&self) -> u64 {
        self.bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Moves a host tensor into the storage of the host device `device` (no copy of the data).
pub fn host_tensor(t: Tensor, device: &'static str) -> Result<DeviceTensor> {
    let bytes = t.numel() as u64 * t.dtype().size_in_bytes() as u64;
    let dtype = t.dtype();
    let (shape, data) = t.into_parts();
    let storage = HostStorage {
        device,
        data: RwLock::new(data),
        bytes,
    };
    DeviceTensor::new(shape, dtype, Arc::new(storage))
}

/// The CPU storage of `t`, or a typed error when another device owns it.
pub fn host_storage<'a>(op: &'static str, t: &'a DeviceTensor) -> Result<&'a HostStorage> {
    t.storage_as::<HostStorage>().ok_or_else(|| {
        Error::shape(
            op,
            format!(
                "operand lives on {}, not on the CPU; move it with Device::to_device",
                t.device_id()
            ),
        )
    })
}

/// A copy of `t` as a host tensor.
pub fn to_host(t: &DeviceTensor) -> Result<Tensor> {
    let data = host_storage("download", t)?.read().clone();
    Tensor::new(t.shape().to_vec(), data)
}

/// Copies `src`'s rows into `dst` starting at `row` (validated by the op layer).
pub fn write_rows(dst: &DeviceTensor, row: usize, src: &DeviceTensor) -> Result<()> {
    let s = host_storage("copy_rows", src)?;
    let d = host_storage("copy_rows", dst)?;
    let row_len = dst.rows_cols_first().1;
    let start = row * row_len;
    let n = src.numel();
    // Copying a tensor into itself would deadlock on the lock; the op layer refuses aliasing operands.
    let src_data = s.read().clone();
    let mut dst_data = d.data.write().unwrap_or_else(|p| p.into_inner());
    macro_rules! copy {
        ($a:expr, $b:expr) => {{
            $a[start..start + n].copy_from_slice(&$b[..n]);
        }};
    }
    use crate::tensor::FloatVec as F;
    match (&mut *dst_data, &src_data) {
        (TensorData::Float(F::F32(a)), TensorData::Float(F::F32(b))) => copy!(a, b),
        (TensorData::Float(F::F16(a)), TensorData::Float(F::F16(b))) => copy!(a, b),
        (TensorData::Float(F::BF16(a)), TensorData::Float(F::BF16(b))) => copy!(a, b),
        (TensorData::U8(a), TensorData::U8(b)) => copy!(a, b),
        (TensorData::I8(a), TensorData::I8(b)) => copy!(a, b),
        (TensorData::I32(a), TensorData::I32(b)) => copy!(a, b),
        (TensorData::I64(a), TensorData::I64(b)) => copy!(a, b),
        _ => {
            return Err(Error::DType {
                op: "copy_rows",
                got: src.dtype().to_string(),
                expected: "the destination's dtype",
            });
        }
    }
    Ok(())
}
