//! Finding devices: the CPU (always), each wgpu adapter (Vulkan, Metal, DX12), NVIDIA GPUs for the CUDA
//! backend, and the Apple Neural Engine. Anything missing is listed as unavailable with the reason; nothing
//! here may panic or fail the program.

use crate::backend::cpu::host::command_output;
pub use crate::backend::cpu::host::cpu_info;
use crate::capability::{DeviceInfo, DeviceType};
use std::sync::OnceLock;

/// Every device on this machine: the CPU first, then GPUs and accelerators (available or not, with reasons).
/// Adapters are enumerated once per process; CPU memory is read fresh.
pub fn devices() -> Vec<DeviceInfo> {
    static OTHERS: OnceLock<Vec<DeviceInfo>> = OnceLock::new();
    let others = OTHERS.get_or_init(|| {
        let mut v = gpu_devices();
        v.extend(cuda_devices());
        v.extend(neural_engine());
        v
    });
    std::iter::once(cpu_info())
        .chain(others.iter().cloned())
        .collect()
}

/// PCI vendor ids as Vulkan/DX12 report them.
#[cfg(feature = "wgpu")]
fn vendor_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0x10de => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x106b => "Apple",
        0x5143 => "Qualcomm",
        0x13b5 => "ARM",
        0x1010 => "Imagination",
        0x10005 => "Mesa",
        0x1414 => "Microsoft",
        _ => return None,
    })
}

/// The wgpu backends lowbit uses on this platform, with their `--device` names. On Linux Vulkan is asked for
/// explicitly: wgpu's default set would only show llvmpipe through GL.
#[cfg(feature = "wgpu")]
fn platform_backends() -> Vec<(wgpu::Backends, &'static str)> {
    if cfg!(target_os = "macos") {
        vec![(wgpu::Backends::METAL, "metal")]
    } else if cfg!(target_os = "windows") {
        vec![
            (wgpu::Backends::DX12, "dx12"),
            (wgpu::Backends::VULKAN, "vulkan"),
        ]
    } else {
        vec![(wgpu::Backends::VULKAN, "vulkan")]
    }
}

#[cfg(not(feature = "wgpu"))]
fn gpu_devices() -> Vec<DeviceInfo> {
    vec![
        DeviceInfo::new("wgpu", "wgpu", "Vulkan / Metal / DX12", DeviceType::Other)
            .unavailable("built without the `wgpu` feature; rebuild lowbit with --features wgpu"),
    ]
}

#[cfg(feature = "wgpu")]
fn gpu_devices() -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    for (backends, name) in platform_backends() {
        // A broken driver may panic inside enumeration; that makes the backend unavailable, not the program.
        let found = std::panic::catch_unwind(|| enumerate(backends, name));
        match found {
            Ok(list) if !list.is_empty() => out.extend(list),
            Ok(_) => out.push(
                DeviceInfo::new(name, name, "-", DeviceType::Other)
                    .unavailable(no_adapter_reason(name)),
            ),
            Err(_) => out.push(
                DeviceInfo::new(name, name, "-", DeviceType::Other)
                    .unavailable(format!("the {name} driver crashed while listing adapters")),
            ),
        }
    }
    out
}

/// The adapters of one wgpu backend, in enumeration order (`vulkan:0`, `vulkan:1`, ...).
#[cfg(feature = "wgpu")]
pub fn enumerate(backends: wgpu::Backends, name: &str) -> Vec<DeviceInfo> {
    crate::backend::wgpu::adapters(backends)
        .iter()
        .enumerate()
        .map(|(i, a)| adapter_info(name, i, &a.get_info(), a.features(), &a.limits()))
        .collect()
}

#[cfg(feature = "wgpu")]
fn adapter_info(
    backend: &str,
    index: usize,
    a: &wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: &wgpu::Limits,
) -> DeviceInfo {
    let device_type = match a.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceType::DiscreteGpu,
        wgpu::DeviceType::IntegratedGpu => DeviceType::IntegratedGpu,
        wgpu::DeviceType::VirtualGpu => DeviceType::VirtualGpu,
        wgpu::DeviceType::Cpu => DeviceType::SoftwareGpu,
        wgpu::DeviceType::Other => DeviceType::Other,
    };
    let mut info =
        DeviceInfo::new(format!("{backend}:{index}"), backend, &a.name, device_type).with_all_ops();
    info.index = Some(index);
    info.vendor = Some(
        vendor_name(a.vendor)
            .map(String::from)
            .unwrap_or_else(|| format!("0x{:04x}", a.vendor)),
    );
    let driver = format!("{} {}", a.driver, a.driver_info);
    info.driver = Some(driver.trim().to_string()).filter(|d| !d.is_empty());
    info.unified_memory = matches!(
        device_type,
        DeviceType::IntegratedGpu | DeviceType::SoftwareGpu
    ) || a.vendor == 0x106b;
    info.max_buffer_size = Some(limits.max_buffer_size);
    info.max_storage_binding = Some(limits.max_storage_buffer_binding_size);
    info.f16 = features.contains(wgpu::Features::SHADER_F16);
    // WGSL has no bf16; the kernels widen bf16 to f32 on upload.
    info.bf16 = false;
    if features.contains(wgpu::Features::SUBGROUP) {
        info.subgroup_min = Some(a.subgroup_min_size);
        info.subgroup_max = Some(a.subgroup_max_size);
    }
    if device_type == DeviceType::SoftwareGpu {
        info.reason = Some("software rendering on the CPU; auto prefers the CPU backend".into());
    }
    info
}

