//! Finding and opening wgpu adapters: enumeration for `lowbit devices` and discovery, and one opened device
//! per adapter for the whole process.

use super::{Gpu, WgpuBackend};
use crate::{Error, Result};
use std::sync::{Arc, Mutex};

/// What `lowbit devices` shows about one adapter.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub vendor: u32,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub shader_f16: bool,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamp_query: bool,
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// The adapters of `backends` in enumeration order. Device discovery (`vulkan:N`) and [`WgpuBackend::open`]
/// both list adapters here, so an index means the same adapter to both.
pub(crate) fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance(backends).enumerate_adapters(backends))
}

/// The `--device` kind of a single wgpu backend.
fn device_kind(backends: wgpu::Backends) -> &'static str {
    if backends == wgpu::Backends::VULKAN {
        "vulkan"
    } else if backends == wgpu::Backends::METAL {
        "metal"
    } else if backends == wgpu::Backends::DX12 {
        "dx12"
    } else {
        "wgpu"
    }
}

/// A readable name for a backend set ("Vulkan", "Metal", ...).
fn backends_name(backends: wgpu::Backends) -> String {
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "Vulkan"),
        (wgpu::Backends::METAL, "Metal"),
        (wgpu::Backends::DX12, "DX12"),
        (wgpu::Backends::GL, "GL"),
    ]
    .iter()
    .filter(|(b, _)| backends.contains(*b))
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        format!("{backends:?}")
    } else {
        names.join("/")
    }
}

/// What to install when no adapter shows up.
fn install_hint(backends: wgpu::Backends) -> &'static str {
    if backends.contains(wgpu::Backends::METAL) {
        "a Mac with Metal support is required"
    } else if backends.contains(wgpu::Backends::VULKAN) {
        "install mesa-vulkan-drivers libvulkan1 (or the GPU vendor's Vulkan driver)"
    } else {
        "install a driver for the requested backend"
    }
}

impl WgpuBackend {
    /// Lists the adapters of `backends` with their capabilities.
    pub fn enumerate(backends: wgpu::Backends) -> Vec<AdapterSummary> {
        adapters(backends)
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let info = a.get_info();
                let limits = a.limits();
                let features = a.features();
                AdapterSummary {
                    index,
                    name: info.name,
                    backend: format!("{:?}", info.backend),
                    vendor: info.vendor,
                    device_type: format!("{:?}", info.device_type),
                    driver: info.driver,
                    driver_info: info.driver_info,
                    max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                    max_buffer_size: limits.max_buffer_size,
                    shader_f16: features.contains(wgpu::Features::SHADER_F16),
                    subgroup: features.contains(wgpu::Features::SUBGROUP),
                    subgroup_min_size: info.subgroup_min_size,
                    subgroup_max_size: info.subgroup_max_size,
                    timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                }
            })
            .collect()
    }

    /// Opens adapter `adapter_index` of `backends` (ask for the backend you mean: on Linux
    /// `wgpu::Backends::VULKAN`).
    pub fn open(backends: wgpu::Backends, adapter_index: usize) -> Result<WgpuBackend> {
        // One device and queue per adapter for the whole process: opening it again returns the same
        // context (no per-call device creation), and creation is serialised because some drivers do not
        // tolerate concurrent instance/device creation in one process.
        // The backend itself is kept, so its MPS GEMM (macOS) is created once per device too.
        static OPENED: Mutex<Vec<(wgpu::Backends, usize, WgpuBackend)>> = Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, backend)) = opened
            .iter()
            .find(|(b, i, _)| *b == backends && *i == adapter_index)
        {
            return Ok(backend.clone());
        }
        let list = adapters(backends);
        if list.is_empty() {
            return Err(Error::invalid(
                "wgpu",
                format!(
                    "no {} adapter found: {}",
                    backends_name(backends),
                    install_hint(backends)
                ),
            ));
        }
        let count = list.len();
        let adapter = list.into_iter().nth(adapter_index).ok_or_else(|| {
            Error::invalid(
                "wgpu",
                format!("adapter index {adapter_index} out of range: {count} adapter(s) found"),
            )
        })?;
        let backend = WgpuBackend {
            gpu: Arc::new(Gpu::new(&adapter)?),
            id: format!("{}:{adapter_index}", device_kind(backends)).into(),
            #[cfg(target_os = "macos")]
            mps: Arc::default(),
        };
        opened.push((backends, adapter_index, backend.clone()));
        Ok(backend)
    }

    /// Opens the adapter a discovered device names (`vulkan:N`, `metal:N`, `dx12:N`): the same context the
    /// runtime's device uses.
    pub fn open_device(info: &crate::capability::DeviceInfo) -> Result<WgpuBackend> {
        let backends = match info.backend.as_str() {
            "vulkan" => wgpu::Backends::VULKAN,
            "metal" => wgpu::Backends::METAL,
            "dx12" => wgpu::Backends::DX12,
            other => {
                return Err(Error::invalid(
                    "wgpu",
                    format!(
                        "{} is a {other} device, not a wgpu adapter (vulkan, metal or dx12)",
                        info.id
                    ),
                ));
            }
        };
        WgpuBackend::open(backends, info.index.unwrap_or(0))
    }
}
