#![cfg(feature = "wgpu")]
//! The golden vectors (made by bitsandbytes' CUDA kernels) through the wgpu backend: the same checks as
//! `golden.rs`, byte for byte for quantization, within the stated tolerances for float outputs.

mod common;
mod wgpu_common;

use common::golden_cases as cases;
use lowbit::Device;
use std::sync::Arc;

fn gpu_device() -> Option<Device> {
    wgpu_common::gpu().map(|g| Device::from_backend(Arc::new(g)))
}

#[test]
fn wgpu_golden_fourbit() {
    if let Some(dev) = gpu_device() {
        cases::fourbit(&dev, "wgpu-");
    }
}

#[test]
fn wgpu_golden_blockwise() {
    if let Some(dev) = gpu_device() {
        cases::blockwise(&dev, "wgpu-");
    }
}

#[test]
fn wgpu_golden_int8() {
    if let Some(dev) = gpu_device() {
        cases::int8(&dev, "wgpu-");
    }
}

#[test]
fn wgpu_golden_bitnet() {
    if let Some(dev) = gpu_device() {
        cases::bitnet(&dev, "wgpu-");
    }
}
