//! [`Device`]: one backend plus the policy that runs ops on it. [`Device::run`] and friends are the single
//! place where validation against capabilities and memory, retries, chunking, CPU fallback and statistics
//! happen; the op layer only describes the op ([`OpParams`]) and how to run a range of it.

use super::join::{Join, chunks};
use super::memory::{self, Limits, Plan};
use super::policy::RecoveryPolicy;
use super::stats::{self, DeviceStats, DeviceStatsSnapshot, OpStats};
use super::{OpKind, discovery};
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::cpu::device_ops::{HostView, ModelKernels, run_host_op};
use crate::capability::DeviceError;
use crate::capability::Op;
use crate::capability::{DeviceInfo, DeviceType, OpParams, StepArgs, StepKey, StepRun, Support};
use crate::device_tensor::DeviceTensor;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Runs an op (or a consecutive range of its units) on a backend.
type RangeFn<'a, T> = dyn Fn(&dyn Backend, Range<usize>) -> Result<T> + 'a;

/// A device ops run on. Cheap to clone; `Send + Sync`. Calling ops on another `Device` value is the per-call
/// override of the process default.
#[derive(Clone)]
pub struct Device {
    backend: Arc<dyn Backend>,
    info: Arc<DeviceInfo>,
    policy: RecoveryPolicy,
    stats: Arc<DeviceStats>,
    /// The host CPU itself: nothing to fall back to, and host memory is not a device budget.
    host_cpu: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.info.id)
            .field("backend", &self.backend.name())
            .field("policy", &self.policy)
            .finish()
    }
}

/// The policy from the environment; a bad value is reported once and the defaults are used (the constructors
/// that cannot fail use this; [`Device::open`] returns the error instead).
fn env_policy_or_default() -> RecoveryPolicy {
    RecoveryPolicy::from_env().unwrap_or_else(|e| {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| tracing::warn!("{e}; using the default recovery policy"));
        RecoveryPolicy::default()
    })
}

impl Device {
    /// The CPU, always available.
    pub fn cpu() -> Device {
        Device::with_info(
            Arc::new(CpuBackend),
            discovery::cpu_info(),
            env_policy_or_default(),
        )
    }

