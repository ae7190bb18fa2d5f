//! Choosing a device: `auto` (Metal > CUDA > other GPU > CPU, available devices only), or a name
//! (`cpu`, `metal`, `cuda:0`, `vulkan:1`, `dx12`). `LOWBIT_DEVICE` and the CLI's `--device` use these names.

use super::device::Device;
use super::discovery;
use super::policy::RecoveryPolicy;
use crate::Result;
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::capability::DeviceError;
use crate::capability::{DeviceInfo, DeviceType};
use std::sync::Arc;

/// `LOWBIT_DEVICE`: the process's device (`auto` when unset).
pub const ENV_DEVICE: &str = "LOWBIT_DEVICE";

/// A parsed device name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    /// A backend (`cpu`, `vulkan`, `metal`, `dx12`, `cuda`) and optionally the adapter index; without an
    /// index, the first available device of that backend.
    Named {
        backend: String,
        index: Option<usize>,
    },
}

const BACKENDS: &[&str] = &["cpu", "vulkan", "metal", "dx12", "cuda"];

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `metal`, `cuda:0`, `vulkan:1`, `dx12` (case-insensitive).
    pub fn parse(s: &str) -> Result<DeviceSpec> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s == "auto" {
            return Ok(DeviceSpec::Auto);
        }
        let (backend, index) = match s.split_once(':') {
            Some((b, i)) => (b, Some(i)),
            None => (s.as_str(), None),
        };
        let bad = || {
            crate::Error::Device(DeviceError::NotFound {
                requested: s.clone(),
                known: format!(
                    "auto, {} (with an optional :N adapter index, e.g. vulkan:1)",
                    BACKENDS.join(", ")
                ),
            })
        };
        if !BACKENDS.contains(&backend) {
            return Err(bad());
        }
        let index = match index {
            None => None,
            Some(i) => Some(i.parse::<usize>().map_err(|_| bad())?),
        };
        if backend == "cpu" && index.is_some_and(|i| i != 0) {
            return Err(bad());
        }
        Ok(DeviceSpec::Named {
            backend: backend.to_string(),
            index,
        })
    }
}

/// The devices `auto` would try, best first: Metal, then CUDA, then other GPUs (discrete before integrated),
/// then the CPU. Software GPUs (lavapipe) are skipped: the CPU backend beats them.
pub fn auto_candidates(devices: &[DeviceInfo]) -> Vec<&DeviceInfo> {
    let rank = |d: &DeviceInfo| -> Option<u8> {
        if !d.available {
            return None;
        }
        match (d.backend.as_str(), d.device_type) {
            ("cpu", _) => Some(9),
            (_, DeviceType::SoftwareGpu) | (_, DeviceType::Accelerator) => None,
            ("metal", _) => Some(0),
            ("cuda", _) => Some(1),
            (_, DeviceType::DiscreteGpu) => Some(2),
            (_, DeviceType::IntegratedGpu) => Some(3),
            (_, _) => Some(4),
        }
    };
    let mut v: Vec<(u8, &DeviceInfo)> = devices
        .iter()
        .filter_map(|d| rank(d).map(|r| (r, d)))
        .collect();
    v.sort_by_key(|(r, _)| *r);
    v.into_iter().map(|(_, d)| d).collect()
}

/// The device a named spec refers to, among `devices`. Unknown or unavailable: an error listing what exists.
pub fn resolve<'a>(spec: &DeviceSpec, devices: &'a [DeviceInfo]) -> Result<&'a DeviceInfo> {
    let DeviceSpec::Named { backend, index } = spec else {
        return auto_candidates(devices)
            .into_iter()
            .next()
            .ok_or_else(|| not_found("auto", devices));
    };
    let requested = match index {
        Some(i) => format!("{backend}:{i}"),
        None => backend.clone(),
    };
    let of_backend = devices.iter().filter(|d| &d.backend == backend);
    let found = match index {
        // `cpu:0` is the CPU.
        Some(i) if backend != "cpu" => of_backend.clone().find(|d| d.index == Some(*i)),
        _ => of_backend.clone().find(|d| d.available),
    };
    match found {
        Some(d) if d.available => Ok(d),
        Some(d) => Err(crate::Error::Device(DeviceError::PlatformUnavailable {
            device: d.id.clone(),
            reason: format!(
                "{}; devices on this machine: {}",
                d.reason.as_deref().unwrap_or("unavailable"),
                known(devices)
            ),
        })),
        None => match of_backend.clone().next() {
            Some(d) if !d.available => {
                Err(crate::Error::Device(DeviceError::PlatformUnavailable {
                    device: requested,
                    reason: format!(
                        "{}; devices on this machine: {}",
                        d.reason.as_deref().unwrap_or("unavailable"),
                        known(devices)
                    ),
                }))
            }
            _ => Err(not_found(&requested, devices)),
        },
    }
}

