#![cfg(feature = "cuda")]
//! The golden vectors (made by bitsandbytes' CUDA kernels) through the CUDA backend: the same checks as
//! `golden.rs`, byte for byte for quantization, within the stated tolerances for float outputs. The device is
//! strict and every test asserts that nothing fell back to the CPU. Without a CUDA device the tests say
//! "skipped: no CUDA device".

mod common;
mod cuda_common;

use common::golden_cases as cases;
use lowbit::Device;

fn on_cuda(case: impl Fn(&Device)) {
    cases::on_strict_device(cuda_common::cuda_device(), case);
}

#[test]
fn cuda_golden_fourbit() {
    on_cuda(|dev| cases::fourbit(dev, "cuda-"));
}

#[test]
fn cuda_golden_blockwise() {
    on_cuda(|dev| cases::blockwise(dev, "cuda-"));
}

#[test]
fn cuda_golden_int8() {
    on_cuda(|dev| cases::int8(dev, "cuda-"));
}

#[test]
fn cuda_golden_bitnet() {
    on_cuda(|dev| cases::bitnet(dev, "cuda-"));
}
