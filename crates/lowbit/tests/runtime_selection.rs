//! Device discovery, selection by name and `auto`, and policy parsing from environment variables (through the
//! pure `from_vars`, so no test touches the process environment).

use lowbit::runtime::policy::parse_bytes;
use lowbit::runtime::selection::{auto_candidates, resolve};
use lowbit::runtime::{
    DeviceError, DeviceInfo, DeviceSpec, DeviceType, RecoveryPolicy, auto_select, devices,
};
use lowbit::{Device, Error};
use std::collections::HashMap;
use std::time::Duration;

fn gpu(id: &str, ty: DeviceType) -> DeviceInfo {
    let (backend, index) = id.split_once(':').unwrap();
    let mut d = DeviceInfo::new(id, backend, format!("test {id}"), ty).with_all_ops();
    d.index = Some(index.parse().unwrap());
    d
}

/// A machine with one of everything.
fn machine() -> Vec<DeviceInfo> {
    vec![
        lowbit::runtime::cpu_info(),
        gpu("vulkan:0", DeviceType::IntegratedGpu),
        gpu("vulkan:1", DeviceType::DiscreteGpu),
        gpu("vulkan:2", DeviceType::SoftwareGpu),
        gpu("metal:0", DeviceType::IntegratedGpu),
        gpu("cuda:0", DeviceType::DiscreteGpu)
            .unavailable("CUDA unavailable: no NVIDIA driver library (libcuda.so) found"),
        gpu("dx12:0", DeviceType::DiscreteGpu),
    ]
}

fn ids(v: &[&DeviceInfo]) -> Vec<String> {
    v.iter().map(|d| d.id.clone()).collect()
}

#[test]
fn discovery_lists_the_cpu_first_with_real_capabilities() {
    let all = devices();
    let cpu = &all[0];
    assert_eq!(cpu.id, "cpu");
    assert!(cpu.available);
    assert!(cpu.cores.is_some_and(|c| c >= 1));
    assert!(!cpu.name.is_empty());
    assert_eq!(cpu.ops.len(), lowbit::runtime::OpKind::ALL.len());
    if cfg!(target_os = "linux") {
        let (t, a) = (cpu.total_memory.unwrap(), cpu.available_memory.unwrap());
        assert!(t > 0 && a <= t);
    }
    // Every entry has an id; every unavailable one says why.
    for d in &all {
        assert!(!d.id.is_empty());
        assert!(
            d.available || d.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{d:?}"
        );
    }
    // NVIDIA GPUs are listed, unavailable, until the CUDA backend exists; without one, no CUDA row.
    let nvidia = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"));
    assert_eq!(all.iter().any(|d| d.backend == "cuda"), nvidia, "{all:?}");
    assert!(
        all.iter()
            .filter(|d| d.backend == "cuda")
            .all(|d| !d.available)
    );
    // The JSON form has every field.
    let j = serde_json::to_value(cpu).unwrap();
    for key in [
        "id",
        "backend",
        "total_memory",
        "max_buffer_size",
        "f16",
        "int8_dot",
        "ops",
        "available",
    ] {
        assert!(j.get(key).is_some(), "{key}");
    }
}

#[test]
fn spec_parsing_accepts_every_form_and_rejects_bad_names() {
    let named = |b: &str, i: Option<usize>| DeviceSpec::Named {
        backend: b.into(),
        index: i,
    };
    assert_eq!(DeviceSpec::parse("auto").unwrap(), DeviceSpec::Auto);
    assert_eq!(DeviceSpec::parse("").unwrap(), DeviceSpec::Auto);
    assert_eq!(DeviceSpec::parse("CPU").unwrap(), named("cpu", None));
    assert_eq!(DeviceSpec::parse("metal").unwrap(), named("metal", None));
    assert_eq!(DeviceSpec::parse("cuda:0").unwrap(), named("cuda", Some(0)));
    assert_eq!(
        DeviceSpec::parse(" vulkan:1 ").unwrap(),
        named("vulkan", Some(1))
    );
    assert_eq!(DeviceSpec::parse("dx12").unwrap(), named("dx12", None));
    for bad in [
        "gpu0",
        "vulkan:",
        "vulkan:x",
        "cuda:-1",
        "cpu:3",
        "opencl",
        "metal:0:1",
    ] {
        match DeviceSpec::parse(bad) {
            Err(Error::Device(e @ DeviceError::NotFound { .. })) => {
                assert!(e.to_string().contains("vulkan"), "{e}")
            }
            other => panic!("{bad:?}: expected NotFound, got {other:?}"),
        }
    }
}

#[test]
fn auto_prefers_metal_then_cuda_then_other_gpus_then_the_cpu() {
    let m = machine();
    // CUDA is unavailable and lavapipe-like software GPUs are skipped.
    assert_eq!(
        ids(&auto_candidates(&m)),
        ["metal:0", "vulkan:1", "dx12:0", "vulkan:0", "cpu"]
    );
    let mut with_cuda = m.clone();
    with_cuda[5].available = true;
    assert_eq!(
        ids(&auto_candidates(&with_cuda))[..2],
        ["metal:0", "cuda:0"]
    );
    let cpu_only = vec![
        lowbit::runtime::cpu_info(),
        gpu("vulkan:0", DeviceType::SoftwareGpu),
    ];
    assert_eq!(ids(&auto_candidates(&cpu_only)), ["cpu"]);
    let (dev, why) = auto_select(&cpu_only, RecoveryPolicy::default());
    assert_eq!((dev.id(), why.id.as_str()), ("cpu", "cpu"));
    assert!(why.reason.contains("no usable GPU"), "{}", why.reason);
}

