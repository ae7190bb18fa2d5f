//! What the host CPU is: name, cores, SIMD features, memory, thermal state. The CPU backend describes
//! itself with it; device discovery lists it.

use crate::capability::{DeviceInfo, DeviceType};
use std::process::Command;
use std::sync::OnceLock;

/// The host CPU. What does not change is read once; memory is read on every call.
pub fn cpu_info() -> DeviceInfo {
    static STATIC_PART: OnceLock<DeviceInfo> = OnceLock::new();
    let mut info = STATIC_PART.get_or_init(cpu_static_info).clone();
    let (total, available) = host_memory();
    info.total_memory = total;
    info.available_memory = available;
    info
}

fn cpu_static_info() -> DeviceInfo {
    let mut info = DeviceInfo::new("cpu", "cpu", cpu_name(), DeviceType::Cpu).with_all_ops();
    info.cores = std::thread::available_parallelism().ok().map(|n| n.get());
    info.unified_memory = true;
    info.simd = simd_features();
    // The CPU kernels widen f16/bf16 exactly in software, so both dtypes are always supported.
    info.f16 = true;
    info.bf16 = true;
    info.int8_dot = info
        .simd
        .iter()
        .any(|f| f == "avx512vnni" || f == "dotprod");
    info.thermal = thermal_state();
    info
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

pub(crate) fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_name() -> String {
    let from_cpuinfo = read("/proc/cpuinfo").and_then(|s| {
        s.lines()
            .find(|l| {
                l.starts_with("model name") || l.starts_with("Hardware") || l.starts_with("Model")
            })
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    from_cpuinfo
        .or_else(|| {
            cfg!(target_os = "macos")
                .then(|| command_output("sysctl", &["-n", "machdep.cpu.brand_string"]))
                .flatten()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}

/// (total, available) bytes of host memory.
fn host_memory() -> (Option<u64>, Option<u64>) {
    if let Some(s) = read("/proc/meminfo") {
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        return (field("MemTotal:"), field("MemAvailable:"));
    }
    if cfg!(target_os = "macos") {
        let total = command_output("sysctl", &["-n", "hw.memsize"]).and_then(|s| s.parse().ok());
        return (total, None);
    }
    (None, None)
}

fn simd_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            v.push("fma");
        }
        if is_x86_feature_detected!("f16c") {
            v.push("f16c");
        }
        if is_x86_feature_detected!("avx512f") {
            v.push("avx512f");
        }
        if is_x86_feature_detected!("avx512vnni") {
            v.push("avx512vnni");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push("dotprod");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            v.push("fp16");
        }
        if std::arch::is_aarch64_feature_detected!("bf16") {
            v.push("bf16");
        }
    }
    v.into_iter().map(String::from).collect()
}

/// macOS: `pmset -g therm` reports the CPU speed limit when the system throttles.
fn thermal_state() -> Option<String> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    let out = command_output("pmset", &["-g", "therm"])?;
    let limit = out
        .lines()
        .find(|l| l.contains("CPU_Speed_Limit"))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| v.trim().to_string());
    Some(match limit {
        Some(l) if l == "100" => "nominal".into(),
        Some(l) => format!("throttled: CPU speed limit {l}%"),
        None => "nominal".into(),
    })
}
