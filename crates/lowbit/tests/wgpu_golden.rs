#![cfg(feature = "wgpu")]
//! The golden vectors (made by bitsandbytes' CUDA kernels) through the wgpu backend: the same checks as
//! `golden.rs`, byte for byte for quantization, within the stated tolerances for float outputs. The device is
//! strict and every test asserts that nothing fell back to the CPU, so a failing GPU kernel fails the test.

mod common;
mod wgpu_common;

use common::golden_cases as cases;
use lowbit::Device;

fn on_gpu(case: impl Fn(&Device)) {
    cases::on_strict_device(wgpu_common::gpu_device(), case);
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