    /// A device over any backend (GPU backends, test backends); its id is `backend.info().id`.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Device {
        let info = backend.info();
        Device::with_info(backend, info, env_policy_or_default())
    }

    pub(crate) fn with_info(
        backend: Arc<dyn Backend>,
        info: DeviceInfo,
        policy: RecoveryPolicy,
    ) -> Device {
        let host_cpu = info.device_type == DeviceType::Cpu;
        Device {
            stats: stats::for_device(&info.id),
            backend,
            info: Arc::new(info),
            policy,
            host_cpu,
        }
    }

    /// The same device with another recovery policy (statistics stay shared).
    pub fn with_policy(mut self, policy: RecoveryPolicy) -> Device {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> &RecoveryPolicy {
        &self.policy
    }

    /// `cpu`, `vulkan:0`, ...
    pub fn id(&self) -> &str {
        &self.info.id
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn name(&self) -> String {
        self.backend.name()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// This device's statistics (shared by every `Device` value with the same id).
    pub fn stats(&self) -> DeviceStatsSnapshot {
        self.stats.snapshot(&self.info.id)
    }

    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// Runs one kernel that cannot be split, with no memory estimate.
    pub fn run<T>(&self, op: OpKind, f: impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        self.execute(&OpParams::new(op), None, &|b, _| f(b))
    }

    /// Runs one kernel that cannot be split, checked against `params` (capabilities, memory).
    pub fn run_with<T>(
        &self,
        params: &OpParams,
        f: impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        self.execute(params, None, &|b, _| f(b))
    }

    /// Runs one kernel over `0..params.memory.units` units; `f` runs any consecutive range of them, and the
    /// runtime may call it on chunks (memory budget, out-of-memory) and join the results.
    pub fn run_split<T: Join>(
        &self,
        params: &OpParams,
        f: impl Fn(&dyn Backend, Range<usize>) -> Result<T>,
    ) -> Result<T> {
        self.execute(params, Some(T::join), &f)
    }

    fn execute<T>(
        &self,
        params: &OpParams,
        join: Option<fn(Vec<T>) -> T>,
        f: &RangeFn<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut call = OpStats {
            runs: 1,
            ..Default::default()
        };
        let result = match self.backend.supports(params.op, params) {
            Support::No(reason) => {
                let e = Error::Device(DeviceError::unsupported(
                    &self.info.id,
                    params.op.name(),
                    reason,
                ));
                note_error(&mut call, &e);
                Err(e)
            }
            Support::Yes => self.on_device(params, join, f, &mut call),
        };
        let result = match result {
            Ok(v) => Ok(v),
            Err(e) => self.recover(params, f, e, &mut call),
        };
        call.failures = u64::from(result.is_err());
        call.total_ns = start.elapsed().as_nanos() as u64;
        self.stats.record(params.op, &call);
        result
    }

    /// What one op may use here: the policy's budget, and for devices other than the host CPU their memory
    /// and largest buffer.
    fn limits(&self) -> Limits {
        let mut limits = Limits {
            total: self.policy.memory_limit,
            buffer: None,
        };
        if !self.host_cpu {
            let device_mem = self.info.available_memory.or(self.info.total_memory);
            limits.total = min_opt(limits.total, device_mem);
            limits.buffer = min_opt(self.info.max_buffer_size, self.info.max_storage_binding);
        }
        limits
    }

    fn on_device<T>(
        &self,
        params: &OpParams,
        join: Option<fn(Vec<T>) -> T>,
        f: &RangeFn<T>,
        call: &mut OpStats,
    ) -> Result<T> {
        let est = &params.memory;
        let units = est.units;
        let splittable = join.is_some() && units > 1;
        let min_units = if splittable {
            memory::min_units(est, self.policy.min_chunk_bytes)
        } else {
            units
        };
        let limits = self.limits();
        let chunk = match memory::plan(est, &limits, splittable, min_units) {
            Plan::Whole => units,
            Plan::Chunks(c) => {
                self.warn_once(params.op, "memory budget", || {
                    format!(
                        "needs {} bytes, over the limit of {}; running it in chunks of {c} of {units} units",
                        est.total(units),
                        limits.total.or(limits.buffer).unwrap_or(0)
                    )
                });
                c
            }
            Plan::TooBig { needed } => {
                let e = Error::Device(DeviceError::out_of_memory(
                    &self.info.id,
                    params.op.name(),
                    needed,
                    limits.total,
                ));
                note_error(call, &e);
                return Err(e);
            }
        };
        let mut parts = Vec::new();
        for range in chunks(units, chunk) {
            self.run_range(params.op, range, splittable, min_units, f, &mut parts, call)?;
        }
        if parts.len() > 1 {
            call.chunked_runs = 1;
            call.chunks = parts.len() as u64;
        }
        match (parts.len(), join) {
            (1, _) => Ok(parts.pop().expect("one part")),
            (_, Some(join)) => Ok(join(parts)),
            // Unsplittable ops run exactly once; an empty op (0 units) still runs once over 0..0.
            (_, None) => unreachable!("an unsplittable op ran as {} parts", parts.len()),
        }
    }

    /// Runs `range`, halving it on out-of-memory down to `min_units`.
    #[allow(clippy::too_many_arguments)]
    fn run_range<T>(
        &self,
        op: OpKind,
        range: Range<usize>,
        splittable: bool,
        min_units: usize,
        f: &RangeFn<T>,
        parts: &mut Vec<T>,
        call: &mut OpStats,
    ) -> Result<()> {
        match self.call_with_retry(op, range.clone(), f, call) {
            Ok(v) => {
                parts.push(v);
                Ok(())
            }
            Err(Error::Device(e))
                if e.is_out_of_memory()
                    && !self.policy.strict
                    && splittable
                    && range.len() >= 2 * min_units =>
            {
                self.warn_once(op, "out of memory", || {
                    format!("{e}; splitting it into smaller chunks")
                });
                let mid = range.start + range.len() / 2;
                self.run_range(op, range.start..mid, splittable, min_units, f, parts, call)?;
                self.run_range(op, mid..range.end, splittable, min_units, f, parts, call)
            }
            Err(e) => Err(e),
        }
    }

    /// One backend call, retried with exponential backoff while it fails transiently.
    fn call_with_retry<T>(
        &self,
        op: OpKind,
        range: Range<usize>,
        f: &RangeFn<T>,
        call: &mut OpStats,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match f(self.backend.as_ref(), range.clone()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    note_error(call, &e);
                    let transient = matches!(&e, Error::Device(d) if d.is_transient());
                    // A recorded step's ops run later, all at once: a failure ends the recording.
                    let recording = self.backend.recording();
                    if !transient
                        || recording
                        || self.policy.strict
                        || attempt >= self.policy.max_retries
                    {
                        return Err(e);
                    }
                    attempt += 1;
                    call.retries += 1;
                    self.warn_once(op, "transient failure", || {
                        format!("{e}; retry {attempt} of {}", self.policy.max_retries)
                    });
                    std::thread::sleep(self.policy.backoff(attempt));
                }
            }
        }
    }

    /// After the device failed: the error (strict, input errors), or the whole op on the CPU.
    fn recover<T>(
        &self,
        params: &OpParams,
        f: &RangeFn<T>,
        e: Error,
        call: &mut OpStats,
    ) -> Result<T> {
        let device_error = match &e {
            Error::Device(d) if !d.is_input_error() => d,
            _ => return Err(e),
        };
        if self.policy.strict || !self.policy.cpu_fallback {
            return Err(e);
        }
        if self.host_cpu && !device_error.is_out_of_memory() {
            return Err(e);
        }
        let reason = device_error.kind().name();
        self.warn_once(params.op, reason, || {
            if self.host_cpu {
                format!("{e}; running it unsplit on the host")
            } else {
                format!("{e}; running it on the CPU instead")
            }
        });
        call.fallbacks += 1;
        let r = f(&CpuBackend, 0..params.memory.units);
        if let Err(e2) = &r {
            note_error(call, e2);
        }
        r
    }

    // ---- Device tensors ----

    /// Copies a host tensor to this device (transient failures retried).
    pub fn to_device(&self, t: &Tensor) -> Result<DeviceTensor> {
        let mut call = OpStats::default();
        self.call_with_retry(OpKind::CopyRows, 0..1, &|b, _| b.upload(t), &mut call)
    }

    /// Copies a tensor of this device back to the host, waiting for the queued work that writes it.
    pub fn to_host(&self, t: &DeviceTensor) -> Result<Tensor> {
        self.check_on_device("to_host", t)?;
        self.backend.download(t)
    }

    /// Waits until every op queued on this device has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    /// A typed error unless `t` lives on this device.
    pub fn check_on_device(&self, op: &'static str, t: &DeviceTensor) -> Result<()> {
        if t.device_id() == self.info.id {
            Ok(())
        } else {
            Err(Error::WrongDevice {
                op,
                got: t.device_id().to_string(),
                expected: self.info.id.clone(),
            })
        }
    }

    /// Runs a device-tensor op the op layer has validated, under the recovery policy: unsupported ops and
    /// failures other than bad input run on the CPU (operands copied to the host, the result handed back on
    /// this device), transient failures are retried, strict mode returns the error; all of it is counted.
    /// Out-of-memory is not split for device tensors (their operands are already resident): it falls back.
    pub(crate) fn run_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        let name = op.kind().name();
        for t in inputs {
            self.check_on_device(name, t)?;
        }
        let start = Instant::now();
        let mut call = OpStats {
            runs: 1,
            ..Default::default()
        };
        let dtypes: Vec<_> = inputs.iter().map(|t| t.dtype()).collect();
        let result = match self.backend.supports_op(op, &dtypes) {
            Support::No(reason) => {
                let e = Error::Device(DeviceError::unsupported(&self.info.id, name, reason));
                note_error(&mut call, &e);
                Err(e)
            }
            Support::Yes => {
                self.call_with_retry(op.kind(), 0..1, &|b, _| b.run_op(op, inputs), &mut call)
            }
        };
        let result = match result {
            Ok(v) => Ok(v),
            Err(e) => self.recover_op(op, inputs, e, &mut call),
        };
        call.failures = u64::from(result.is_err());
        call.total_ns = start.elapsed().as_nanos() as u64;
        self.stats.record(op.kind(), &call);
        result
    }

    /// Writes `src`'s rows into `dst` from `row` on (a KV cache append), in place on this device.
    pub(crate) fn write_rows(
        &self,
        dst: &DeviceTensor,
        row: usize,
        src: &DeviceTensor,
    ) -> Result<()> {
        self.copy_rows_call(&[dst, src], &|b, _| b.write_rows(dst, row, src))
    }

    /// [`write_rows`](Self::write_rows) for two pairs at once (a KV cache's keys and values).
    pub(crate) fn write_rows_pair(
        &self,
        dst: [&DeviceTensor; 2],
        row: usize,
        src: [&DeviceTensor; 2],
    ) -> Result<()> {
        self.copy_rows_call(&[dst[0], dst[1], src[0], src[1]], &|b, _| {
            b.write_rows_pair(dst, row, src)
        })
    }

    /// Runs an in-place row write on this device's tensors `on` under the retry policy, counted as one
    /// `copy_rows` call.
    fn copy_rows_call(&self, on: &[&DeviceTensor], write: &RangeFn<()>) -> Result<()> {
        for t in on {
            self.check_on_device("copy_rows", t)?;
        }
        let start = Instant::now();
        let mut call = OpStats {
            runs: 1,
            ..Default::default()
        };
        let r = self.call_with_retry(OpKind::CopyRows, 0..1, write, &mut call);
        call.failures = u64::from(r.is_err());
        call.total_ns = start.elapsed().as_nanos() as u64;
        self.stats.record(OpKind::CopyRows, &call);
        r
    }

    /// Runs `step` (which queues a step's ops and returns its output) as step `key` at `args`: on a backend
    /// that records steps the first run goes op by op, the second is recorded, and later ones replay the
    /// recording with `args` (the ops' own calls and statistics then do not happen; `step` counts them as
    /// one). A step that cannot be recorded runs op by op, logged and counted as a fallback. `step` may run
    /// twice in one call (a failed recording, then op by op), so it must not depend on having run.
    pub fn recorded_step(
        &self,
        key: StepKey,
        args: &StepArgs,
        step: &mut dyn FnMut() -> Result<DeviceTensor>,
    ) -> Result<(DeviceTensor, StepRun)> {
        let start = Instant::now();
        let mut call = OpStats {
            runs: 1,
            ..Default::default()
        };
        let r = self.recorded_step_inner(key, args, step, &mut call);
        call.failures = u64::from(r.is_err());
        call.total_ns = start.elapsed().as_nanos() as u64;
        self.stats.record(OpKind::Step, &call);
        r
    }

    fn recorded_step_inner(
        &self,
        key: StepKey,
        args: &StepArgs,
        step: &mut dyn FnMut() -> Result<DeviceTensor>,
        call: &mut OpStats,
    ) -> Result<(DeviceTensor, StepRun)> {
        if let Some(y) = self.backend.step_replay(key, args)? {
            return Ok((y, StepRun::Replayed));
        }
        if self.backend.step_record_begin(key, args)? {
            let r = step();
            match self.backend.step_record_end(r) {
                Ok(y) => return Ok((y, StepRun::Recorded)),
                Err(e) => {
                    note_error(call, &e);
                    call.fallbacks += 1;
                    self.warn_once(OpKind::Step, "not recorded", || {
                        format!("{e}; the step runs op by op")
                    });
                }
            }
        }
        let y = step()?;
        self.backend.step_ran(key, &y);
        Ok((y, StepRun::OpByOp))
    }

    fn recover_op(
        &self,
        op: &Op,
        inputs: &[&DeviceTensor],
        e: Error,
        call: &mut OpStats,
    ) -> Result<DeviceTensor> {
        let device_error = match &e {
            Error::Device(d) if !d.is_input_error() => d,
            _ => return Err(e),
        };
        if self.policy.strict
            || !self.policy.cpu_fallback
            || self.host_cpu
            || self.backend.recording()
        {
            return Err(e);
        }
        let reason = device_error.kind().name();
        self.warn_once(op.kind(), reason, || {
            format!("{e}; running it on the CPU instead (operands copied to the host and back)")
        });
        call.fallbacks += 1;
        let run = || -> Result<DeviceTensor> {
            let host = inputs
                .iter()
                .map(|t| self.backend.download(t))
                .collect::<Result<Vec<_>>>()?;
            let views: Vec<HostView> = host
                .iter()
                .map(|t| HostView {
                    shape: t.shape(),
                    data: t.data(),
                })
                .collect();
            let y = run_host_op(&CpuBackend, ModelKernels::Fast, op, &views)?;
            self.backend.upload(&y)
        };
        let r = run();
        if let Err(e2) = &r {
            note_error(call, e2);
        }
        r
    }

    /// Logs a recovery once per (op, device, reason) for the whole process.
    fn warn_once(&self, op: OpKind, reason: &'static str, message: impl FnOnce() -> String) {
        type Seen = HashSet<(OpKind, String, &'static str)>;
        static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
        let first = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((op, self.info.id.clone(), reason));
        if first {
            tracing::warn!(
                device = %self.info.id,
                op = op.name(),
                reason,
                "{} on {}: {}",
                op.name(),
                self.info.id,
                message()
            );
        }
    }
}

fn note_error(call: &mut OpStats, e: &Error) {
    let kind = match e {
        Error::Device(d) => d.kind().name(),
        _ => "invalid_input",
    };
    *call.errors.entry(kind.to_string()).or_default() += 1;
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::cpu()
    }
}
