//! The one piece of GPU plumbing every kernel shares: device, queue, the pipeline cache (each shader variant
//! compiled once), the reciprocal correction table (uploaded once), uploads, dispatch and read-back.

use super::bind_groups::{BindGroups, layout_entries};
use super::errors::ErrorLog;
pub(crate) use super::errors::{gpu_err, gpu_lost, gpu_oom};
use super::pool::{BufferPool, Use, size_class};
pub use super::recorder::Recorder;
use super::shaders::Shader;
use crate::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use wgpu::util::DeviceExt;

/// Workgroups per dispatch dimension that every adapter accepts.
const MAX_GROUPS_X: u32 = 65535;

/// Whether shaders get wgpu's injected bounds checks and loop bounding: off unless `LOWBIT_GPU_CHECKS=1`
/// (a debugging aid when changing a kernel).
fn runtime_checks() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LOWBIT_GPU_CHECKS").is_ok_and(|v| v == "1"))
}

/// Ops recorded into a pending command buffer before one submission drains them: the device starts on a
/// chain while the host records the rest (a 1B Llama decode step on an H200 through Vulkan: 64 was faster
/// than 16, 32 or 128; docs/PERFORMANCE.md).
const MAX_PENDING: u32 = 64;

/// Uniform slots of the params ring: dispatches recorded between two submissions that get a slot; past
/// it a dispatch gets a buffer of its own (a chain is submitted early once half the ring is used).
const RING_SLOTS: u32 = 1024;

/// Bytes of the params every kernel reads at binding 0 (`Params` in common.wgsl).
const PARAMS_BYTES: u64 = 32;

/// The params of the dispatches recorded since the last submission, one aligned slot each, written to
/// the ring buffer in one `write_buffer` just before the submission that runs them.
///
/// Why this is safe: a queue write lands before the command buffers of the submission it precedes and
/// after every earlier submission, so each pending dispatch reads the params recorded for it, and a slot is
/// rewritten only for a later submission. Every encoder that records dispatches is the one pending
/// encoder (`submit`), so no other command buffer can hold a slot across a submission.
#[derive(Default)]
struct ParamStaging {
    bytes: Vec<u8>,
    used: u32,
}

/// The recorder ops are recorded into, and how many ops it holds.
#[derive(Default)]
struct Pending {
    recorder: Option<Recorder>,
    ops: u32,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Largest subgroup the adapter may run, when subgroup kernels are usable: the adapter has subgroups and a
    /// probe found lanes numbered linearly within a workgroup (lane = local index mod size), which the subgroup
    /// reductions rely on.
    pub subgroup_max: Option<u32>,
    pipelines: Mutex<HashMap<Shader, Arc<Kernel>>>,
    /// Free buffers for reuse, and the count of buffers created (see `pool.rs` for why reuse is safe).
    pool: Arc<BufferPool>,
    /// Uniform params of recorded dispatches, `RING_SLOTS` slots of `slot_bytes` each.
    ring: wgpu::Buffer,
    slot_bytes: u64,
    ring_staging: Mutex<ParamStaging>,
    /// A 4-byte buffer bound where a kernel declares an input the call does not use (no bias, no weight).
    unused: OnceLock<wgpu::Buffer>,
    rcp_delta: OnceLock<wgpu::Buffer>,
    /// NF4 and FP4 dequantization tables, uploaded on first use.
    tables_4bit: [OnceLock<wgpu::Buffer>; 2],
    /// Dispatches recorded but not yet submitted: ops append to one command encoder, which is submitted when
    /// the host reads or waits, or when it holds `MAX_PENDING` ops.
    pending: Mutex<Pending>,
    submissions: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
    /// Errors no error scope caught (wgpu's default handler would panic): counted, and turned into typed
    /// errors by the call that raised them.
    errors: Arc<ErrorLog>,
    /// Bind groups by kernel and buffers (see `BindGroups`).
    bind_groups: Mutex<BindGroups>,
}

