//! The contract between the op API and the kernels: one trait, one method per kernel. A backend receives
//! inputs the op layer has already validated (shapes, dtypes, block sizes), so kernels check nothing twice.
//! Quantization kernels must return the same bytes on every backend; float kernels must stay within the
//! tolerances documented in `docs/ARCHITECTURE.md`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::Result;
use crate::capability::{
    DeviceError, DeviceInfo, DeviceType, Op, OpKind, OpParams, StepArgs, StepKey, Support,
};
use crate::device_tensor::DeviceTensor;
use crate::format::{Codebook8, FourBitType};
use crate::tensor::Tensor;
use crate::tensor::{DType, FloatVec, Floats};
use half::f16;

/// A packed 4-bit weight `[rows, cols]` (quantized flat, row-major) with its float32 block scales.
#[derive(Clone, Copy, Debug)]
pub struct Packed4bit<'a> {
    pub packed: &'a [u8],
    /// One float32 absmax per block (double quantization already expanded by the op layer).
    pub absmax: &'a [f32],
    pub quant_type: FourBitType,
    pub blocksize: usize,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// A ternary weight in transformers' 2-bit packing: `[ceil(rows/4), cols]` bytes.
#[derive(Clone, Copy, Debug)]
pub struct PackedTernary<'a> {
    pub packed: &'a [u8],
    pub weight_scale: f32,
    pub rows: usize,
    pub cols: usize,
}

/// Result of `int8_vectorwise_quant`.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    pub q: Vec<i8>,
    pub row_stats: Vec<f32>,
    /// Sorted column indices holding an outlier; `None` when the threshold is 0.
    pub outlier_cols: Option<Vec<i64>>,
}

/// The columns a GPU's per-column outlier flags (one u32 per column, nonzero = outlier) mark, ascending.
pub fn outlier_columns(flags: &[u32]) -> impl Iterator<Item = usize> + '_ {
    flags
        .iter()
        .enumerate()
        .filter(|(_, f)| **f != 0)
        .map(|(c, _)| c)
}

/// Result of the blockwise quantizers: codes (8-bit values or packed nibbles) and float32 block absmax.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockCodes {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
}

/// What a backend is: used for statistics, logs and device selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

