//! The recovery policy against a fault-injecting backend: retries, out-of-memory chunking, CPU fallback,
//! strict mode, memory budgets and statistics. Every recovered result must equal the CPU's, byte for byte.

#[path = "common/faulty.rs"]
mod faulty;

use faulty::{Faults, Faulty};
use lowbit::format::FourBitType;
use lowbit::runtime::{DeviceError, DeviceErrorKind, OpKind, RecoveryPolicy};
use lowbit::tensor::{FloatVec, Tensor};
use lowbit::{Device, Error};
use rand::RngExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Fresh random values in [-scale, scale), never all zero.
fn random(n: usize, scale: f32) -> Vec<f32> {
    let mut rng = rand::rng();
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn fast_policy() -> RecoveryPolicy {
    RecoveryPolicy {
        initial_backoff: Duration::from_micros(10),
        max_backoff: Duration::from_micros(100),
        min_chunk_bytes: 1,
        ..Default::default()
    }
}

/// A device over a fresh faulty backend with a unique id (statistics are per id).
fn faulty(tag: &str, faults: Faults, policy: RecoveryPolicy) -> (Device, Arc<Faulty>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!("faulty-{tag}-{}", N.fetch_add(1, Ordering::SeqCst));
    let backend = Arc::new(Faulty::new(&name, faults));
    (
        Device::from_backend(backend.clone()).with_policy(policy),
        backend,
    )
}

fn bytes(t: &Tensor) -> Vec<u8> {
    match t.data() {
        lowbit::tensor::TensorData::Float(f) => f.to_le_bytes(),
        other => panic!("expected floats, got {other:?}"),
    }
}

/// Runs every chunkable op on `dev` and compares with the plain CPU backend, byte for byte.
fn assert_all_ops_match_cpu(dev: &Device) {
    let cpu = Device::cpu();
    let x = Tensor::f32(vec![64, 96], random(64 * 96, 3.0)).unwrap();

    // 4-bit, both formats, a block size that does not divide the row length.
    for qt in [FourBitType::Nf4, FourBitType::Fp4] {
        let want = cpu.quantize_4bit(&x, qt, 128, true).unwrap();
        let got = dev.quantize_4bit(&x, qt, 128, true).unwrap();
        assert_eq!(got, want, "quantize_4bit {qt:?}");
        assert_eq!(
            bytes(&dev.dequantize_4bit(&got).unwrap()),
            bytes(&cpu.dequantize_4bit(&want).unwrap()),
            "dequantize_4bit"
        );
        // gemv (batch 1) and matmul (batch 12) against a [40, 96] weight.
        let w = cpu
            .quantize_4bit(
                &Tensor::f32(vec![40, 96], random(40 * 96, 1.0)).unwrap(),
                qt,
                64,
                false,
            )
            .unwrap();
        let bias = Tensor::f32(vec![40], random(40, 1.0)).unwrap();
        for batch in [1usize, 12] {
            let xb = Tensor::f32(vec![batch, 96], random(batch * 96, 1.0)).unwrap();
            assert_eq!(
                bytes(&dev.matmul_4bit(&xb, &w, Some(&bias)).unwrap()),
                bytes(&cpu.matmul_4bit(&xb, &w, Some(&bias)).unwrap()),
                "matmul_4bit batch {batch}"
            );
        }
    }
    // 8-bit blockwise.
    let want = cpu.quantize_blockwise(&x, 256, None).unwrap();
    let got = dev.quantize_blockwise(&x, 256, None).unwrap();
    assert_eq!(got, want, "quantize_blockwise");
    assert_eq!(
        bytes(&dev.dequantize_blockwise(&got, None).unwrap()),
        bytes(&cpu.dequantize_blockwise(&want, None).unwrap()),
        "dequantize_blockwise"
    );
    // Dense.
    let w = Tensor::f32(vec![24, 96], random(24 * 96, 1.0)).unwrap();
    assert_eq!(
        bytes(&dev.matmul(&x, &w, None).unwrap()),
        bytes(&cpu.matmul(&x, &w, None).unwrap()),
        "matmul"
    );
    assert_eq!(
        bytes(&dev.softmax(&x).unwrap()),
        bytes(&cpu.softmax(&x).unwrap()),
        "softmax"
    );
    // LLM.int8() (row-split ops) and BitNet.
    let lin = lowbit::ops::Linear8bitLt::from_weight(
        &cpu,
        &Tensor::f32(vec![20, 96], random(20 * 96, 1.0)).unwrap(),
        None,
        6.0,
    )
    .unwrap();
    assert_eq!(
        bytes(&lin.forward(dev, &x).unwrap()),
        bytes(&lin.forward(&cpu, &x).unwrap()),
        "Linear8bitLt.forward"
    );
    let q8 = cpu.int8_vectorwise_quant(&x, 0.0).unwrap();
    let q8t = Tensor::new(vec![64, 96], q8.q.clone()).unwrap();
    assert_eq!(
        dev.int8_vectorwise_dequant(&q8t, &q8.row_stats).unwrap(),
        cpu.int8_vectorwise_dequant(&q8t, &q8.row_stats).unwrap(),
        "int8_vectorwise_dequant"
    );
    let tw = cpu
        .ternary_quantize(&Tensor::f32(vec![30, 96], random(30 * 96, 1.0)).unwrap())
        .unwrap();
    let layer = lowbit::ops::BitLinear {
        weight: tw,
        bias: Some(random(30, 1.0)),
    };
    assert_eq!(
        bytes(&dev.bitlinear(&x, &layer).unwrap()),
        bytes(&cpu.bitlinear(&x, &layer).unwrap()),
        "bitlinear"
    );
    let g = Tensor::f32(vec![96], random(96, 1.0)).unwrap();
    assert_eq!(
        bytes(&dev.rms_norm(&x, &g, 1e-6).unwrap()),
        bytes(&cpu.rms_norm(&x, &g, 1e-6).unwrap()),
        "rms_norm"
    );
}

#[test]
fn transient_failures_are_retried_with_the_same_result() {
    let (dev, backend) = faulty(
        "transient",
        Faults {
            transient: 2,
            ..Default::default()
        },
        fast_policy(),
    );
    let x = Tensor::f32(vec![4096], random(4096, 2.0)).unwrap();
    let got = dev.quantize_4bit(&x, FourBitType::Nf4, 64, false).unwrap();
    let want = Device::cpu()
        .quantize_4bit(&x, FourBitType::Nf4, 64, false)
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(backend.transient_injected.load(Ordering::SeqCst), 2);
    let s = dev.stats().op(OpKind::Quantize4bit);
    assert_eq!(s.runs, 1);
    assert_eq!(s.retries, 2);
    assert_eq!(s.errors.get("transient"), Some(&2));
    assert_eq!((s.fallbacks, s.failures, s.chunked_runs), (0, 0, 0));
}

#[test]
fn transient_failures_beyond_the_retry_limit_fall_back_to_the_cpu() {
    let policy = RecoveryPolicy {
        max_retries: 2,
        ..fast_policy()
    };
    let (dev, backend) = faulty(
        "transient-many",
        Faults {
            transient: 10,
            ..Default::default()
        },
        policy,
    );
    let x = Tensor::f32(vec![1000], random(1000, 2.0)).unwrap();
    let got = dev.quantize_blockwise(&x, 64, None).unwrap();
    assert_eq!(got, Device::cpu().quantize_blockwise(&x, 64, None).unwrap());
    assert_eq!(backend.transient_injected.load(Ordering::SeqCst), 3);
    let s = dev.stats().op(OpKind::QuantizeBlockwise);
    assert_eq!((s.runs, s.retries, s.fallbacks, s.failures), (1, 2, 1, 0));
    assert_eq!(s.errors.get("transient"), Some(&3));
}

#[test]
fn out_of_memory_splits_every_chunkable_op_with_identical_bytes() {
    let (dev, backend) = faulty(
        "oom",
        Faults {
            oom_above: Some(1000),
            ..Default::default()
        },
        fast_policy(),
    );
    assert_all_ops_match_cpu(&dev);
    assert!(backend.oom_injected.load(Ordering::SeqCst) > 0);
    assert!(
        backend.sizes.lock().unwrap().iter().all(|&n| n <= 1000),
        "a chunk above the injected limit succeeded"
    );
    let stats = dev.stats();
    for op in [
        OpKind::Quantize4bit,
        OpKind::Dequantize4bit,
        OpKind::Gemv4bit,
        OpKind::Matmul4bit,
        OpKind::QuantizeBlockwise,
        OpKind::DequantizeBlockwise,
        OpKind::Matmul,
        OpKind::Softmax,
        OpKind::RmsNorm,
        OpKind::Int8VectorwiseDequant,
        OpKind::Int8LinearMatmul,
        OpKind::Int8MmDequant,
        OpKind::TernaryActQuant,
        OpKind::TernaryMatmul,
    ] {
        let s = stats.op(op);
        assert!(s.runs > 0, "{op:?} never ran");
        assert!(
            s.chunked_runs > 0 && s.chunks > s.chunked_runs,
            "{op:?}: {s:?}"
        );
        assert_eq!((s.fallbacks, s.failures), (0, 0), "{op:?}: {s:?}");
        assert!(
            s.errors.get("out_of_memory").is_some_and(|&n| n > 0),
            "{op:?}"
        );
    }
    // Ops the runtime cannot split (the double-quant nested step is small and fits) never fail.
    assert_eq!(stats.ops.values().map(|s| s.failures).sum::<u64>(), 0);
}

/// A 4-bit batch of 7 rows that only fits one row at a time: the chunks (down to single rows, which run the
/// batch-1 GEMV) join to the unsplit bytes, for both formats, every float dtype and every CPU kernel path
/// (columns a multiple of 32, of 16 only, and of neither).
#[test]
fn four_bit_batch_split_into_single_rows_matches_the_unsplit_bytes() {
    use lowbit::tensor::DType;
    let cpu = Device::cpu();
    for cols in [256usize, 112, 100] {
        let (dev, _) = faulty(
            "rows",
            Faults {
                oom_above: Some(cols),
                ..Default::default()
            },
            fast_policy(),
        );
        for qt in [FourBitType::Nf4, FourBitType::Fp4] {
            let wf = Tensor::f32(vec![40, cols], random(40 * cols, 1.0)).unwrap();
            let w = cpu.quantize_4bit(&wf, qt, 64, false).unwrap();
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let floats = |n: usize| FloatVec::from_f32(random(n, 2.0), dtype);
                let x = Tensor::from_floats(vec![7, cols], floats(7 * cols)).unwrap();
                let bias = Tensor::from_floats(vec![40], floats(40)).unwrap();
                assert_eq!(
                    bytes(&dev.matmul_4bit(&x, &w, Some(&bias)).unwrap()),
                    bytes(&cpu.matmul_4bit(&x, &w, Some(&bias)).unwrap()),
                    "{qt:?} {dtype:?} {cols} columns"
                );
            }
        }
        let s = dev.stats().op(OpKind::Matmul4bit);
        assert!(
            s.chunked_runs > 0 && s.chunks >= 7 * s.chunked_runs,
            "{s:?}"
        );
    }
}