/// A compiled shader variant: its pipeline and the bind-group layout every dispatch of it binds.
pub(crate) struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Gpu {
    pub fn new(adapter: &wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let alimits = adapter.limits();
        // Ask for the adapter's own buffer limits: large weights need more than the WebGPU defaults.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: alimits.max_storage_buffer_binding_size,
            max_buffer_size: alimits.max_buffer_size,
            max_storage_buffers_per_shader_stage: alimits
                .max_storage_buffers_per_shader_stage
                .min(10),
            ..wgpu::Limits::downlevel_defaults()
        };
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lowbit"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            gpu_err(format!(
                "cannot open {} ({:?}): {e}",
                info.name, info.backend
            ))
        })?;
        // wgpu's default handler panics on an error outside an error scope; a library must not.
        let errors = Arc::new(ErrorLog::default());
        let log = errors.clone();
        let adapter_name = info.name.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log.record(&e);
            tracing::debug!("{adapter_name}: GPU error: {e}");
        }));
        let slot_bytes = u64::from(limits.min_uniform_buffer_offset_alignment).max(PARAMS_BYTES);
        let pool = Arc::new(BufferPool::default());
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lowbit params ring"),
            size: slot_bytes * u64::from(RING_SLOTS),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        pool.count_created();
        let mut gpu = Gpu {
            pool,
            ring,
            slot_bytes,
            ring_staging: Mutex::new(ParamStaging::default()),
            unused: OnceLock::new(),
            device,
            queue,
            info,
            limits,
            features,
            subgroup_max: None,
            pipelines: Mutex::new(HashMap::new()),
            rcp_delta: OnceLock::new(),
            tables_4bit: Default::default(),
            pending: Mutex::new(Pending::default()),
            submissions: Default::default(),
            reads: Default::default(),
            errors,
            bind_groups: Mutex::default(),
        };
        if features.contains(wgpu::Features::SUBGROUP) {
            match gpu.probe_subgroup_lanes() {
                Ok(true) => gpu.subgroup_max = Some(gpu.info.subgroup_max_size),
                Ok(false) => tracing::info!(
                    "{}: subgroup lanes are not numbered linearly; using the portable reductions",
                    gpu.info.name
                ),
                Err(e) => tracing::warn!(
                    "{}: subgroup probe failed ({e}); using the portable reductions",
                    gpu.info.name
                ),
            }
        }
        Ok(gpu)
    }

    /// Runs one 256-lane workgroup that reports each lane's subgroup index and size, and checks that lane
    /// `i` is lane `i mod size` of subgroup `i / size` with one power-of-two size throughout.
    fn probe_subgroup_lanes(&self) -> Result<bool> {
        let out = self.output(256 * 4);
        self.run(|enc| {
            self.encode(
                enc,
                &Shader::SubgroupProbe,
                [0; 8],
                &[(1, &out)],
                (1, 1, 1),
                None,
            )
        })?;
        let lanes: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read(&out, 256 * 4)?);
        let size = lanes[0] >> 16;
        let linear = size.is_power_of_two()
            && size <= 256
            && lanes
                .iter()
                .enumerate()
                .all(|(i, &l)| l == ((size << 16) | (i as u32 % size)));
        tracing::debug!(
            "{}: subgroup probe size {size}, linear lanes {linear}",
            self.info.name
        );
        Ok(linear)
    }

    /// Whether subgroup kernels that need subgroups no wider than `lanes` may run here.
    pub fn subgroups_fit(&self, lanes: u32) -> bool {
        self.subgroup_max.is_some_and(|m| m <= lanes)
    }

    /// Largest byte size one storage binding may have.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// The compiled pipeline for `shader` and its bind-group layout, compiling it on first use. Keyed by the
    /// shader value itself: a dispatch formats no key and asks wgpu for no layout.
    pub(crate) fn pipeline(&self, shader: &Shader) -> Result<Arc<Kernel>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(shader) {
            return Ok(p.clone());
        }
        let key = shader.key();
        let source = shader.source();
        // Reflected before the error scope is pushed, so that its error cannot leave the scope open.
        let entries = layout_entries(&source, &key)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&key),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if runtime_checks() {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel bounds its indices by the lengths its host side binds (checked there before
            // dispatch) and every loop is bounded by a uniform count, so the injected index clamps and loop
            // counters only cost time: they sit on every load of the inner loops.
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&key),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_err(format!("shader {key} failed to compile: {e}")));
        }
        let p = Arc::new(Kernel { pipeline, layout });
        self.pipelines
            .lock()
            .unwrap()
            .insert(shader.clone(), p.clone());
        Ok(p)
    }

    /// The reciprocal correction table of FORMATS.md 0.1 (2 MiB), uploaded on first use.
    pub fn rcp_delta(&self) -> &wgpu::Buffer {
        self.rcp_delta
            .get_or_init(|| self.upload(crate::format::rcp::delta_table()))
    }

    /// The 16-entry float32 dequantization table of `quant_type`, uploaded once per device.
    pub fn table_4bit(&self, quant_type: crate::format::FourBitType) -> &wgpu::Buffer {
        let i = match quant_type {
            crate::format::FourBitType::Nf4 => 0,
            crate::format::FourBitType::Fp4 => 1,
        };
        self.tables_4bit[i]
            .get_or_init(|| self.upload(bytemuck::cast_slice(quant_type.dequant_table())))
    }

    /// A storage buffer holding `bytes`, padded to a whole number of u32 words (at least one).
    pub fn upload(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.before_large_upload(bytes.len());
        let padded = bytes.len().div_ceil(4).max(1) * 4;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        self.pool.count_created();
        if padded == bytes.len() {
            return self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytes,
                    usage,
                });
        }
        let mut v = bytes.to_vec();
        v.resize(padded, 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &v,
                usage,
            })
    }

    /// A storage buffer holding `bytes`, zero-padded to a multiple of `align` bytes (a power of two, at least
    /// 4), for kernels that read it as vectors; the data is copied once, into the buffer mapped at creation.
    pub fn upload_aligned(&self, bytes: &[u8], align: usize) -> wgpu::Buffer {
        debug_assert!(align.is_power_of_two() && align >= 4);
        self.before_large_upload(bytes.len());
        let padded = bytes.len().div_ceil(align).max(1) * align;
        self.pool.count_created();
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: padded as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        // Mapped-at-creation memory starts zeroed (WebGPU's rule), so only the data is written.
        buf.get_mapped_range_mut(..)
            .expect("a buffer mapped at creation maps")
            .slice(..bytes.len())
            .copy_from_slice(bytes);
        buf.unmap();
        buf
    }

    /// A zero-filled storage buffer of at least `bytes` bytes (rounded up to u32 words).
    pub fn output(&self, bytes: u64) -> wgpu::Buffer {
        self.pool.count_created();
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.div_ceil(4).max(1) * 4,
            usage: Use::Storage.usages(),
            mapped_at_creation: false,
        })
    }

    /// A storage buffer of at least `bytes` bytes from the pool, its contents left over from earlier use:
    /// for outputs a kernel writes in full. A new one (zeroed) when none of its size class is free.
    /// Allocation failure is the typed out-of-memory error.
    pub fn pooled(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let size = size_class(bytes, self.max_binding());
        match self.pool.take(Use::Storage, size, false) {
            Some(b) => Ok(b),
            None => self.allocate(Use::Storage, size),
        }
    }

    /// A storage buffer from the pool holding `bytes` (zero-padded to u32 words; bytes past them are left
    /// over from earlier use). Reuses only buffers whose earlier readers are already submitted (`pool.rs`).
    pub fn pooled_upload(&self, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = size_class(bytes.len() as u64, self.max_binding());
        let buf = match self.pool.take(Use::Storage, size, true) {
            Some(b) => b,
            None => self.allocate(Use::Storage, size)?,
        };
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buf, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&buf, whole as u64, &tail);
        }
        Ok(buf)
    }

    /// Gives a storage buffer that nothing will use any more back to the pool (see `pool.rs`).
    pub(crate) fn recycle(&self, buffer: wgpu::Buffer) {
        self.pool.give_back(Use::Storage, buffer);
    }

    /// The pool, for storages that give their buffer back when dropped.
    pub(crate) fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Buffers this context created since the device opened (pooled reuse creates none).
    pub fn buffers_created(&self) -> u64 {
        self.pool.created()
    }

    /// Frees the buffers the pool holds for reuse; returns how many.
    pub fn trim_pool(&self) -> usize {
        self.forget_bind_groups();
        self.pool.trim()
    }

    /// Before a weight-sized upload (1 MiB or more: a model or a layer being loaded), the cached bind groups
    /// go, so that buffers only they still hold (a dropped model's weights) are freed before the new ones
    /// take memory. A decode loop uploads no such buffer, so its groups stay.
    fn before_large_upload(&self, bytes: usize) {
        if bytes >= 1 << 20 {
            self.forget_bind_groups();
        }
    }

    /// Bind groups made for the cache since the device opened (a steady loop makes none: tests assert it).
    pub fn bind_groups_made(&self) -> u64 {
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .made
    }

    /// Drops every cached bind group, and with them the last references to buffers nothing else holds.
    pub(crate) fn forget_bind_groups(&self) {
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .groups
            .clear();
    }

    /// Free buffers the pool holds now.
    pub fn pooled_buffers(&self) -> usize {
        self.pool.free_buffers()
    }

    /// A 4-byte buffer to bind where a kernel declares an input the call does not use (never written).
    pub fn unused_binding(&self) -> &wgpu::Buffer {
        self.unused.get_or_init(|| self.output(4))
    }

    /// A new buffer of `size` bytes under an out-of-memory error scope; on failure the pool's free buffers
    /// are dropped and the allocation tried once more before the typed out-of-memory error.
    fn allocate(&self, usage: Use, size: u64) -> Result<wgpu::Buffer> {
        let desc = wgpu::BufferDescriptor {
            label: None,
            size,
            usage: usage.usages(),
            mapped_at_creation: false,
        };
        for attempt in 0..2 {
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buf = self.device.create_buffer(&desc);
            self.pool.count_created();
            match pollster::block_on(oom.pop()) {
                None => return Ok(buf),
                Some(e) => {
                    tracing::debug!("wgpu allocation of {size} bytes (attempt {attempt}): {e}");
                    self.forget_bind_groups();
                    self.pool.trim();
                }
            }
        }
        Err(gpu_oom("buffer allocation", size, None))
    }

    /// The uniform binding for one dispatch's params: a slot of the ring, or (ring full before a
    /// submission) a buffer of its own.
    fn params_binding(&self, p: [u32; 8]) -> (wgpu::Buffer, u64) {
        let mut st = self.ring_staging.lock().unwrap_or_else(|e| e.into_inner());
        if st.used < RING_SLOTS {
            let offset = u64::from(st.used) * self.slot_bytes;
            st.used += 1;
            st.bytes.resize((offset + self.slot_bytes) as usize, 0);
            st.bytes[offset as usize..(offset + PARAMS_BYTES) as usize]
                .copy_from_slice(bytemuck::cast_slice(&p));
            return (self.ring.clone(), offset);
        }
        self.pool.count_created();
        let own = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&p),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        (own, 0)
    }

    fn ring_used(&self) -> u32 {
        self.ring_staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
    }

    /// Workgroup grid for `groups` linear workgroups (kernels fold y back in with `wg_linear`).
    pub fn grid(groups: u32) -> (u32, u32, u32) {
        let g = groups.max(1);
        if g <= MAX_GROUPS_X {
            (g, 1, 1)
        } else {
            (MAX_GROUPS_X, g.div_ceil(MAX_GROUPS_X), 1)
        }
    }

    /// Records one dispatch of `shader` with uniform params at binding 0 and `buffers` at the given bindings.
    pub fn encode(
        &self,
        recorder: &mut Recorder,
        shader: &Shader,
        params: [u32; 8],
        buffers: &[(u32, &wgpu::Buffer)],
        grid: (u32, u32, u32),
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let kernel = self.pipeline(shader)?;
        let (pbuf, offset) = self.params_binding(params);
        let make = || {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &pbuf,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAMS_BYTES),
                }),
            }];
            for (b, buf) in buffers {
                entries.push(wgpu::BindGroupEntry {
                    binding: *b,
                    resource: buf.as_entire_binding(),
                });
            }
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &kernel.layout,
                entries: &entries,
            })
        };
        let bind = if pbuf == self.ring {
            let key = (
                Arc::as_ptr(&kernel) as usize,
                buffers
                    .iter()
                    .map(|(b, buf)| (*b, (*buf).clone()))
                    .collect(),
            );
            self.bind_groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_make(key, make)
        } else {
            // A params buffer of its own (the ring is full): used once, not cached.
            make()
        };
        let offset = u32::try_from(offset).expect("ring offsets fit in u32");
        let dispatch = |pass: &mut wgpu::ComputePass<'_>| {
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind, &[offset]);
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        };
        match timestamps {
            None => dispatch(recorder.pass()),
            // A timed dispatch gets a pass of its own: the timestamps bracket the pass.
            Some(t) => dispatch(&mut recorder.encoder().begin_compute_pass(
                &wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(t),
                },
            )),
        }
        Ok(())
    }

    /// Runs a sequence of dispatches and waits for them; validation and memory errors become typed errors.
    pub fn run(&self, record: impl FnOnce(&mut Recorder) -> Result<()>) -> Result<()> {
        self.submit(record)?;
        self.wait()
    }

    /// Records a sequence of dispatches after everything recorded before, without submitting or waiting:
    /// a chain of ops becomes one command buffer, submitted when the host reads or waits (or every
    /// `MAX_PENDING` ops). Errors raised while recording (validation, out-of-memory) become typed errors
    /// here; errors the driver reports only at submission surface at the next read or wait.
    pub fn submit(&self, record: impl FnOnce(&mut Recorder) -> Result<()>) -> Result<()> {
        let before = self.errors.counts();
        let recorded = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let rec = p
                .recorder
                .get_or_insert_with(|| Recorder::new(&self.device));
            let r = record(rec);
            p.ops += 1;
            r
        };
        let raised = self.errors.since(before, "gpu dispatch");
        if self.pending_ops() >= MAX_PENDING || self.ring_used() >= RING_SLOTS / 2 {
            self.flush()?;
        }
        recorded?;
        raised
    }

    fn pending_ops(&self) -> u32 {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).ops
    }

    /// Submits what is recorded (one command buffer), without waiting for it. The lock is held through the
    /// submission: once any caller's flush returns, everything recorded before it is on the queue, so a
    /// read-back submitted next cannot overtake another thread's queued work.
    pub fn flush(&self) -> Result<()> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.ops = 0;
        let Some(recorder) = p.recorder.take() else {
            return Ok(());
        };
        let before = self.errors.counts();
        {
            // The params of the dispatches about to run, written ahead of them (see `ParamStaging`).
            let mut st = self.ring_staging.lock().unwrap_or_else(|e| e.into_inner());
            if st.used > 0 {
                self.queue.write_buffer(&self.ring, 0, &st.bytes);
                st.used = 0;
                st.bytes.clear();
            }
        }
        self.queue.submit([recorder.finish()]);
        self.pool.submitted();
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .now += 1;
        drop(p);
        self.submissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.errors.since(before, "gpu submission")
    }

    /// GPU errors (of any kind) reported outside an error scope since the device opened; each also became the
    /// typed error of the call that raised it.
    pub fn uncaptured_errors(&self) -> u64 {
        let (oom, other) = self.errors.counts();
        oom + other
    }

    /// Command buffers submitted and host reads made so far (tests assert how many an op sequence costs).
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.submissions.load(Relaxed), self.reads.load(Relaxed))
    }

    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| gpu_lost(format!("device poll failed: {e}")))
    }

    /// Copies the first `len` bytes of `buf` back to the host.
    pub fn read(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<u8>> {
        self.flush()?;
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let size = (len.div_ceil(4).max(1) * 4) as u64;
        // Staging buffers are pooled too: the read waits, so one is idle again when this returns.
        let class = size_class(size, u64::MAX);
        let staging = match self.pool.take(Use::Staging, class, false) {
            Some(b) => b,
            None => self.allocate(Use::Staging, class)?,
        };
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| gpu_err("read-back callback never ran"))?
            .map_err(|e| gpu_err(format!("read-back failed: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| gpu_err(format!("read-back mapping failed: {e:?}")))?;
        let out = view[..len].to_vec();
        drop(view);
        staging.unmap();
        self.pool.give_back(Use::Staging, staging);
        Ok(out)
    }

    pub fn read_f32(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read(buf, n * 4)?))
    }
}
