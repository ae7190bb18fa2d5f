//! `Device::recorded_step`'s protocol, with the fault-injecting test backend pretending to record (the
//! CPU's ops, stored outputs as "recordings"): a key's first step runs op by op, the second is recorded,
//! later ones replay without running the step; a recording that fails is logged, counted as a fallback of
//! `step`, never retried for that key, and the step then runs op by op from the same state; while
//! recording, a failing op neither retries nor falls back to the CPU (nothing can wait or read back inside a
//! recording). CUDA's real recordings (graphs) are tested in tests/model_logits.rs against op-by-op steps
//! on the H200.

#[path = "common/faulty.rs"]
mod faulty;

use faulty::{Faults, Faulty};
use lowbit::Device;
use lowbit::device_tensor::DeviceTensor;
use lowbit::runtime::{OpKind, RecoveryPolicy, StepArgs, StepKey, StepRun};
use lowbit::tensor::Tensor;
use std::sync::Arc;

/// A device over a pretend recorder (`id` unique per test: statistics are per device id).
fn device(id: &str, fail_recording: bool, fail_ops_while_recording: bool) -> Device {
    let faults = Faults {
        record_steps: true,
        fail_recording,
        fail_ops_while_recording,
        ..Faults::default()
    };
    Device::from_backend(Arc::new(Faulty::new(id, faults))).with_policy(RecoveryPolicy::default())
}

/// The steps' input: four ones on `dev`.
fn ones(dev: &Device) -> DeviceTensor {
    dev.to_device(&Tensor::f32(vec![4], vec![1.0; 4]).unwrap())
        .unwrap()
}

/// Runs one step (`x + pos`, the state it reads reset by the step itself) and returns its value and how it ran.
fn step(dev: &Device, key: u64, pos: usize, x: &DeviceTensor, runs: &mut u32) -> (f32, StepRun) {
    let args = StepArgs {
        pos,
        tokens: vec![7],
    };
    let (y, how) = dev
        .recorded_step(StepKey(key), &args, &mut || {
            *runs += 1;
            let p = dev.to_device(&Tensor::f32(vec![4], vec![pos as f32; 4])?)?;
            dev.add(x, &p)
        })
        .unwrap();
    (
        dev.to_host(&y).unwrap().floats("t").unwrap().to_f32_vec()[0],
        how,
    )
}

#[test]
fn first_step_runs_op_by_op_second_is_recorded_then_replayed() {
    let dev = device("recorder-ok", false, false);
    let x = ones(&dev);
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs), (4.0, StepRun::OpByOp));
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::Recorded));
    // The pretend recording replays its stored output; a real one recomputes from the new arguments.
    assert_eq!(step(&dev, 1, 5, &x, &mut runs).1, StepRun::Replayed);
    assert_eq!(runs, 2, "a replay must not run the step");
    // Another key starts over.
    assert_eq!(step(&dev, 2, 9, &x, &mut runs), (10.0, StepRun::OpByOp));
    let s = dev.stats().op(OpKind::Step);
    assert_eq!((s.runs, s.fallbacks, s.failures), (4, 0, 0));
}

#[test]
fn a_failed_recording_is_counted_and_the_step_runs_op_by_op_from_the_same_state() {
    let dev = device("recorder-fails", true, false);
    let x = ones(&dev);
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs), (4.0, StepRun::OpByOp));
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::OpByOp));
    assert_eq!(runs, 3, "the failed recording's step runs again op by op");
    // The key is not recorded again.
    assert_eq!(step(&dev, 1, 5, &x, &mut runs), (6.0, StepRun::OpByOp));
    assert_eq!(runs, 4);
    let s = dev.stats().op(OpKind::Step);
    assert_eq!((s.runs, s.fallbacks, s.failures), (3, 1, 0));
    assert_eq!(s.errors.values().sum::<u64>(), 1);
}

#[test]
fn ops_that_fail_while_recording_neither_retry_nor_fall_back() {
    let dev = device("recorder-op-fails", false, true);
    let x = ones(&dev);
    let mut runs = 0;
    assert_eq!(step(&dev, 1, 3, &x, &mut runs).1, StepRun::OpByOp);
    // Recording: the add fails and is not run on the CPU; the step then runs op by op and succeeds.
    assert_eq!(step(&dev, 1, 4, &x, &mut runs), (5.0, StepRun::OpByOp));
    let add = dev.stats().op(OpKind::Add);
    assert_eq!((add.fallbacks, add.retries, add.failures), (0, 0, 1));
    assert_eq!(dev.stats().op(OpKind::Step).fallbacks, 1);
}