#[test]
fn auto_skips_devices_that_fail_to_open_and_says_why() {
    let (dev, why) = auto_select(&machine(), RecoveryPolicy::default());
    assert_eq!(dev.id(), why.id);
    // Whatever opened, the choice is explained; skipped devices are named with their error.
    assert!(!why.reason.is_empty());
    if why.id == "cpu" {
        assert!(why.reason.contains("skipped metal:0"), "{}", why.reason);
    }
}

#[test]
fn names_resolve_to_the_right_device() {
    let m = machine();
    let get = |s: &str| resolve(&DeviceSpec::parse(s).unwrap(), &m).map(|d| d.id.clone());
    assert_eq!(get("cpu").unwrap(), "cpu");
    assert_eq!(get("cpu:0").unwrap(), "cpu");
    assert_eq!(get("vulkan").unwrap(), "vulkan:0");
    assert_eq!(get("vulkan:1").unwrap(), "vulkan:1");
    assert_eq!(get("metal").unwrap(), "metal:0");
    assert_eq!(get("dx12:0").unwrap(), "dx12:0");
    assert_eq!(get("auto").unwrap(), "metal:0");
    // Unavailable: the reason and the devices that exist.
    match get("cuda:0") {
        Err(Error::Device(e @ DeviceError::PlatformUnavailable { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("CUDA unavailable") && msg.contains("vulkan:1"),
                "{msg}"
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        get("cuda"),
        Err(Error::Device(DeviceError::PlatformUnavailable { .. }))
    ));
    // Unknown index: the list of devices.
    match get("vulkan:9") {
        Err(Error::Device(e @ DeviceError::NotFound { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("vulkan:2") && msg.contains("cuda:0 (unavailable)"),
                "{msg}"
            );
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn open_in_gives_a_working_cpu_and_errors_for_bad_names() {
    let m = machine();
    let policy = RecoveryPolicy::strict();
    let cpu = Device::open_in("cpu", &m, policy.clone()).unwrap();
    assert_eq!(cpu.id(), "cpu");
    assert!(cpu.policy().strict);
    let x = lowbit::Tensor::f32(vec![3], vec![0.5, -1.0, 2.0]).unwrap();
    assert!(cpu.softmax(&x).is_ok());
    assert!(Device::open_in("nonsense", &m, policy.clone()).is_err());
    assert!(Device::open_in("cuda:0", &m, policy.clone()).is_err());
    assert!(Device::open_in("vulkan:7", &m, policy).is_err());
    // The real machine: `cpu` and `auto` always open.
    assert_eq!(Device::open("cpu").unwrap().id(), "cpu");
    assert!(Device::open("auto").is_ok());
    assert!(Device::open("no-such-device").is_err());
}

#[test]
fn policy_from_environment_variables() {
    let vars = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RecoveryPolicy::from_vars(move |k| m.get(k).cloned())
    };
    assert_eq!(vars(&[]).unwrap(), RecoveryPolicy::default());
    let p = vars(&[
        ("LOWBIT_STRICT", "1"),
        ("LOWBIT_MAX_RETRIES", "5"),
        ("LOWBIT_MEMORY_LIMIT", "64MiB"),
    ])
    .unwrap();
    assert!(p.strict);
    assert_eq!(p.max_retries, 5);
    assert_eq!(p.memory_limit, Some(64 << 20));
    assert!(!vars(&[("LOWBIT_STRICT", "0")]).unwrap().strict);
    for (k, v) in [
        ("LOWBIT_STRICT", "maybe"),
        ("LOWBIT_MAX_RETRIES", "-1"),
        ("LOWBIT_MAX_RETRIES", "many"),
        ("LOWBIT_MEMORY_LIMIT", "lots"),
        ("LOWBIT_MEMORY_LIMIT", "0"),
        ("LOWBIT_MEMORY_LIMIT", "12 parsecs"),
    ] {
        let e = vars(&[(k, v)]).unwrap_err().to_string();
        assert!(e.contains(k), "{k}={v}: {e}");
    }
}

#[test]
fn byte_sizes_and_backoff() {
    assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
    assert_eq!(parse_bytes("64m"), Some(64 << 20));
    assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
    assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
    assert_eq!(parse_bytes("4096"), Some(4096));
    assert_eq!(parse_bytes("512 k"), Some(512 << 10));
    assert_eq!(parse_bytes(""), None);
    assert_eq!(parse_bytes("MiB"), None);
    let p = RecoveryPolicy::default();
    assert_eq!(p.backoff(1), p.initial_backoff);
    assert_eq!(p.backoff(2), p.initial_backoff * 2);
    assert_eq!(p.backoff(3), p.initial_backoff * 4);
    assert_eq!(p.backoff(60), p.max_backoff);
    assert!(p.backoff(1000) <= Duration::from_secs(1));
}