fn known(devices: &[DeviceInfo]) -> String {
    devices
        .iter()
        .map(|d| {
            if d.available {
                d.id.clone()
            } else {
                format!("{} (unavailable)", d.id)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_found(requested: &str, devices: &[DeviceInfo]) -> crate::Error {
    crate::Error::Device(DeviceError::NotFound {
        requested: requested.to_string(),
        known: known(devices),
    })
}

/// Creates the backend for a discovered device.
pub fn open_backend(info: &DeviceInfo) -> Result<Arc<dyn Backend>> {
    match info.backend.as_str() {
        "cpu" => Ok(Arc::new(CpuBackend)),
        #[cfg(feature = "wgpu")]
        "vulkan" | "metal" | "dx12" => crate::backend::wgpu::WgpuBackend::open_device(info)
            .map(|b| Arc::new(b) as Arc<dyn Backend>)
            .map_err(|e| {
                crate::Error::Device(DeviceError::InitFailed {
                    device: info.id.clone(),
                    reason: e.to_string(),
                })
            }),
        #[cfg(feature = "cuda")]
        "cuda" => crate::backend::cuda::CudaBackend::open(info.index.unwrap_or(0))
            .map(|b| Arc::new(b) as Arc<dyn Backend>),
        _ => Err(crate::Error::Device(DeviceError::PlatformUnavailable {
            device: info.id.clone(),
            reason: info
                .reason
                .clone()
                .unwrap_or_else(|| format!("no {} backend in this build", info.backend)),
        })),
    }
}

/// What `auto` chose and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AutoChoice {
    pub id: String,
    pub reason: String,
}

/// Opens the best device among `devices`: tries [`auto_candidates`] in order; the CPU always opens.
pub fn auto_select(devices: &[DeviceInfo], policy: RecoveryPolicy) -> (Device, AutoChoice) {
    let mut skipped = Vec::new();
    for info in auto_candidates(devices) {
        match open_backend(info) {
            Ok(backend) => {
                let software: Vec<String> = devices
                    .iter()
                    .filter(|d| d.available && d.device_type == DeviceType::SoftwareGpu)
                    .map(|d| format!("{} ({})", d.id, d.name))
                    .collect();
                let why = if info.backend != "cpu" {
                    "highest-priority available device (Metal > CUDA > other GPU > CPU)".to_string()
                } else if software.is_empty() {
                    "no usable GPU".to_string()
                } else {
                    format!(
                        "no usable GPU; software GPUs run on the CPU too and are slower than the CPU \
                         backend: {}",
                        software.join(", ")
                    )
                };
                let reason = if skipped.is_empty() {
                    why.to_string()
                } else {
                    format!("{why}; skipped {}", skipped.join("; "))
                };
                let choice = AutoChoice {
                    id: info.id.clone(),
                    reason,
                };
                return (Device::with_info(backend, info.clone(), policy), choice);
            }
            Err(e) => skipped.push(format!("{}: {e}", info.id)),
        }
    }
    let choice = AutoChoice {
        id: "cpu".into(),
        reason: format!("no device could be opened; skipped {}", skipped.join("; ")),
    };
    (
        Device::with_info(Arc::new(CpuBackend), discovery::cpu_info(), policy),
        choice,
    )
}

impl Device {
    /// The best available device (Metal > CUDA > other GPU > CPU); never fails, the CPU is always there.
    pub fn auto() -> Device {
        let policy = RecoveryPolicy::from_env().unwrap_or_default();
        auto_select(&discovery::devices(), policy).0
    }

    /// The device named `spec` (`auto`, `cpu`, `metal`, `cuda:0`, `vulkan:1`, `dx12`), with the recovery
    /// policy from the environment.
    pub fn open(spec: &str) -> Result<Device> {
        let policy = RecoveryPolicy::from_env()?;
        Device::open_in(spec, &discovery::devices(), policy)
    }

    /// [`open`](Self::open) among given devices, with a given policy (pure apart from opening the backend).
    pub fn open_in(spec: &str, devices: &[DeviceInfo], policy: RecoveryPolicy) -> Result<Device> {
        match DeviceSpec::parse(spec)? {
            DeviceSpec::Auto => Ok(auto_select(devices, policy).0),
            named => {
                let info = resolve(&named, devices)?;
                let backend = open_backend(info)?;
                Ok(Device::with_info(backend, info.clone(), policy))
            }
        }
    }

    /// The device named by `LOWBIT_DEVICE` (`auto` when unset).
    pub fn from_env() -> Result<Device> {
        Device::open(&std::env::var(ENV_DEVICE).unwrap_or_default())
    }
}
