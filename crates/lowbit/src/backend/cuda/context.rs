//! One CUDA device opened for the process: the driver and NVRTC loaded at run time (a machine without them
//! gets "CUDA unavailable: <reason>", never a build failure or a panic), one context and one stream, and the
//! kernels compiled once per process and compute capability and loaded once per device.

use crate::Result;
use crate::capability::DeviceError;
use crate::format::FourBitType;
use crate::format::codebook::{FP4_BITS_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const COMMON: &str = include_str!("kernels/common.cuh");

/// The kernel families, each its own NVRTC program compiled on first use (compiled all at once, they made a
/// process's first CUDA op wait tens of seconds on the H200 machine; a model in one dtype needs about half).
pub const FAMILIES: [&str; 6] = [
    "quant",
    "linear_f32",
    "linear_f16",
    "linear_bf16",
    "int8",
    "model",
];

/// The CUDA C source of `family`: the shared helpers, then its file (the half-precision linear programs
/// also the tensor-core kernel's).
pub fn source(family: &str) -> String {
    const LINEAR: &str = include_str!("kernels/linear.cu");
    const LINEAR_MMA: &str = include_str!("kernels/linear_mma.cu");
    let (define, body, extra) = match family {
        "quant" => ("", include_str!("kernels/quant.cu"), ""),
        "linear_f32" => ("#define LOWBIT_LINEAR_F32\n", LINEAR, ""),
        "linear_f16" => ("#define LOWBIT_LINEAR_F16\n", LINEAR, LINEAR_MMA),
        "linear_bf16" => ("#define LOWBIT_LINEAR_BF16\n", LINEAR, LINEAR_MMA),
        "int8" => ("", include_str!("kernels/int8.cu"), ""),
        _ => ("", include_str!("kernels/model.cu"), ""),
    };
    format!("{define}{COMMON}\n{body}\n{extra}")
}

/// The family whose program holds `kernel` (names follow `kernels/*.cu`).
pub fn family_of(kernel: &str) -> &'static str {
    let linear = |k: &str| {
        if k.contains("_bf16") {
            "linear_bf16"
        } else if k.contains("_f16") {
            "linear_f16"
        } else {
            "linear_f32"
        }
    };
    if kernel.starts_with("quantize_") || kernel.starts_with("dequantize") {
        "quant"
    } else if kernel.starts_with("linear_") || kernel.starts_with("gemm_") {
        linear(kernel)
    } else if kernel == "bias_finish" {
        "linear_f32"
    } else if kernel.starts_with("int8_") || kernel.starts_with("ternary_") || kernel == "add_f16" {
        "int8"
    } else {
        "model"
    }
}

/// Why CUDA cannot be used on this machine, or `None` when the driver and NVRTC load and see a device.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only probes whether the shared libraries can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no NVIDIA driver library (libcuda.so) found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some(
            "NVRTC (libnvrtc.so.13, the CUDA runtime compiler) not found: install the CUDA toolkit's nvrtc \
             or add its lib directory to LD_LIBRARY_PATH"
                .into(),
        );
    }
    match guarded(CudaContext::device_count) {
        Ok(Ok(0)) => Some("the NVIDIA driver reports no CUDA device".into()),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("the CUDA driver failed to initialise: {e}")),
        Err(p) => Some(p),
    }
}

/// Runs `f`, turning a panic inside the driver bindings (a missing symbol) into an error message.
pub fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA bindings panicked".into())
    })
}

/// PTX of a kernel family per compute capability: compiled once per process, and kept on disk between
/// processes (compiling takes seconds) under a name that changes with the source, the architecture and
/// lowbit's version.
fn ptx_for(
    family: &'static str,
    major: i32,
    minor: i32,
) -> std::result::Result<cudarc::nvrtc::Ptx, String> {
    type Key = (&'static str, i32, i32);
    static CACHE: OnceLock<Mutex<HashMap<Key, cudarc::nvrtc::Ptx>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(&(family, major, minor)) {
        return Ok(p.clone());
    }
    let file = disk_cache_file(family, major, minor);
    let ptx = match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(text) => cudarc::nvrtc::Ptx::from_src(text),
        None => {
            let ptx = compile(family, major, minor)?;
            if let Some(f) = &file {
                store(f, &ptx.to_src());
            }
            ptx
        }
    };
    map.insert((family, major, minor), ptx.clone());
    Ok(ptx)
}

