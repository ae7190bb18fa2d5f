//! A test-only backend that wraps the CPU backend and fails on purpose: transient failures, out-of-memory
//! above a size, permanent failure, or an unsupported op. It counts what it injected. It also runs
//! device-tensor ops (the CPU's, on tensors it owns) and can pretend to record steps (`Faults::record_steps`:
//! a recording stores the step's output, a replay hands it back), for `Device::recorded_step`'s protocol.
#![allow(dead_code)]

use half::f16;
use lowbit::Result;
use lowbit::backend::cpu::CpuBackend;
use lowbit::backend::cpu::storage::host_tensor;
use lowbit::backend::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use lowbit::capability::Op;
use lowbit::device_tensor::DeviceTensor;
use lowbit::format::{Codebook8, FourBitType};
use lowbit::runtime::{DeviceError, OpKind, OpParams, StepArgs, StepKey, Support};
use lowbit::tensor::{DType, FloatVec, Floats, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail this many calls with a transient error, then succeed.
    pub transient: u64,
    /// Fail every `n`-th call with a transient error (0 = never); for the multi-threaded test.
    pub transient_every: u64,
    /// Calls whose main input has more elements than this fail with out-of-memory.
    pub oom_above: Option<usize>,
    /// Every call fails with an operation error.
    pub permanent: bool,
    /// `supports` answers No for this op.
    pub unsupported: Option<OpKind>,
    /// Pretend to record steps: a key's second step is "recorded" (its output stored), later ones replay it.
    pub record_steps: bool,
    /// Recordings fail at their end.
    pub fail_recording: bool,
    /// Device ops fail while a step is being recorded.
    pub fail_ops_while_recording: bool,
}

pub struct Faulty {
    pub name: String,
    /// `name` as the device id of the tensors it owns.
    id: &'static str,
    pub faults: Faults,
    /// Calls that reached the backend.
    pub calls: AtomicU64,
    /// Failures injected, by kind.
    pub transient_injected: AtomicU64,
    pub oom_injected: AtomicU64,
    pub permanent_injected: AtomicU64,
    /// Main-input sizes of the calls that succeeded.
    pub sizes: Mutex<Vec<usize>>,
    steps: PretendSteps,
}

/// The pretend recorder's state.
#[derive(Default)]
struct PretendSteps {
    recording: AtomicBool,
    /// The key being recorded.
    active: Mutex<Option<StepKey>>,
    seen: Mutex<HashSet<StepKey>>,
    failed: Mutex<HashSet<StepKey>>,
    recorded: Mutex<HashMap<StepKey, Tensor>>,
}

impl Faulty {
    pub fn new(name: &str, faults: Faults) -> Faulty {
        Faulty {
            name: name.to_string(),
            // Tests make a handful of these.
            id: Box::leak(name.to_string().into_boxed_str()),
            faults,
            calls: AtomicU64::new(0),
            transient_injected: AtomicU64::new(0),
            oom_injected: AtomicU64::new(0),
            permanent_injected: AtomicU64::new(0),
            sizes: Mutex::new(Vec::new()),
            steps: PretendSteps::default(),
        }
    }

    fn own(&self, t: Tensor) -> Result<DeviceTensor> {
        host_tensor(t, self.id)
    }

    fn check(&self, op: &str, size: usize) -> Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.permanent {
            self.permanent_injected.fetch_add(1, Ordering::SeqCst);
            return Err(DeviceError::failed(&self.name, op, "injected permanent failure").into());
        }
        if call <= self.faults.transient
            || (self.faults.transient_every > 0 && call.is_multiple_of(self.faults.transient_every))
        {
            self.transient_injected.fetch_add(1, Ordering::SeqCst);
            return Err(DeviceError::transient(&self.name, op, "injected busy").into());
        }
        if self.faults.oom_above.is_some_and(|limit| size > limit) {
            self.oom_injected.fetch_add(1, Ordering::SeqCst);
            return Err(DeviceError::out_of_memory(&self.name, op, size as u64, None).into());
        }
        self.sizes.lock().unwrap().push(size);
        Ok(())
    }
}

