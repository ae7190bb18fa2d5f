//! Device memory of the CUDA backend: one allocation per tensor (from the driver's stream-ordered pool, so
//! freed memory is reused without a device-wide synchronisation), addressed by raw 64-bit pointers in
//! kernel launches.

use super::context::Cuda;
use crate::Result;
use crate::device_tensor::{BackendStorage, DeviceTensor};
use crate::tensor::{DType, Floats, Tensor, TensorData};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::any::Any;
use std::sync::Arc;

/// A CUDA allocation owned by one device, or a window of one (which keeps its allocation alive).
pub struct CudaStorage {
    mem: Memory,
    bytes: u64,
    device: Arc<str>,
    addr: u64,
}

enum Memory {
    Owned(CudaSlice<u8>),
    /// `bytes` from `offset` of an owned allocation.
    View(Arc<CudaStorage>, usize),
}

impl BackendStorage for CudaStorage {
    fn device_id(&self) -> &str {
        &self.device
    }
    fn size_in_bytes(&self) -> u64 {
        self.bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One KV-cache row copy (`copy_rows_at`, `copy_rows_pair`): `bytes` of `src` into `dst`, whose rows are
/// `row_bytes` long.
pub struct RowCopy<'a> {
    pub src: &'a CudaStorage,
    pub dst: &'a CudaStorage,
    pub row_bytes: usize,
    pub bytes: usize,
}

impl RowCopy<'_> {
    const THREADS: u32 = 256;

    /// Blocks for `bytes` (a thread per 4-byte word, at most 1,024 blocks striding over the rest).
    fn grid(bytes: usize) -> u32 {
        bytes
            .div_ceil(4)
            .div_ceil(Self::THREADS as usize)
            .clamp(1, 1024) as u32
    }

    /// The kernels' `src, dst, row_bytes, bytes` parameters.
    fn args(&self) -> [super::context::Arg; 4] {
        use super::context::Arg;
        [
            Arg::Ptr(self.src.addr),
            Arg::Ptr(self.dst.addr),
            Arg::U64(self.row_bytes as u64),
            Arg::U64(self.bytes as u64),
        ]
    }
}

impl CudaStorage {
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// `bytes` from byte `offset` of `s`, sharing its memory (a view of a view points into the owner).
    pub fn view(s: &Arc<CudaStorage>, offset: usize, bytes: usize) -> Option<Arc<CudaStorage>> {
        if offset.checked_add(bytes)? as u64 > s.bytes {
            return None;
        }
        let (owner, base) = match &s.mem {
            Memory::Owned(_) => (s.clone(), 0),
            Memory::View(o, b) => (o.clone(), *b),
        };
        Some(Arc::new(CudaStorage {
            addr: s.addr + offset as u64,
            bytes: bytes as u64,
            device: s.device.clone(),
            mem: Memory::View(owner, base + offset),
        }))
    }

    /// The owning allocation and this storage's offset in it.
    fn owned(&self) -> (&CudaSlice<u8>, usize) {
        match &self.mem {
            Memory::Owned(b) => (b, 0),
            Memory::View(o, off) => match &o.mem {
                Memory::Owned(b) => (b, *off),
                // Views are made over owners only (`view`).
                Memory::View(..) => unreachable!("a view of a view"),
            },
        }
    }
}

/// The kernels' element-type code (`DT_*` in kernels/common.cuh).
pub fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    }
}

pub fn floats_bytes<'a>(x: &Floats<'a>) -> &'a [u8] {
    match *x {
        Floats::F32(v) => bytemuck::cast_slice(v),
        Floats::F16(v) => bytemuck::cast_slice(v),
        Floats::BF16(v) => bytemuck::cast_slice(v),
    }
}

impl Cuda {
    /// `bytes` of uninitialised device memory (the kernel that receives it writes every byte it covers).
    pub fn alloc(&self, op: &str, bytes: usize) -> Result<Arc<CudaStorage>> {
        // A zero-byte allocation is refused by the driver; one byte keeps every tensor addressable.
        // SAFETY: the memory is written by a kernel or a copy before anything reads it.
        let buf =
            unsafe { self.queue().alloc::<u8>(bytes.max(1)) }.map_err(|e| self.error(op, e))?;
        Ok(self.storage(buf, bytes))
    }