#[test]
fn out_of_memory_below_the_minimum_chunk_falls_back_to_the_cpu() {
    let policy = RecoveryPolicy {
        min_chunk_bytes: 1 << 20,
        ..fast_policy()
    };
    let (dev, _) = faulty(
        "oom-min",
        Faults {
            oom_above: Some(100),
            ..Default::default()
        },
        policy,
    );
    let x = Tensor::f32(vec![8192], random(8192, 1.0)).unwrap();
    let got = dev.quantize_4bit(&x, FourBitType::Fp4, 64, false).unwrap();
    assert_eq!(
        got,
        Device::cpu()
            .quantize_4bit(&x, FourBitType::Fp4, 64, false)
            .unwrap()
    );
    let s = dev.stats().op(OpKind::Quantize4bit);
    assert_eq!(
        (s.runs, s.fallbacks, s.chunked_runs, s.failures),
        (1, 1, 0, 0)
    );
}

#[test]
fn permanent_failure_falls_back_to_the_cpu_with_identical_bytes() {
    let (dev, backend) = faulty(
        "permanent",
        Faults {
            permanent: true,
            ..Default::default()
        },
        fast_policy(),
    );
    assert_all_ops_match_cpu(&dev);
    assert!(backend.permanent_injected.load(Ordering::SeqCst) > 0);
    let stats = dev.stats();
    for (op, s) in &stats.ops {
        assert_eq!(s.fallbacks, s.runs, "{op}: every run falls back");
        assert_eq!(s.retries, 0, "{op}: permanent failures are not retried");
        assert_eq!(s.failures, 0, "{op}");
        assert_eq!(s.errors.get("operation_failed"), Some(&s.runs), "{op}");
    }
}

