//! `Device::recorded_step`'s protocol, with a backend that pretends to record (the CPU's ops, stored outputs
//! as "recordings"): a key's first step runs op by op, the second is recorded, later ones replay without
//! running the step; a recording that fails is logged, counted as a fallback of `step`, never retried for
//! that key, and the step then runs op by op from the same state; while recording, a failing op neither
//! retries nor falls back to the CPU (nothing can wait or read back inside a recording). CUDA's real
//! recordings (graphs) are tested in tests/model_logits.rs against op-by-op steps on the H200.

use half::f16;
use lowbit::Device;
use lowbit::Result;
use lowbit::backend::cpu::CpuBackend;
use lowbit::backend::cpu::storage::host_tensor;
use lowbit::backend::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use lowbit::capability::Op;
use lowbit::device_tensor::DeviceTensor;
use lowbit::format::{Codebook8, FourBitType};
use lowbit::runtime::{DeviceError, OpKind, RecoveryPolicy, StepArgs, StepKey, StepRun, Support};
use lowbit::tensor::{DType, FloatVec, Floats, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Recorder {
    id: &'static str,
    /// Recordings fail at their end.
    fail_end: bool,
    /// Ops fail while recording.
    fail_ops_recording: bool,
    recording: AtomicBool,
    /// The key being recorded.
    active: Mutex<Option<StepKey>>,
    seen: Mutex<HashSet<StepKey>>,
    failed: Mutex<HashSet<StepKey>>,
    recorded: Mutex<HashMap<StepKey, Tensor>>,
}

impl Recorder {
    fn new(id: &'static str, fail_end: bool, fail_ops_recording: bool) -> Recorder {
        Recorder {
            id,
            fail_end,
            fail_ops_recording,
            recording: AtomicBool::new(false),
            active: Mutex::default(),
            seen: Mutex::default(),
            failed: Mutex::default(),
            recorded: Mutex::default(),
        }
    }
    fn on_this_device(&self, t: Tensor) -> Result<DeviceTensor> {
        host_tensor(t, self.id)
    }
}

impl Backend for Recorder {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        self.id.to_string()
    }
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.on_this_device(t.clone())
    }
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        CpuBackend.download(t)
    }
    fn supports_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        CpuBackend.supports_op(op, dtypes)
    }
    fn run_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        if self.fail_ops_recording && self.recording.load(Ordering::SeqCst) {
            return Err(
                DeviceError::failed(self.id, "run_op", "injected failure while recording").into(),
            );
        }
        let y = CpuBackend.run_op(op, inputs)?;
        self.on_this_device(CpuBackend.download(&y)?)
    }
    fn step_replay(&self, key: StepKey, _args: &StepArgs) -> Result<Option<DeviceTensor>> {
        match self.recorded.lock().unwrap().get(&key) {
            Some(t) => self.on_this_device(t.clone()).map(Some),
            None => Ok(None),
        }
    }
    fn step_record_begin(&self, key: StepKey, _args: &StepArgs) -> Result<bool> {
        let go =
            self.seen.lock().unwrap().contains(&key) && !self.failed.lock().unwrap().contains(&key);
        if go {
            self.recording.store(true, Ordering::SeqCst);
            *self.active.lock().unwrap() = Some(key);
        }
        Ok(go)
    }
    fn step_record_end(&self, out: Result<DeviceTensor>) -> Result<DeviceTensor> {
        self.recording.store(false, Ordering::SeqCst);
        let key = self
            .active
            .lock()
            .unwrap()
            .take()
            .expect("a recording was begun");
        let r = out.and_then(|y| {
            if self.fail_end {
                Err(DeviceError::failed(self.id, "step", "injected recording failure").into())
            } else {
                Ok(y)
            }
        });
        match &r {
            Ok(y) => {
                self.recorded
                    .lock()
                    .unwrap()
                    .insert(key, CpuBackend.download(y)?);
            }
            Err(_) => {
                self.failed.lock().unwrap().insert(key);
            }
        }
        r
    }
    fn step_ran(&self, key: StepKey, _out: &DeviceTensor) {
        self.seen.lock().unwrap().insert(key);
    }
    fn recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
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
        CpuBackend.dequantize_blockwise(q, absmax, code, blocksize, out_dtype)
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
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
        CpuBackend.dequantize_4bit(packed, absmax, quant_type, blocksize, n, out_dtype)
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        CpuBackend.gemv_4bit(x, w, bias)
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        CpuBackend.matmul_4bit(x, batch, w, bias)
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        CpuBackend.int8_vectorwise_quant(a, rows, cols, threshold)
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
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
        CpuBackend.int8_linear_matmul(a, b, m, n, k)
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        CpuBackend.int8_mm_dequant(c, row_stats, col_stats, bias)
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        CpuBackend.ternary_quantize(w, rows, cols, weight_scale)
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
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
        CpuBackend.matmul(x, w, bias, m, n, k)
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        CpuBackend.softmax(x, cols)
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        CpuBackend.rms_norm(x, weight, eps, cols)
    }
}

