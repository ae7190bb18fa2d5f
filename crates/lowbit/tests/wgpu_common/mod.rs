//! Opening the test GPU: Vulkan on Linux (lavapipe in CI), Metal on macOS, DX12 on Windows. Without an
//! adapter the tests print a skip line, unless `LOWBIT_REQUIRE_GPU=1`, where that is a failure.
#![allow(dead_code)]

use lowbit::backend::wgpu::WgpuBackend;
use std::sync::OnceLock;

pub fn backends() -> wgpu::Backends {
    if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else if cfg!(windows) {
        wgpu::Backends::DX12
    } else {
        wgpu::Backends::VULKAN
    }
}

pub fn gpu() -> Option<WgpuBackend> {
    static GPU: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| match WgpuBackend::open(backends(), 0) {
        Ok(b) => {
            let info = b.adapter_info();
            println!(
                "gpu: {} ({:?}, {})",
                info.name, info.backend, info.driver_info
            );
            Some(b)
        }
        Err(e) => {
            if std::env::var("LOWBIT_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("LOWBIT_REQUIRE_GPU=1 but no GPU: {e}");
            }
            println!("skipped: no Vulkan adapter ({e})");
            None
        }
    })
    .clone()
}

/// The test GPU as a strict `Device` (errors returned, never a silent CPU fallback), where there is one.
pub fn gpu_device() -> Option<lowbit::Device> {
    let strict = lowbit::runtime::RecoveryPolicy {
        strict: true,
        ..lowbit::runtime::RecoveryPolicy::default()
    };
    gpu().map(|g| lowbit::Device::from_backend(std::sync::Arc::new(g)).with_policy(strict))
}