#[test]
fn unsupported_op_falls_back_and_strict_mode_reports_it() {
    let faults = Faults {
        unsupported: Some(OpKind::Dequantize4bit),
        ..Default::default()
    };
    let (dev, backend) = faulty("unsupported", faults.clone(), fast_policy());
    let x = Tensor::f32(vec![2000], random(2000, 1.0)).unwrap();
    let q = dev.quantize_4bit(&x, FourBitType::Nf4, 64, false).unwrap();
    let calls = backend.calls.load(Ordering::SeqCst);
    let y = dev.dequantize_4bit(&q).unwrap();
    assert_eq!(
        backend.calls.load(Ordering::SeqCst),
        calls,
        "the backend must not be called for an unsupported op"
    );
    assert_eq!(
        bytes(&y),
        bytes(&Device::cpu().dequantize_4bit(&q).unwrap())
    );
    let s = dev.stats().op(OpKind::Dequantize4bit);
    assert_eq!((s.fallbacks, s.failures), (1, 0));
    assert_eq!(s.errors.get("capability_mismatch"), Some(&1));

    let (strict, _) = faulty("unsupported-strict", faults, RecoveryPolicy::strict());
    match strict.dequantize_4bit(&q) {
        Err(Error::Device(e @ DeviceError::CapabilityMismatch { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("dequantize_4bit") && msg.contains("--device cpu"),
                "{msg}"
            );
        }
        other => panic!("expected a capability error, got {other:?}"),
    }
}

#[test]
fn strict_mode_returns_every_device_error() {
    let x = Tensor::f32(vec![4096], random(4096, 1.0)).unwrap();
    let cases = [
        (
            Faults {
                transient: 1,
                ..Default::default()
            },
            DeviceErrorKind::Transient,
        ),
        (
            Faults {
                oom_above: Some(100),
                ..Default::default()
            },
            DeviceErrorKind::OutOfMemory,
        ),
        (
            Faults {
                permanent: true,
                ..Default::default()
            },
            DeviceErrorKind::OperationFailed,
        ),
    ];
    for (faults, kind) in cases {
        let policy = RecoveryPolicy {
            strict: true,
            ..fast_policy()
        };
        let (dev, backend) = faulty("strict", faults, policy);
        match dev.quantize_4bit(&x, FourBitType::Nf4, 64, false) {
            Err(Error::Device(e)) => assert_eq!(e.kind(), kind, "{e}"),
            other => panic!("expected a {kind:?} error, got {other:?}"),
        }
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            1,
            "strict: one attempt"
        );
        let s = dev.stats().op(OpKind::Quantize4bit);
        assert_eq!(
            (s.runs, s.failures, s.retries, s.fallbacks, s.chunked_runs),
            (1, 1, 0, 0, 0)
        );
        assert_eq!(s.errors.get(kind.name()), Some(&1));
    }
}