/// `$LOWBIT_CACHE_DIR`, else `$XDG_CACHE_HOME/lowbit`, else `~/.cache/lowbit`; the file for this source.
fn disk_cache_file(family: &str, major: i32, minor: i32) -> Option<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = env("LOWBIT_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("lowbit")))
        .or_else(|| env("HOME").map(|d| std::path::PathBuf::from(d).join(".cache/lowbit")))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (source(family), major, minor, env!("CARGO_PKG_VERSION")).hash(&mut h);
    Some(dir.join(format!(
        "cuda-{family}-{:016x}-sm{major}{minor}.ptx",
        h.finish()
    )))
}

/// Writes the cache file atomically (a temporary file renamed into place); a failure only costs a
/// recompilation next time.
fn store(file: &std::path::Path, ptx: &str) {
    use std::io::Write;
    let Some(dir) = file.parent() else { return };
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| tempfile::NamedTempFile::new_in(dir))
        .and_then(|mut t| {
            t.write_all(ptx.as_bytes())?;
            t.persist(file).map_err(|e| e.error)
        });
    if let Err(e) = written {
        tracing::debug!("CUDA kernel cache not written to {}: {e}", file.display());
    }
}

/// Compiles a kernel family for `sm_{major}{minor}` (exact IEEE division and square root, no flush to
/// zero: the kernels flush explicitly where bitsandbytes' bytes need it).
pub fn compile(
    family: &str,
    major: i32,
    minor: i32,
) -> std::result::Result<cudarc::nvrtc::Ptx, String> {
    let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    guarded(|| cudarc::nvrtc::compile_ptx_with_opts(source(family), opts))?
        .map_err(|e| format!("NVRTC could not compile the {family} kernels for {arch}: {e}"))
}

/// Small constant tables every call shares, uploaded once.
pub struct Tables {
    /// NF4 thresholds (15), then FP4 thresholds (7) padded to 15.
    pub thresholds: [CudaSlice<f32>; 2],
    pub fp4_bits: CudaSlice<u8>,
    /// Dequantization tables of NF4 and FP4.
    pub dequant: [CudaSlice<f32>; 2],
}

/// An opened device.
pub struct Cuda {
    pub id: Arc<str>,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// The loaded programs, by family (`FAMILIES`), loaded on first use.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, Kernel>>,
    pub tables: Tables,
    blas: OnceLock<Option<super::blas::Blas>>,
    pub name: String,
    pub capability: (i32, i32),
    /// Streaming multiprocessors (persistent kernels launch a few blocks per multiprocessor).
    pub multiprocessors: u32,
    /// Recorded steps (CUDA graphs).
    pub steps: super::steps::Steps,
    /// Kernels are launched with programmatic dependent launch (sm_90 and later, unless
    /// `LOWBIT_CUDA_PDL=0`): each may start while the one before it finishes (`pdl_entry` in
    /// kernels/common.cuh waits for that one's results before touching memory).
    pdl: bool,
}

/// A loaded kernel and the byte size of each of its parameters, where the driver reports them.
#[derive(Clone)]
struct Kernel {
    func: CudaFunction,
    params: Option<Vec<usize>>,
    /// The dynamic shared memory this kernel may use (raised past the default 48 KiB on demand).
    shared_limit: u32,
}

/// Dynamic shared memory a kernel may use without raising its limit.
const DEFAULT_SHARED_LIMIT: u32 = 48 << 10;

/// The byte sizes of `f`'s parameters, asked one index at a time until the driver says there is no such
/// parameter (the CUDA 13.0 API has no parameter count; compute-sanitizer lists that one expected
/// CUDA_ERROR_INVALID_VALUE per kernel load). `None` where the driver predates `cuFuncGetParamInfo`.
fn param_sizes(f: &CudaFunction) -> Option<Vec<usize>> {
    use cudarc::driver::sys::{CUresult, cuFuncGetParamInfo};
    guarded(|| {
        let mut sizes = Vec::new();
        loop {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: `f` is a loaded function; the driver writes the two out-parameters or returns an error
            // past the last parameter.
            let r =
                unsafe { cuFuncGetParamInfo(f.cu_function(), sizes.len(), &mut offset, &mut size) };
            if r != CUresult::CUDA_SUCCESS {
                return (r == CUresult::CUDA_ERROR_INVALID_VALUE).then_some(sizes);
            }
            sizes.push(size);
        }
    })
    .ok()
    .flatten()
}

