#![cfg(feature = "wgpu")]
//! The recovery policy on device tensors, in its own process (statistics are per device and process-wide, so
//! the strict conformance suite's zero-fallback checks must not see this test's counted fallback).

mod wgpu_common;

use lowbit::runtime::{OpKind, RecoveryPolicy};
use lowbit::tensor::DType;
use lowbit::{Device, DeviceTensor};
use std::sync::Arc;

fn up(dev: &Device, t: &lowbit::Tensor) -> DeviceTensor {
    dev.to_device(t).unwrap()
}

fn rand(shape: Vec<usize>, scale: f32, seed: u64, dtype: DType) -> lowbit::Tensor {
    lowbit::synth::normal(shape, scale, seed, dtype)
}

fn strict() -> RecoveryPolicy {
    RecoveryPolicy {
        strict: true,
        ..RecoveryPolicy::default()
    }
}

#[test]
fn unsupported_ops_fail_in_strict_mode_and_fall_back_counted_otherwise() {
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = 7;
    let x = rand(vec![2, 16], 1.0, s, DType::F16);
    let w = rand(vec![8, 16], 1.0, s + 1, DType::F16);
    let strict_dev = Device::from_backend(Arc::new(g.clone())).with_policy(strict());
    // Operands of a device that has no f16 linear kernel yet: strict mode names the capability.
    let probe = strict_dev.linear(&up(&strict_dev, &x), &up(&strict_dev, &w), None);
    if probe.is_ok() {
        println!("skipped: this backend runs f16 linear natively, nothing to fall back");
        return;
    }
    let err = probe.unwrap_err().to_string();
    assert!(err.contains("cannot run matmul"), "{err}");
    let relaxed = Device::from_backend(Arc::new(g)).with_policy(RecoveryPolicy {
        strict: false,
        ..RecoveryPolicy::default()
    });
    let before = relaxed.stats().op(OpKind::Matmul).fallbacks;
    let y = relaxed
        .linear(&up(&relaxed, &x), &up(&relaxed, &w), None)
        .unwrap();
    assert_eq!(
        y.device_id(),
        relaxed.id(),
        "the result comes back on the GPU"
    );
    assert_eq!(relaxed.stats().op(OpKind::Matmul).fallbacks, before + 1);
    let want = Device::cpu().matmul(&x, &w, None).unwrap();
    assert_eq!(relaxed.to_host(&y).unwrap(), want);
}