impl Backend for Faulty {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn supports(&self, op: OpKind, _params: &OpParams) -> Support {
        if self.faults.unsupported == Some(op) {
            Support::No("injected: not implemented here".into())
        } else {
            Support::Yes
        }
    }
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.own(t.clone())
    }
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        CpuBackend.download(t)
    }
    fn supports_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        CpuBackend.supports_op(op, dtypes)
    }
    fn run_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        if self.faults.fail_ops_while_recording && self.recording() {
            let e = DeviceError::failed(&self.name, "run_op", "injected failure while recording");
            return Err(e.into());
        }
        self.check("run_op", inputs[0].numel())?;
        let y = CpuBackend.run_op(op, inputs)?;
        self.own(CpuBackend.download(&y)?)
    }
    fn step_replay(&self, key: StepKey, _args: &StepArgs) -> Result<Option<DeviceTensor>> {
        match self.steps.recorded.lock().unwrap().get(&key) {
            Some(t) => self.own(t.clone()).map(Some),
            None => Ok(None),
        }
    }
    fn step_record_begin(&self, key: StepKey, _args: &StepArgs) -> Result<bool> {
        let s = &self.steps;
        let go = self.faults.record_steps
            && s.seen.lock().unwrap().contains(&key)
            && !s.failed.lock().unwrap().contains(&key);
        if go {
            s.recording.store(true, Ordering::SeqCst);
            *s.active.lock().unwrap() = Some(key);
        }
        Ok(go)
    }
    fn step_record_end(&self, out: Result<DeviceTensor>) -> Result<DeviceTensor> {
        let s = &self.steps;
        s.recording.store(false, Ordering::SeqCst);
        let key = s
            .active
            .lock()
            .unwrap()
            .take()
            .expect("a recording was begun");
        let r = out.and_then(|y| {
            if self.faults.fail_recording {
                Err(DeviceError::failed(&self.name, "step", "injected recording failure").into())
            } else {
                Ok(y)
            }
        });
        match &r {
            Ok(y) => {
                s.recorded
                    .lock()
                    .unwrap()
                    .insert(key, CpuBackend.download(y)?);
            }
            Err(_) => {
                s.failed.lock().unwrap().insert(key);
            }
        }
        r
    }
    fn step_ran(&self, key: StepKey, _out: &DeviceTensor) {
        self.steps.seen.lock().unwrap().insert(key);
    }
    fn recording(&self) -> bool {
        self.steps.recording.load(Ordering::SeqCst)
    }
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        self.check("quantize_blockwise", x.len())?;
        CpuBackend.quantize_blockwise(x, code, blocksize)
    }
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        self.check("dequantize_blockwise", q.len())?;
        CpuBackend.dequantize_blockwise(q, absmax, code, blocksize, out_dtype)
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        self.check("quantize_4bit", x.len())?;
        CpuBackend.quantize_4bit(x, quant_type, blocksize)
    }
    fn dequantize_4bit(
        &self,
        packed: &[u8],
        absmax: &[f32],
        quant_type: FourBitType,
        blocksize: usize,
        n: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        self.check("dequantize_4bit", n)?;
        CpuBackend.dequantize_4bit(packed, absmax, quant_type, blocksize, n, out_dtype)
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        self.check("gemv_4bit", w.rows * w.cols)?;
        CpuBackend.gemv_4bit(x, w, bias)
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        self.check("matmul_4bit", x.len())?;
        CpuBackend.matmul_4bit(x, batch, w, bias)
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        self.check("int8_vectorwise_quant", a.len())?;
        CpuBackend.int8_vectorwise_quant(a, rows, cols, threshold)
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.check("int8_vectorwise_dequant", q.len())?;
        CpuBackend.int8_vectorwise_dequant(q, row_stats, cols)
    }
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        self.check("int8_linear_matmul", a.len())?;
        CpuBackend.int8_linear_matmul(a, b, m, n, k)
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        self.check("int8_mm_dequant", c.len())?;
        CpuBackend.int8_mm_dequant(c, row_stats, col_stats, bias)
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        self.check("ternary_quantize", w.len())?;
        CpuBackend.ternary_quantize(w, rows, cols, weight_scale)
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        self.check("ternary_act_quant", x.len())?;
        CpuBackend.ternary_act_quant(x, rows, cols)
    }
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>> {
        self.check("ternary_matmul", xq.len())?;
        CpuBackend.ternary_matmul(xq, x_scale, batch, w, bias)
    }
    fn matmul(
        &self,
        x: Floats,
        w: Floats,
        bias: Option<Floats>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<FloatVec> {
        self.check("matmul", x.len())?;
        CpuBackend.matmul(x, w, bias, m, n, k)
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        self.check("softmax", x.len())?;
        CpuBackend.softmax(x, cols)
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        self.check("rms_norm", x.len())?;
        CpuBackend.rms_norm(x, weight, eps, cols)
    }
}