fn device(r: Recorder) -> Device {
    Device::from_backend(Arc::new(r)).with_policy(RecoveryPolicy::default())
}

/// Runs one step (`x + pos`, the state it reads reset by the step itself) and returns its value and how it ran.
fn step(dev: &Device, key: u64, pos: usize, x: &DeviceTensor, runs: &mut u32) -> (f32, StepRun) {
    let args = StepArgs {
        pos,
        tokens: vec![7],
    };
    let (y, how) = dev
        .recorded_step(StepKey(key), &args, &mut || {
            *runs += 1;
            let p = dev.to_device(&Tensor::f32(vec![4], vec![pos as f32; 4])?)?;
            dev.add(x, &p)
        })
        .unwrap();
    (
        dev.to_host(&y).unwrap().floats("t").unwrap().to_f32_vec()[0],
        how,
    )
}

#[test]
fn first_step_runs_op_by_op_second_is_recorded_then_replayed() {
    let dev = device(Recorder::new("recorder-ok", false, false));
    let x = dev
        .to_device(&Tensor::f32(vec![4], vec![1.0; 4]).unwrap())
        .unwrap();
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs), (4.0, StepRun::OpByOp));
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::Recorded));
    // The pretend recording replays its stored output; a real one recomputes from the new arguments.
    assert_eq!(step(&dev, 1, 5, &x, &mut runs).1, StepRun::Replayed);
    assert_eq!(runs, 2, "a replay must not run the step");
    // Another key starts over.
    assert_eq!(step(&dev, 2, 9, &x, &mut runs), (10.0, StepRun::OpByOp));
    let s = dev.stats().op(OpKind::Step);
    assert_eq!((s.runs, s.fallbacks, s.failures), (4, 0, 0));
}

#[test]
fn a_failed_recording_is_counted_and_the_step_runs_op_by_op_from_the_same_state() {
    let dev = device(Recorder::new("recorder-fails", true, false));
    let x = dev
        .to_device(&Tensor::f32(vec![4], vec![1.0; 4]).unwrap())
        .unwrap();
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs), (4.0, StepRun::OpByOp));
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::OpByOp));
    assert_eq!(runs, 3, "the failed recording's step runs again op by op");
    // The key is not recorded again.
    assert_eq!(step(&dev, 1, 5, &x, &mut runs), (6.0, StepRun::OpByOp));
    assert_eq!(runs, 4);
    let s = dev.stats().op(OpKind::Step);
    assert_eq!((s.runs, s.fallbacks, s.failures), (3, 1, 0));
    assert_eq!(s.errors.values().sum::<u64>(), 1);
}

#[test]
fn ops_that_fail_while_recording_neither_retry_nor_fall_back() {
    let dev = device(Recorder::new("recorder-op-fails", false, true));
    let x = dev
        .to_device(&Tensor::f32(vec![4], vec![1.0; 4]).unwrap())
        .unwrap();
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs).1, StepRun::OpByOp);
    // Recording: the add fails and is not run on the CPU; the step then runs op by op and succeeds.
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::OpByOp));
    let add = dev.stats().op(OpKind::Add);
    assert_eq!((add.fallbacks, add.retries, add.failures), (0, 0, 1));
    assert_eq!(dev.stats().op(OpKind::Step).fallbacks, 1);
}