/// A kernel argument: device pointers travel as 64-bit addresses.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    U64(u64),
    U32(u32),
    I32(i32),
    F32(f32),
}

impl Arg {
    /// The value's bytes in the low end of a u64.
    fn bits(&self) -> u64 {
        match *self {
            Arg::Ptr(v) | Arg::U64(v) => v,
            Arg::U32(v) => u64::from(v),
            Arg::I32(v) => u64::from(v as u32),
            Arg::F32(v) => u64::from(v.to_bits()),
        }
    }

    fn size(&self) -> usize {
        match self {
            Arg::Ptr(_) | Arg::U64(_) => 8,
            Arg::U32(_) | Arg::I32(_) | Arg::F32(_) => 4,
        }
    }
}

impl Cuda {
    /// Opens device `index` (the process shares one opened device per index).
    pub fn open(index: usize) -> std::result::Result<Arc<Cuda>, String> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Cuda>>>> = OnceLock::new();
        let open = OPEN.get_or_init(Default::default);
        let mut map = open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&index) {
            return Ok(c.clone());
        }
        if let Some(reason) = unavailable_reason() {
            return Err(reason);
        }
        let c = Arc::new(guarded(|| Cuda::init(index))??);
        map.insert(index, c.clone());
        Ok(c)
    }

    fn init(index: usize) -> std::result::Result<Cuda, String> {
        let e = |what: &str, err: cudarc::driver::DriverError| format!("{what}: {err}");
        let ctx = CudaContext::new(index).map_err(|err| e("creating the CUDA context", err))?;
        // One stream orders every op of this device: no cross-stream events are needed.
        // SAFETY: all work of this backend runs on `stream`, so per-slice events add nothing.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own, not the legacy default stream, which cannot be captured into a graph
        // (recorded steps, steps.rs).
        let stream = ctx
            .new_stream()
            .map_err(|err| e("creating a stream", err))?;
        let capture_stream = ctx
            .new_stream()
            .map_err(|err| e("creating a stream", err))?;
        let capability = ctx
            .compute_capability()
            .map_err(|err| e("reading the compute capability", err))?;
        let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let multiprocessors = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|err| e("reading the multiprocessor count", err))?
            .max(1) as u32;
        let up = |v: &[f32]| {
            stream
                .clone_htod(v)
                .map_err(|err| e("uploading tables", err))
        };
        let mut fp4_thr = [0.0f32; 15];
        fp4_thr[..7].copy_from_slice(&FP4_THRESHOLDS);
        let tables = Tables {
            thresholds: [up(&NF4_THRESHOLDS)?, up(&fp4_thr)?],
            fp4_bits: stream
                .clone_htod(&FP4_BITS_BY_RANK)
                .map_err(|err| e("uploading tables", err))?,
            dequant: [
                up(FourBitType::Nf4.dequant_table())?,
                up(FourBitType::Fp4.dequant_table())?,
            ],
        };
        // The smallest program, compiled and loaded now: a toolkit that cannot build code for this GPU makes
        // the device unavailable at open (so `auto` moves on) instead of failing its first op.
        let quant = ptx_for("quant", capability.0, capability.1)?;
        let quant = ctx
            .load_module(quant)
            .map_err(|err| e("loading the compiled kernels", err))?;
        Ok(Cuda {
            id: format!("cuda:{index}").into(),
            ctx,
            stream,
            modules: Mutex::new(HashMap::from([("quant", quant)])),
            functions: Mutex::new(HashMap::new()),
            tables,
            blas: OnceLock::new(),
            name,
            capability,
            multiprocessors,
            steps: super::steps::Steps::new(capture_stream),
            pdl: capability.0 >= 9 && std::env::var("LOWBIT_CUDA_PDL").map_or(true, |v| v != "0"),
        })
    }

    /// The device error for a failed driver call of `op`; out-of-memory is its own kind (the runtime splits).
    pub fn error(&self, op: &str, err: cudarc::driver::DriverError) -> crate::Error {
        use cudarc::driver::sys::CUresult;
        let e = match err.0 {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                DeviceError::out_of_memory(&*self.id, op, 0, self.free_memory())
            }
            _ => DeviceError::failed(&*self.id, op, err.to_string()),
        };
        crate::Error::Device(e)
    }

    /// cuBLAS on this device's stream, opened on first use; `None` without libcublas, and while this thread
    /// records a step (the handle queues on the main stream, not the capture).
    pub fn blas(&self) -> Option<&super::blas::Blas> {
        if self.steps.recording() {
            return None;
        }
        self.blas
            .get_or_init(|| super::blas::Blas::open(self))
            .as_ref()
    }

    pub fn free_memory(&self) -> Option<u64> {
        self.ctx.mem_get_info().ok().map(|(free, _)| free as u64)
    }

    /// The program of `family`, compiled (or read from the disk cache) and loaded on first use.
    fn module(&self, family: &'static str) -> Result<Arc<CudaModule>> {
        let mut m = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = m.get(family) {
            return Ok(module.clone());
        }
        let (major, minor) = self.capability;
        let ptx = ptx_for(family, major, minor).map_err(|reason| {
            crate::Error::Device(DeviceError::failed(&*self.id, family, reason))
        })?;
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| self.error(family, e))?;
        m.insert(family, module.clone());
        Ok(module)
    }

    fn function(&self, name: &str) -> Result<Kernel> {
        let mut f = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = f.get(name) {
            return Ok(k.clone());
        }
        let func = self
            .module(family_of(name))?
            .load_function(name)
            .map_err(|e| self.error(name, e))?;
        let k = Kernel {
            params: param_sizes(&func),
            func,
            shared_limit: DEFAULT_SHARED_LIMIT,
        };
        f.insert(name.to_string(), k.clone());
        Ok(k)
    }

    /// How many blocks of `block` threads of kernel `name` (with no dynamic shared memory) the device runs
    /// at once: the grid of a persistent kernel, whose blocks stride over the work in one wave (a block
    /// that fills a shared-memory table first does so once, not once per slice of the input).
    pub fn resident_grid(&self, name: &str, block: u32) -> Result<u32> {
        let per_sm = self
            .function(name)?
            .func
            .occupancy_max_active_blocks_per_multiprocessor(block, 0, None)
            .map_err(|e| self.error(name, e))?;
        Ok(per_sm.max(1) * self.multiprocessors)
    }

    /// Queues kernel `name` on the stream (no wait).
    pub fn launch(&self, name: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        self.launch_shared(name, grid, block, 0, args)
    }

    /// Raises `name`'s dynamic shared memory limit to `bytes` (once per kernel and size).
    fn allow_shared(&self, name: &str, bytes: u32) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX;
        let mut f = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = f.get_mut(name) else {
            return Ok(());
        };
        if k.shared_limit < bytes {
            k.func
                .set_attribute(MAX, bytes as i32)
                .map_err(|e| self.error(name, e))?;
            k.shared_limit = bytes;
        }
        Ok(())
    }

    /// Queues kernel `name` with `shared` bytes of dynamic shared memory.
    pub fn launch_shared(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        let kernel = self.function(name)?;
        if shared > kernel.shared_limit {
            self.allow_shared(name, shared)?;
        }
        // A parameter list that does not match the kernel's would make the driver read past it: refuse it.
        if let Some(sizes) = &kernel.params {
            let given: Vec<usize> = args.iter().map(Arg::size).collect();
            if &given != sizes {
                return Err(crate::Error::Device(DeviceError::failed(
                    &*self.id,
                    name,
                    format!(
                        "kernel takes parameters of {sizes:?} bytes, the launch passed {given:?}"
                    ),
                )));
            }
        }
        use cudarc::driver::sys;
        // Each argument in an 8-byte slot of its own; the driver reads as many bytes as the parameter has
        // (the low ones: little-endian).
        let mut slots: Vec<u64> = args.iter().map(Arg::bits).collect();
        let mut params: Vec<*mut std::ffi::c_void> =
            slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        // SAFETY: a zeroed attribute value is valid (a union of plain integers).
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: 1,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shared,
            hStream: self.queue().cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        self.ctx.bind_to_thread().map_err(|e| self.error(name, e))?;
        // SAFETY: every kernel's parameter list is the `args` its caller passes (the sizes are checked
        // above where the driver reports them, and by the conformance suite), each slot outlives the call,
        // and every pointer is a live allocation of this context holding the bytes the op layer validated.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                kernel.func.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| self.error(name, e))
    }

    /// Address of a table slice.
    pub fn addr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    pub fn synchronize(&self) -> Result<()> {
        self.check_not_recording("synchronize")?;
        self.stream
            .synchronize()
            .map_err(|e| self.error("synchronize", e))
    }
}
