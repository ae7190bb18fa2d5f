//! Every golden case on the CPU, through the fast path (what `Device::cpu()` runs) and through the reference
//! (the executable spec alone).

mod common;

use common::golden_cases as cases;
use lowbit::Device;
use lowbit::backend::cpu::ReferenceBackend;
use std::sync::Arc;

fn reference() -> Device {
    Device::from_backend(Arc::new(ReferenceBackend))
}

#[test]
fn golden_fourbit() {
    cases::fourbit(&Device::cpu(), "");
    cases::fourbit(&reference(), "reference-");
}

#[test]
fn golden_blockwise() {
    cases::blockwise(&Device::cpu(), "");
    cases::blockwise(&reference(), "reference-");
}

#[test]
fn golden_int8() {
    cases::int8(&Device::cpu(), "");
    cases::int8(&reference(), "reference-");
}

#[test]
fn golden_bitnet() {
    cases::bitnet(&Device::cpu(), "");
    cases::bitnet(&reference(), "reference-");
}