#[cfg(feature = "wgpu")]
fn no_adapter_reason(backend: &str) -> String {
    match backend {
        "vulkan" if cfg!(target_os = "linux") && !vulkan_loader_present() => {
            "no Vulkan loader: install libvulkan1 (Debian/Ubuntu) or vulkan-loader (Fedora/Arch)".into()
        }
        "vulkan" => "no Vulkan driver (ICD) found: install your GPU vendor's driver, or mesa-vulkan-drivers \
                     for the lavapipe software device"
            .into(),
        "metal" => "no Metal device found".into(),
        "dx12" => "no DirectX 12 adapter found: update the GPU driver".into(),
        other => format!("no {other} adapter found"),
    }
}

/// Whether `libvulkan.so.1` is in the library path (what wgpu loads).
#[cfg(feature = "wgpu")]
fn vulkan_loader_present() -> bool {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/usr/local/lib",
        ]
        .map(String::from),
    );
    dirs.iter()
        .any(|d| std::path::Path::new(d).join("libvulkan.so.1").exists())
}

/// NVIDIA GPUs: what the CUDA driver reports (available when the driver and NVRTC load), with temperature
/// and throttling from `nvidia-smi`; none when there is no NVIDIA GPU or driver.
fn cuda_devices() -> Vec<DeviceInfo> {
    let smi = nvidia_smi_devices();
    #[cfg(feature = "cuda")]
    {
        match crate::backend::cuda::discover() {
            Some(Ok(found)) => found
                .into_iter()
                .map(|mut d| {
                    if let Some(s) = smi.iter().find(|s| s.index == d.index) {
                        d.temperature_c = s.temperature_c;
                        d.thermal = s.thermal.clone();
                        d.driver = match (&s.driver, &d.driver) {
                            (Some(v), Some(cc)) => Some(format!("{v}, {cc}")),
                            (v, cc) => v.clone().or(cc.clone()),
                        };
                    }
                    d
                })
                .collect(),
            Some(Err(reason)) if smi.is_empty() => vec![
                DeviceInfo::new("cuda:0", "cuda", "NVIDIA GPU", DeviceType::DiscreteGpu)
                    .unavailable(format!("CUDA unavailable: {reason}")),
            ],
            Some(Err(reason)) => smi
                .into_iter()
                .map(|d| d.unavailable(format!("CUDA unavailable: {reason}")))
                .collect(),
            None => smi
                .into_iter()
                .map(|d| {
                    d.unavailable("CUDA unavailable: no NVIDIA driver library (libcuda.so) found")
                })
                .collect(),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        smi.into_iter()
            .map(|d| {
                d.unavailable(
                    "built without the `cuda` feature; rebuild lowbit with --features cuda",
                )
            })
            .collect()
    }
}

/// NVIDIA GPUs as `nvidia-smi` reports them (name, memory, temperature, throttling).
fn nvidia_smi_devices() -> Vec<DeviceInfo> {
    let query = command_output(
        "nvidia-smi",
        &[
            "--query-gpu=index,name,memory.total,memory.free,temperature.gpu,driver_version",
            "--format=csv,noheader,nounits",
        ],
    );
    let throttle = command_output(
        "nvidia-smi",
        &[
            "--query-gpu=clocks_throttle_reasons.active",
            "--format=csv,noheader",
        ],
    );
    let throttle: Vec<String> = throttle
        .map(|s| s.lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_default();
    let gpus: Vec<DeviceInfo> = query
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, free, temp, driver] = f[..] else {
                return None;
            };
            let i: usize = index.parse().ok()?;
            let mib = |s: &str| s.parse::<u64>().ok().map(|m| m * 1024 * 1024);
            let mut info =
                DeviceInfo::new(format!("cuda:{i}"), "cuda", name, DeviceType::DiscreteGpu);
            info.index = Some(i);
            info.vendor = Some("NVIDIA".into());
            info.driver = Some(driver.to_string());
            info.total_memory = mib(total);
            info.available_memory = mib(free);
            info.temperature_c = temp.parse().ok();
            info.thermal = throttle.get(i).map(|t| match t.as_str() {
                "0x0000000000000000" => "not throttled".to_string(),
                other => format!("clock event reasons {other}"),
            });
            Some(info)
        })
        .collect();
    // No NVIDIA GPU: no row (a placeholder "cuda discrete gpu" would claim hardware that is not there).
    gpus
}

/// Apple silicon has a Neural Engine, but no public API runs arbitrary compute on it.
fn neural_engine() -> Vec<DeviceInfo> {
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        vec![
            DeviceInfo::new("ane", "ane", "Apple Neural Engine", DeviceType::Accelerator)
                .unavailable("present; no public compute API; not used"),
        ]
    } else {
        Vec::new()
    }
}
