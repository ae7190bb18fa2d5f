#![cfg(feature = "wgpu")]
//! The golden vectors (made by bitsandbytes' CUDA kernels) through the wgpu backend: the same checks as
//! `golden.rs`, byte for byte for quantization, within the stated tolerances for float outputs. The device is
//! strict and every test asserts that nothing fell back to the CPU, so a failing GPU kernel fails the test.

mod common;
mod wgpu_common;

use common::golden_cases as cases;
use lowbit::Device;
use lowbit::runtime::RecoveryPolicy;
use std::sync::Arc;

fn gpu_device() -> Option<Device> {
    let strict = RecoveryPolicy {
        strict: true,
        ..RecoveryPolicy::default()
    };
    wgpu_common::gpu().map(|g| Device::from_backend(Arc::new(g)).with_policy(strict))
}

/// Runs `case` on the strict GPU device and asserts that no op fell back to the CPU.
fn on_gpu(case: impl Fn(&Device)) {
    if let Some(dev) = gpu_device() {
        let before: u64 = dev.stats().ops.values().map(|s| s.fallbacks).sum();
        case(&dev);
        let after: u64 = dev.stats().ops.values().map(|s| s.fallbacks).sum();
        assert_eq!(after, before, "a golden case fell back to the CPU");
    }
}

#[test]
fn wgpu_golden_fourbit() {
    on_gpu(|dev| cases::fourbit(dev, "wgpu-"));
}

#[test]
fn wgpu_golden_blockwise() {
    on_gpu(|dev| cases::blockwise(dev, "wgpu-"));
}

#[test]
fn wgpu_golden_int8() {
    on_gpu(|dev| cases::int8(dev, "wgpu-"));
}

#[test]
fn wgpu_golden_bitnet() {
    on_gpu(|dev| cases::bitnet(dev, "wgpu-"));
}
