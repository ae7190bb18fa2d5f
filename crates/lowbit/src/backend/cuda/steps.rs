//! Recorded steps (`capability::step`) as CUDA graphs. A decode step queues some 15 kernels per layer,
//! each costing the host about 4 µs to launch and the GPU a gap between kernels; replayed as one graph the
//! host writes the step's position and token ids into a small device buffer and launches once.
//!
//! A step runs op by op the first time (kernels are compiled and loaded, the output's size is learnt), is
//! captured the second time, then replayed. The capture uses a stream of its own, which only the
//! capturing thread queues on (`Cuda::queue`): other threads' work keeps running on the main stream
//! meanwhile, and the graph is launched on the main stream, in order with everything else. While
//! capturing, the ops whose arguments move from step to step read them from the arguments buffer instead
//! of their launch parameters: RoPE's and the attention's position, the KV cache row a step appends
//! (`copy_rows_at`), the embedded token ids (the upload of exactly the step's ids becomes a view of the
//! buffer). Any other position, any other upload and any read-back end the capture with an error: the step
//! then runs op by op, counted by the runtime. The graph's last node copies the output into a buffer the
//! recording owns; each replay hands the caller a fresh copy of it.

use super::context::Cuda;
use super::ops::Buf;
use super::storage::CudaStorage;
use crate::Result;
use crate::capability::{DeviceError, StepArgs, StepKey};
use crate::device_tensor::DeviceTensor;
use crate::tensor::DType;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Recordings kept per device (older ones are dropped with their graph memory): one per live
/// (model, cache, adapter) a process decodes with at once is enough for the usual single generator.
const KEEP: usize = 4;
/// Keys remembered as seen or failed, at most (a long-running process decodes with many caches).
const FORGET_AFTER: usize = 256;

/// A small number naming the calling thread (0 is "no thread").
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TAG: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    TAG.with(|t| *t)
}

/// Shape and dtype of a step's output.
#[derive(Clone, Debug, PartialEq)]
struct OutSpec {
    shape: Vec<usize>,
    dtype: DType,
}

impl OutSpec {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// What a replay's arguments must stay within: the recorded ops were validated for one position, and the
/// buffers they touch bound every later one.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// `pos + tokens` at most (the KV cache's rows, RoPE's table).
    end: usize,
    /// Token ids below this (the embedding table's rows).
    vocab: usize,
}

/// `CudaGraph` holds raw driver handles; it is only used under the `Steps` mutex.
struct Graph(CudaGraph);
// SAFETY: the graph is created, launched and destroyed only while `Steps::state` is locked, so no two
// threads use it at once (what the driver requires of graph objects).
unsafe impl Send for Graph {}

struct Recorded {
    graph: Graph,
    /// `[pos, token ids..]` as u32, read by the graph's kernels.
    args: Buf,
    out: Buf,
    spec: OutSpec,
    tokens: usize,
    limits: Limits,
}

/// A capture in progress (on `thread`).
struct Active {
    key: StepKey,
    args: StepArgs,
    args_buf: Buf,
    out: Buf,
    spec: OutSpec,
    limits: Limits,
}

#[derive(Default)]
struct State {
    /// Keys that ran op by op once, with their output.
    seen: HashMap<StepKey, OutSpec>,
    failed: HashSet<StepKey>,
    /// Newest last.
    recorded: Vec<(StepKey, Recorded)>,
    active: Option<Active>,
}

impl State {
    /// `key` runs op by op from now on. Every new cache is a new key: old ones are forgotten now and then
    /// (a forgotten key is just tried again).
    fn mark_failed(&mut self, key: StepKey) {
        if self.failed.len() >= FORGET_AFTER {
            self.failed.clear();
        }
        self.failed.insert(key);
        self.seen.remove(&key);
    }
}

/// The recorded steps of one device.
pub struct Steps {
    state: Mutex<State>,
    /// The thread capturing (0: none); one capture at a time.
    capturing: AtomicU64,
    /// The stream captures are made from.
    stream: Arc<CudaStream>,
    enabled: bool,
}