    fn storage(&self, buf: CudaSlice<u8>, bytes: usize) -> Arc<CudaStorage> {
        let addr = buf.device_ptr(&self.stream).0;
        Arc::new(CudaStorage {
            mem: Memory::Owned(buf),
            bytes: bytes as u64,
            device: self.id.clone(),
            addr,
        })
    }

    /// Copies host bytes to a new allocation (queued on the stream).
    pub fn upload_bytes(&self, op: &str, bytes: &[u8]) -> Result<Arc<CudaStorage>> {
        if let Some(ids) = self.step_upload(bytes)? {
            return Ok(ids);
        }
        if bytes.is_empty() {
            return self.alloc(op, 0);
        }
        let buf = self
            .stream
            .clone_htod(bytes)
            .map_err(|e| self.error(op, e))?;
        Ok(self.storage(buf, bytes.len()))
    }

    pub fn upload_f32(&self, op: &str, v: &[f32]) -> Result<Arc<CudaStorage>> {
        self.upload_bytes(op, bytemuck::cast_slice(v))
    }

    /// The first `bytes` bytes of an allocation, after the queued work that writes it.
    pub fn download_bytes(&self, op: &str, s: &CudaStorage, bytes: usize) -> Result<Vec<u8>> {
        self.check_not_recording(op)?;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; bytes];
        let (buf, offset) = s.owned();
        let view = buf.slice(offset..offset + bytes);
        self.stream
            .memcpy_dtoh(&view, &mut out)
            .map_err(|e| self.error(op, e))?;
        self.synchronize()?;
        Ok(out)
    }

    pub fn download_f32(&self, op: &str, s: &CudaStorage, n: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.download_bytes(
            op,
            s,
            n * 4,
        )?))
    }

    pub fn upload_tensor(&self, t: &Tensor) -> Result<DeviceTensor> {
        let s = self.upload_bytes("upload", t.data().as_bytes())?;
        DeviceTensor::new(t.shape().to_vec(), t.dtype(), s)
    }

    pub fn download_tensor(&self, s: &CudaStorage, t: &DeviceTensor) -> Result<Tensor> {
        let b = self.download_bytes("download", s, t.size_in_bytes())?;
        Tensor::new(t.shape().to_vec(), TensorData::from_bytes(t.dtype(), &b))
    }

    /// Both copies of `pairs` (a KV cache's keys and values) in one launch: `bytes` of each `src` to row
    /// `row` (plus the recorded step's position read from `step`, when not 0) of its `dst`.
    pub fn copy_rows_pair(&self, pairs: &[RowCopy; 2], row: usize, step: u64) -> Result<()> {
        use super::context::Arg;
        let row = u32::try_from(row).map_err(|_| {
            crate::Error::invalid("copy_rows", format!("row {row} does not fit 32 bits"))
        })?;
        let mut args = Vec::with_capacity(10);
        args.extend(pairs[0].args());
        args.extend(pairs[1].args());
        args.extend([Arg::U32(row), Arg::Ptr(step)]);
        let grid = RowCopy::grid(pairs[0].bytes.max(pairs[1].bytes));
        self.launch("copy_rows_pair", (grid, 2), RowCopy::THREADS, &args)
    }

    /// Copies `c.bytes` from `c.src` to the row of `c.dst` at a recorded step's position, which the kernel
    /// reads from `step` (the step's arguments buffer).
    pub fn copy_rows_at(&self, c: &RowCopy, step: u64) -> Result<()> {
        use super::context::Arg;
        let args = [&c.args()[..], &[Arg::U32(0), Arg::Ptr(step)]].concat();
        self.launch(
            "copy_rows_at",
            (RowCopy::grid(c.bytes), 1),
            RowCopy::THREADS,
            &args,
        )
    }

    /// Copies `bytes` from `src` to `dst + offset` on the stream.
    pub fn copy(
        &self,
        src: &CudaStorage,
        dst: &CudaStorage,
        offset: usize,
        bytes: usize,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // The raw driver call needs this device's context current on the calling thread.
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.error("copy_rows", e))?;
        // SAFETY: both are live allocations of this context; the op layer checked that `offset + bytes`
        // lies inside `dst` and `bytes` inside `src`; the copy is ordered on the one stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.addr + offset as u64,
                src.addr,
                bytes,
                self.queue().cu_stream(),
            )
        }
        .map_err(|e| self.error("copy_rows", e))
    }
}