#[test]
fn memory_budget_chunks_ops_on_a_device_and_on_the_real_cpu() {
    let policy = RecoveryPolicy {
        memory_limit: Some(16 * 1024),
        ..fast_policy()
    };
    // A device that would fail above the budget: the plan must keep every chunk under it up front.
    let (dev, backend) = faulty(
        "budget",
        Faults {
            oom_above: Some(4096),
            ..Default::default()
        },
        policy.clone(),
    );
    assert_all_ops_match_cpu(&dev);
    // Split ops are planned to fit the budget up front; only the one op that cannot be split
    // (int8_vectorwise_quant: outlier columns span rows) meets the injected out-of-memory and falls back.
    let stats = dev.stats();
    for (op, s) in &stats.ops {
        if op == "int8_vectorwise_quant" {
            assert_eq!(s.errors.get("out_of_memory"), Some(&s.fallbacks), "{s:?}");
        } else {
            // int8 buffers hold 1 byte per element, so the element-count fault may still split them.
            assert_eq!((s.fallbacks, s.failures), (0, 0), "{op}: {s:?}");
        }
    }
    assert!(backend.oom_injected.load(Ordering::SeqCst) > 0);
    let s = stats.op(OpKind::Quantize4bit);
    assert!(s.chunked_runs > 0 && s.errors.is_empty(), "{s:?}");

    // The real CPU backend with the same budget: chunked, and the bytes still match.
    let cpu = Device::cpu().with_policy(policy);
    let x = Tensor::f32(vec![32768], random(32768, 4.0)).unwrap();
    let want = Device::cpu()
        .with_policy(fast_policy())
        .quantize_4bit(&x, FourBitType::Nf4, 64, true)
        .unwrap();
    let before = cpu.stats().op(OpKind::Quantize4bit).chunked_runs;
    assert_eq!(
        cpu.quantize_4bit(&x, FourBitType::Nf4, 64, true).unwrap(),
        want
    );
    assert!(cpu.stats().op(OpKind::Quantize4bit).chunked_runs > before);
}