/// One method per kernel. Every method takes validated host data; a backend that cannot run a kernel returns
/// an error and the runtime decides what to do (retry, split, fall back).
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    fn name(&self) -> String;

    /// What this backend runs on. The default describes a device with every op and unknown limits (test
    /// backends); the CPU backend describes the host, GPU backends their adapter.
    fn info(&self) -> DeviceInfo {
        let name = self.name();
        let (backend, ty) = match self.kind() {
            BackendKind::Cpu => ("cpu", DeviceType::Cpu),
            BackendKind::Wgpu => ("wgpu", DeviceType::Other),
            BackendKind::Cuda => ("cuda", DeviceType::DiscreteGpu),
        };
        DeviceInfo::new(name.clone(), backend, name, ty).with_all_ops()
    }

    /// Whether this backend can run `op` with `params` (dtype, block size, format). The runtime asks before
    /// every dispatch; `No` leads to a CPU fallback or, in strict mode, a capability error.
    fn supports(&self, _op: OpKind, _params: &OpParams) -> Support {
        Support::Yes
    }

    // ---- Device tensors: memory this backend owns and ops that take and return it. ----
    // The defaults say "not here": a backend implements what it accelerates, and the runtime routes every
    // other op to the CPU (counted, logged) or, in strict mode, returns the capability error.

    /// Copies a host tensor into this backend's memory.
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        let _ = t;
        Err(self.unsupported("upload", "this backend has no device memory"))
    }
    /// Copies one of this backend's tensors back to the host, after the queued work that writes it.
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        let _ = t;
        Err(self.unsupported("download", "this backend has no device memory"))
    }
    /// Whether [`run_op`](Backend::run_op) runs `op` on operands of these dtypes (in operand order).
    fn supports_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        let _ = (op, dtypes);
        Support::No("this backend runs no device-tensor ops".into())
    }
    /// Queues `op` on validated operands of this backend and returns its output tensor; the work may still
    /// be in flight (a later download waits for it).
    fn run_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        let _ = inputs;
        Err(self.unsupported(op.kind().name(), "this backend runs no device-tensor ops"))
    }
    /// Copies `src [n, ..]` into rows `row..row + n` of `dst` (same dtype and row size), in place: how a KV
    /// cache grows without reallocating.
    fn write_rows(&self, dst: &DeviceTensor, row: usize, src: &DeviceTensor) -> Result<()> {
        let _ = (dst, row, src);
        Err(self.unsupported("copy_rows", "this backend has no device memory"))
    }
    /// Writes `src[i]` into rows `row..` of `dst[i]` for both pairs (a KV cache's keys and values appended
    /// together, validated as [`write_rows`](Backend::write_rows)); a backend that does both in one launch
    /// overrides it.
    fn write_rows_pair(
        &self,
        dst: [&DeviceTensor; 2],
        row: usize,
        src: [&DeviceTensor; 2],
    ) -> Result<()> {
        self.write_rows(dst[0], row, src[0])?;
        self.write_rows(dst[1], row, src[1])
    }
    /// Waits until all queued work has finished.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ---- Recorded steps (`capability::step`): the defaults record nothing, so every step runs op by op. ----

    /// Replays the recording of step `key` at `args` and returns its output; `None` when there is none.
    fn step_replay(&self, key: StepKey, args: &StepArgs) -> Result<Option<DeviceTensor>> {
        let _ = (key, args);
        Ok(None)
    }
    /// Starts recording step `key` (the ops queued until [`step_record_end`](Backend::step_record_end) are
    /// recorded, not run) when this backend records steps and has seen `key` run op by op once; `false`
    /// means "run it op by op".
    fn step_record_begin(&self, key: StepKey, args: &StepArgs) -> Result<bool> {
        let _ = (key, args);
        Ok(false)
    }
    /// Ends the recording with the step's output (or the error that stopped it), runs the recording once
    /// and returns its output. An error leaves nothing recorded for the key, which then runs op by op.
    fn step_record_end(&self, out: Result<DeviceTensor>) -> Result<DeviceTensor> {
        out
    }
    /// Notes that step `key` ran op by op with output `out` (the size a recording's output will have).
    fn step_ran(&self, key: StepKey, out: &DeviceTensor) {
        let _ = (key, out);
    }
    /// Whether this thread's ops are being recorded: they must not fail over to another device or wait
    /// for the device (nothing runs until the recording does).
    fn recording(&self) -> bool {
        false
    }
    /// The capability error for an op this backend does not run.
    fn unsupported(&self, op: &str, reason: &str) -> crate::Error {
        crate::Error::Device(DeviceError::unsupported(&self.info().id, op, reason))
    }

    /// 8-bit blockwise quantization with `code` (FORMATS.md §2).
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes>;
    /// `out[i] = code[q[i]] * absmax[i / blocksize]` in `out_dtype`.
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec>;
    /// NF4/FP4 quantization and packing (FORMATS.md §3). Codes are `ceil(n/2)` packed bytes.
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes>;
    /// Dequantizes `n` values.
    fn dequantize_4bit(
        &self,
        packed: &[u8],
        absmax: &[f32],
        quant_type: FourBitType,
        blocksize: usize,
        n: usize,
        out_dtype: DType,
    ) -> Result<FloatVec>;
    /// Batch-1 fused 4-bit GEMV: `y = W x + bias`, never materialising the dequantized W. Output in x's dtype.
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec>;
    /// `y[batch, rows] = x[batch, cols] @ dequant(W)^T + bias`. Output in x's dtype.
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec>;
    /// LLM.int8() row-wise quantization with outlier threshold (0 = none).
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows>;
    /// `q * row_stats / 127` as float32.
    fn int8_vectorwise_dequant(&self, q: &[i8], row_stats: &[f32], cols: usize)
    -> Result<Vec<f32>>;
    /// Exact `A[m,k] @ B[n,k]^T` in i32.
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>>;
    /// `f16(fma(C * row * col, 6.200012e-05, bias))` (FORMATS.md §7).
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>>;
    /// Ternarizes `w [rows, cols]` with `weight_scale` and packs it (FORMATS.md §9).
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>>;
    /// Per-token int8 activations and their scales.
    fn ternary_act_quant(&self, x: Floats, rows: usize, cols: usize)
    -> Result<(Vec<i8>, Vec<f32>)>;
    /// `y = (xq @ unpack(W)^T) / (x_scale * weight_scale) (+ bias)`, exact i32 accumulation, f32 output.
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>>;
    /// `y[m, n] = x[m, k] @ w[n, k]^T + bias` (nn.Linear layout). Output in x's dtype.
    fn matmul(
        &self,
        x: Floats,
        w: Floats,
        bias: Option<Floats>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<FloatVec>;
    /// Numerically stable softmax over the last dimension.
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec>;
    /// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec>;
}