impl Steps {
    pub fn new(stream: Arc<CudaStream>) -> Steps {
        Steps {
            state: Mutex::default(),
            capturing: AtomicU64::new(0),
            stream,
            // LOWBIT_CUDA_GRAPHS=0 runs every step op by op (for comparisons).
            enabled: std::env::var("LOWBIT_CUDA_GRAPHS").map_or(true, |v| v != "0"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the calling thread is capturing.
    pub fn recording(&self) -> bool {
        self.capturing.load(Ordering::Relaxed) == thread_tag()
    }
}

impl Cuda {
    /// The error that ends a capture: `op` cannot be recorded, for `why`.
    pub fn not_recordable(&self, op: &str, why: String) -> crate::Error {
        crate::Error::Device(DeviceError::failed(
            &*self.id,
            op,
            format!("cannot be part of a recorded step: {why}"),
        ))
    }

    /// The stream this thread's work goes to: the capture stream while it records a step, else the
    /// device's stream.
    pub fn queue(&self) -> &Arc<CudaStream> {
        if self.steps.recording() {
            &self.steps.stream
        } else {
            &self.stream
        }
    }

    /// For an op that works at row `pos` of a buffer with `rows` rows (`pos + tokens <= rows`): outside a
    /// capture `None`; in one, the arguments buffer's address (the op adds its position to `pos - step
    /// pos`, which must be 0) after noting the bound.
    pub fn step_position(&self, op: &str, pos: usize, rows: usize) -> Result<Option<u64>> {
        if !self.steps.recording() {
            return Ok(None);
        }
        let mut st = self.steps.lock();
        let a = st
            .active
            .as_mut()
            .expect("a capturing thread has an active capture");
        if pos != a.args.pos {
            return Err(self.not_recordable(
                op,
                format!("position {pos} is not the step's ({})", a.args.pos),
            ));
        }
        a.limits.end = a.limits.end.min(rows);
        Ok(Some(a.args_buf.addr()))
    }

    /// Notes, in a capture, that the step embeds ids from a table of `rows` rows.
    pub fn step_vocab(&self, rows: usize) {
        if self.steps.recording()
            && let Some(a) = self.steps.lock().active.as_mut()
        {
            a.limits.vocab = a.limits.vocab.min(rows);
        }
    }

    /// In a capture, the upload of `bytes`: the step's token ids (as i32) become a view of the arguments
    /// buffer; anything else ends the capture. `None` outside a capture.
    pub fn step_upload(&self, bytes: &[u8]) -> Result<Option<Buf>> {
        if !self.steps.recording() {
            return Ok(None);
        }
        let st = self.steps.lock();
        let a = st
            .active
            .as_ref()
            .expect("a capturing thread has an active capture");
        let ids: Vec<u8> = a
            .args
            .tokens
            .iter()
            .flat_map(|&t| (t as i32).to_le_bytes())
            .collect();
        if bytes != ids.as_slice() {
            return Err(
                self.not_recordable("upload", "only the step's token ids can be uploaded".into())
            );
        }
        Ok(CudaStorage::view(&a.args_buf, 4, ids.len()))
    }

    /// Read-backs wait for the device: a capture has nothing to wait for.
    pub fn check_not_recording(&self, op: &str) -> Result<()> {
        if self.steps.recording() {
            return Err(self.not_recordable(op, "it reads a result back to the host".into()));
        }
        Ok(())
    }

    /// Writes `args` into a recording's arguments buffer (queued).
    fn write_step_args(&self, buf: &CudaStorage, args: &StepArgs) -> Result<()> {
        let words = std::iter::once(args.pos as u32).chain(args.tokens.iter().copied());
        for (i, w) in words.enumerate() {
            // SAFETY: `buf` holds 1 + tokens u32 words (checked by the caller) and is a live allocation of
            // this context; the write is ordered on the stream before the graph that reads it.
            let r = unsafe {
                cudarc::driver::sys::cuMemsetD32Async(
                    buf.addr() + 4 * i as u64,
                    w,
                    1,
                    self.stream.cu_stream(),
                )
            };
            r.result()
                .map_err(|e| self.step_error("writing the step's arguments", e))?;
        }
        Ok(())
    }

    fn replay(&self, rec: &Recorded, args: &StepArgs) -> Result<DeviceTensor> {
        let n = args.tokens.len();
        let end = args.pos.checked_add(n);
        if n != rec.tokens || end.is_none_or(|e| e > rec.limits.end) {
            return Err(crate::Error::invalid(
                "step",
                format!(
                    "{n} tokens at position {} do not fit the recorded step ({} tokens, positions below {})",
                    args.pos, rec.tokens, rec.limits.end
                ),
            ));
        }
        if let Some(t) = args
            .tokens
            .iter()
            .find(|&&t| t as usize >= rec.limits.vocab)
        {
            return Err(crate::Error::invalid(
                "step",
                format!(
                    "token id {t} is outside the vocabulary of {}",
                    rec.limits.vocab
                ),
            ));
        }
        self.write_step_args(&rec.args, args)?;
        // On the device's stream (cudarc's `launch` would use the capture stream).
        // SAFETY: the graph is instantiated and alive (the caller holds the state lock), and every buffer it
        // touches is owned by the recording or by the model and cache its key names.
        unsafe {
            cudarc::driver::result::graph::launch(
                rec.graph.0.cu_graph_exec(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| self.step_error("launching the recorded graph", e))?;
        let bytes = rec.spec.bytes();
        let y = self.alloc("step", bytes)?;
        self.copy(&rec.out, &y, 0, bytes)?;
        DeviceTensor::new(rec.spec.shape.clone(), rec.spec.dtype, y)
    }

    /// A driver error of a recorded step, naming the call that failed.
    fn step_error(&self, call: &str, e: cudarc::driver::DriverError) -> crate::Error {
        match self.error("step", e) {
            crate::Error::Device(d) if !d.is_out_of_memory() => crate::Error::Device(
                DeviceError::failed(&*self.id, "step", format!("{call}: {}", e)),
            ),
            other => other,
        }
    }

    pub fn step_replay(&self, key: StepKey, args: &StepArgs) -> Result<Option<DeviceTensor>> {
        if !self.steps.enabled {
            return Ok(None);
        }
        let st = self.steps.lock();
        match st.recorded.iter().find(|(k, _)| *k == key) {
            Some((_, rec)) => self.replay(rec, args).map(Some),
            None => Ok(None),
        }
    }

    pub fn step_ran(&self, key: StepKey, out: &DeviceTensor) {
        let mut st = self.steps.lock();
        if self.steps.enabled && !st.failed.contains(&key) {
            let spec = OutSpec {
                shape: out.shape().to_vec(),
                dtype: out.dtype(),
            };
            // Every new cache is a new key: forget old ones now and then (a forgotten live key just runs
            // op by op once more).
            if st.seen.len() >= FORGET_AFTER {
                st.seen.clear();
            }
            st.seen.insert(key, spec);
        }
    }

    pub fn step_record_begin(&self, key: StepKey, args: &StepArgs) -> Result<bool> {
        let mut st = self.steps.lock();
        // The capture stream is free only once the last capture has ended: `active` is taken before the
        // output's copy is queued, `capturing` cleared after the capture ends (a capture begun between the
        // two failed with CUDA_ERROR_ILLEGAL_STATE when two threads recorded steps on one device).
        let busy = st.active.is_some() || self.steps.capturing.load(Ordering::Acquire) != 0;
        if !self.steps.enabled || busy || st.failed.contains(&key) {
            return Ok(false);
        }
        let Some(spec) = st.seen.get(&key).cloned() else {
            return Ok(false);
        };
        let args_buf = self.alloc("step", 4 * (1 + args.tokens.len()))?;
        let out = self.alloc("step", spec.bytes())?;
        self.steps
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| self.step_error("beginning the capture", e))?;
        self.steps.capturing.store(thread_tag(), Ordering::Relaxed);
        st.active = Some(Active {
            key,
            args: args.clone(),
            args_buf,
            out,
            spec,
            limits: Limits {
                end: usize::MAX,
                vocab: usize::MAX,
            },
        });
        Ok(true)
    }

    pub fn step_record_end(&self, out: Result<DeviceTensor>) -> Result<DeviceTensor> {
        if !self.steps.recording() {
            return out;
        }
        let Some(active) = self.steps.lock().active.take() else {
            return out;
        };
        // The output's copy joins the graph; then every tensor the step made is freed inside it.
        let queued = out.and_then(|y| {
            let spec = OutSpec {
                shape: y.shape().to_vec(),
                dtype: y.dtype(),
            };
            if spec != active.spec {
                return Err(self.not_recordable(
                    "step",
                    format!(
                        "its output {spec:?} differs from the first run's {:?}",
                        active.spec
                    ),
                ));
            }
            let s = y.storage_on("step", &self.id)?;
            self.copy(s, &active.out, 0, spec.bytes())
        });
        let graph = self
            .steps
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| self.step_error("ending the capture", e));
        self.steps.capturing.store(0, Ordering::Release);
        let mut st = self.steps.lock();
        let recorded = queued.and_then(|()| match graph? {
            Some(g) => Ok(Recorded {
                graph: Graph(g),
                args: active.args_buf,
                out: active.out,
                spec: active.spec,
                tokens: active.args.tokens.len(),
                limits: active.limits,
            }),
            None => Err(self.not_recordable("step", "it queued nothing".into())),
        });
        let rec = match recorded {
            Ok(r) => r,
            Err(e) => {
                st.mark_failed(active.key);
                return Err(e);
            }
        };
        let y = self.replay(&rec, &active.args);
        if y.is_err() {
            st.mark_failed(active.key);
        } else {
            st.recorded.retain(|(k, _)| *k != active.key);
            if st.recorded.len() >= KEEP {
                st.recorded.remove(0);
            }
            st.recorded.push((active.key, rec));
        }
        y
    }
}