#[test]
fn op_over_the_budget_at_the_smallest_chunk_falls_back_or_fails_in_strict_mode() {
    let policy = RecoveryPolicy {
        memory_limit: Some(1024),
        min_chunk_bytes: 1 << 20,
        ..fast_policy()
    };
    let x = Tensor::f32(vec![4096], random(4096, 1.0)).unwrap();
    let want = Device::cpu()
        .quantize_4bit(&x, FourBitType::Nf4, 64, false)
        .unwrap();
    let (dev, backend) = faulty("too-big", Faults::default(), policy.clone());
    assert_eq!(
        dev.quantize_4bit(&x, FourBitType::Nf4, 64, false).unwrap(),
        want
    );
    assert_eq!(
        backend.calls.load(Ordering::SeqCst),
        0,
        "ran on the CPU, not the device"
    );
    let s = dev.stats().op(OpKind::Quantize4bit);
    assert_eq!((s.fallbacks, s.failures), (1, 0));

    let strict = RecoveryPolicy {
        strict: true,
        ..policy
    };
    let (dev, _) = faulty("too-big-strict", Faults::default(), strict);
    match dev.quantize_4bit(&x, FourBitType::Nf4, 64, false) {
        Err(Error::Device(e @ DeviceError::OutOfMemory { .. })) => {
            assert!(e.to_string().contains("LOWBIT_MEMORY_LIMIT"), "{e}")
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
}

#[test]
fn eight_threads_on_one_flaky_device_get_correct_results_and_exact_counters() {
    const THREADS: usize = 8;
    const ITERS: usize = 25;
    let (dev, backend) = faulty(
        "threads",
        Faults {
            transient_every: 7,
            ..Default::default()
        },
        RecoveryPolicy {
            max_retries: 10,
            ..fast_policy()
        },
    );
    let cpu = Device::cpu();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (dev, cpu) = (dev.clone(), cpu.clone());
            scope.spawn(move || {
                for _ in 0..ITERS {
                    let x = Tensor::f32(vec![3, 512], random(3 * 512, 2.0)).unwrap();
                    let got = dev.quantize_4bit(&x, FourBitType::Nf4, 64, false).unwrap();
                    let want = cpu.quantize_4bit(&x, FourBitType::Nf4, 64, false).unwrap();
                    assert_eq!(got, want);
                    let y = dev.dequantize_4bit(&got).unwrap();
                    assert_eq!(bytes(&y), bytes(&cpu.dequantize_4bit(&want).unwrap()));
                }
            });
        }
    });
    let stats = dev.stats();
    let (q, d) = (
        stats.op(OpKind::Quantize4bit),
        stats.op(OpKind::Dequantize4bit),
    );
    let n = (THREADS * ITERS) as u64;
    assert_eq!((q.runs, d.runs), (n, n));
    assert_eq!(q.failures + d.failures + q.fallbacks + d.fallbacks, 0);
    let injected = backend.transient_injected.load(Ordering::SeqCst);
    assert!(injected > 0);
    assert_eq!(
        q.retries + d.retries,
        injected,
        "every injected failure is one retry"
    );
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2 * n + injected);
}

#[test]
fn statistics_render_as_a_table_and_json() {
    let (dev, _) = faulty(
        "render",
        Faults {
            transient: 1,
            ..Default::default()
        },
        fast_policy(),
    );
    let x = Tensor::f32(vec![256], random(256, 1.0)).unwrap();
    dev.quantize_blockwise(&x, 64, None).unwrap();
    let snap = lowbit::runtime::stats_snapshot();
    let table = snap.to_string();
    assert!(
        table.contains(dev.id()) && table.contains("quantize_blockwise"),
        "{table}"
    );
    let json = serde_json::to_value(&snap).unwrap();
    let mine = json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == dev.id())
        .expect("device in the snapshot");
    assert_eq!(mine["ops"]["quantize_blockwise"]["retries"], 1);
    assert_eq!(mine["ops"]["quantize_blockwise"]["runs"], 1);
}

#[test]
fn device_and_stats_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Device>();
    check::<lowbit::runtime::StatsSnapshot>();
    check::<lowbit::runtime::DeviceInfo>();
    let _ = FloatVec::F32(vec![]);
}
