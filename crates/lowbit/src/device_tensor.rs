//! Tensors whose data lives on a device. A [`DeviceTensor`] is a shape, a dtype and storage owned by one
//! backend (host memory for the CPU, a GPU buffer for wgpu, device memory for CUDA). Ops on a
//! [`Device`](crate::Device) take and return them, so a chain of ops never leaves the device; data moves only
//! through `Device::to_device` / `Device::to_host`.
//!
//! Storage is a trait object, as in ggml-backend's buffers: this module knows nothing of any backend, each
//! backend implements [`BackendStorage`] for its own memory and downcasts what it is given. The constructor
//! checks that the storage holds the bytes the shape claims, so kernels (GPU shaders run without injected
//! bounds checks) can trust every tensor they receive.

use crate::tensor::DType;
use crate::{Error, Result};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Memory owned by one backend on one device.
pub trait BackendStorage: Any + Send + Sync {
    /// The device that owns it (`cpu`, `vulkan:0`, ...): ops refuse operands of another device.
    fn device_id(&self) -> &str;
    /// Bytes allocated; at least what the tensor's shape needs.
    fn size_in_bytes(&self) -> u64;
    /// For the owning backend to downcast to its own storage type.
    fn as_any(&self) -> &dyn Any;
}

/// A tensor on a device: row-major `shape`, element type `dtype`, shared storage. Cloning shares the storage.
#[derive(Clone)]
pub struct DeviceTensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Arc<dyn BackendStorage>,
}

impl fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTensor")
            .field("device", &self.storage.device_id())
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// `shape`'s element count times `dtype`'s size, `None` on overflow.
pub fn checked_bytes(shape: &[usize], dtype: DType) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |a, &d| a.checked_mul(d))
}

impl DeviceTensor {
    /// A tensor over `storage`, which must hold at least the bytes `shape` and `dtype` need.
    pub fn new(
        shape: Vec<usize>,
        dtype: DType,
        storage: Arc<dyn BackendStorage>,
    ) -> Result<DeviceTensor> {
        match checked_bytes(&shape, dtype) {
            Some(b) if b as u64 <= storage.size_in_bytes() => Ok(DeviceTensor {
                shape,
                dtype,
                storage,
            }),
            Some(b) => Err(Error::shape(
                "device tensor",
                format!(
                    "shape {shape:?} of {dtype} needs {b} bytes but the storage on {} holds {}",
                    storage.device_id(),
                    storage.size_in_bytes()
                ),
            )),
            None => Err(Error::shape(
                "device tensor",
                format!("shape {shape:?} of {dtype} overflows the address space"),
            )),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes the shape covers (the storage may be larger).
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }
    pub fn device_id(&self) -> &str {
        self.storage.device_id()
    }
    pub fn storage(&self) -> &Arc<dyn BackendStorage> {
        &self.storage
    }
    /// The storage as the backend type `S`, `None` if another backend owns it.
    pub fn storage_as<S: BackendStorage>(&self) -> Option<&S> {
        self.storage.as_any().downcast_ref::<S>()
    }

    /// The storage as backend type `S` of device `device`; anything else is `op`'s wrong-device error.
    pub fn storage_on<S: BackendStorage>(&self, op: &'static str, device: &str) -> Result<&S> {
        match self.storage_as::<S>() {
            Some(s) if s.device_id() == device => Ok(s),
            _ => Err(self.wrong_device(op, device)),
        }
    }

    /// Shared ownership of [`storage_on`](Self::storage_on)'s storage (for work that outlives the borrow).
    pub fn storage_arc_on<S: BackendStorage>(
        &self,
        op: &'static str,
        device: &str,
    ) -> Result<Arc<S>> {
        self.storage_on::<S>(op, device)?;
        let any: Arc<dyn Any + Send + Sync> = self.storage.clone();
        any.downcast::<S>()
            .map_err(|_| self.wrong_device(op, device))
    }

    fn wrong_device(&self, op: &'static str, device: &str) -> Error {
        Error::WrongDevice {
            op,
            got: self.device_id().to_string(),
            expected: device.to_string(),
        }
    }

    /// The same storage under another shape with the same element count (no copy).
    pub fn reshape(&self, shape: Vec<usize>) -> Result<DeviceTensor> {
        let n: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} elements) as {shape:?}",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        DeviceTensor::new(shape, self.dtype, self.storage.clone())
    }

    /// `[rows, cols]` of a matrix, a vector counting as one row and a higher-rank tensor as its rows of the
    /// last dimension.
    pub fn rows_cols(&self) -> (usize, usize) {
        crate::tensor::split_last_dim(&self.shape)
    }

    /// `[rows, row_len]` counting rows along the first dimension (a KV cache's positions).
    pub fn rows_cols_first(&self) -> (usize, usize) {
        match self.shape.split_first() {
            Some((&r, rest)) => (r, rest.iter().product()),
            None => (1, 1),
        }
    }
}
