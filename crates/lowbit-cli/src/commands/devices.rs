//! `lowbit devices`: every device lowbit found, its capabilities, and which one `auto` picks and why.

use super::CliResult;
use crate::Global;
use crate::outln;
use crate::output::print_json;
use lowbit::runtime::{DeviceInfo, RecoveryPolicy, auto_select, devices};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, global: &Global) -> CliResult {
    let list = devices();
    let policy = RecoveryPolicy::from_env()?;
    let (_, auto) = auto_select(&list, policy.clone());
    // What `--device` / LOWBIT_DEVICE names now, so a bad value is reported here too.
    let selected = super::check_device_name(&global.device).and_then(|()| {
        lowbit::Device::open_in(&global.device, &list, policy.clone())
            .map(|d| d.id().to_string())
            .map_err(|e| e.to_string())
    });
    if global.json {
        print_json(&serde_json::json!({
            "devices": list,
            "auto": auto,
            "selected": match &selected { Ok(id) => serde_json::json!(id), Err(_) => serde_json::Value::Null },
            "selected_error": selected.as_ref().err(),
            "policy": {
                "strict": policy.strict,
                "max_retries": policy.max_retries,
                "memory_limit": policy.memory_limit,
                "cpu_fallback": policy.cpu_fallback,
            },
        }))?;
        return selected.map(drop).map_err(Into::into);
    }
    outln!(
        "{:<10} {:<14} {:<40} {:>19} {:>10} {:<12} {:<8} {:<9} status",
        "id",
        "type",
        "name",
        "memory (free/total)",
        "max buffer",
        "dtypes",
        "int8 dot",
        "subgroup"
    );
    for d in &list {
        outln!(
            "{:<10} {:<14} {:<40} {:>19} {:>10} {:<12} {:<8} {:<9} {}",
            d.id,
            d.device_type.name(),
            truncate(&crate::output::printable(&d.name), 40),
            memory(d),
            d.max_buffer_size.map_or("-".into(), human),
            dtypes(d),
            if d.int8_dot { "yes" } else { "-" },
            match (d.subgroup_min, d.subgroup_max) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}-{b}"),
                _ => "-".into(),
            },
            status(d),
        );
    }
    outln!();
    for d in list.iter().filter(|d| d.available) {
        let mut extra = Vec::new();
        if let Some(v) = &d.vendor {
            extra.push(format!("vendor {v}"));
        }
        if let Some(v) = &d.driver {
            extra.push(format!("driver {v}"));
        }
        if let Some(c) = d.cores {
            extra.push(format!("{c} cores"));
        }
        if !d.simd.is_empty() {
            extra.push(format!("simd {}", d.simd.join(" ")));
        }
        if let Some(b) = d.max_storage_binding {
            extra.push(format!("max storage binding {}", human(b)));
        }
        if let Some(t) = d.temperature_c {
            extra.push(format!("{t:.0} C"));
        }
        if let Some(t) = &d.thermal {
            extra.push(format!("thermal {t}"));
        }
        outln!("{}: {}", d.id, extra.join(", "));
        outln!(
            "  formats {}; 4-bit block sizes {:?}; 8-bit block sizes {:?}; {} ops",
            d.formats.join(" "),
            d.blocksizes_4bit,
            d.blocksizes_8bit,
            d.ops.len()
        );
    }
    outln!();
    outln!("auto picks {}: {}", auto.id, auto.reason);
    if let Ok(id) = &selected {
        outln!(
            "--device {} -> {id}",
            crate::output::printable(&global.device)
        );
    }
    outln!(
        "recovery: {}, {} retries, memory limit {}, CPU fallback {} (see docs/RUNTIME.md)",
        if policy.strict { "strict" } else { "recover" },
        policy.max_retries,
        policy.memory_limit.map_or("none".into(), human),
        if policy.cpu_fallback { "on" } else { "off" },
    );
    // An unknown or unavailable requested device is an error (non-zero exit), after the listing.
    selected.map(drop).map_err(Into::into)
}

fn status(d: &DeviceInfo) -> String {
    match (d.available, &d.reason) {
        (true, None) => "available".into(),
        (true, Some(r)) => format!("available ({r})"),
        (false, r) => format!("unavailable: {}", r.as_deref().unwrap_or("unknown reason")),
    }
}

fn dtypes(d: &DeviceInfo) -> String {
    let mut v = vec!["f32"];
    if d.f16 {
        v.push("f16");
    }
    if d.bf16 {
        v.push("bf16");
    }
    v.join(",")
}

fn memory(d: &DeviceInfo) -> String {
    match (d.available_memory, d.total_memory) {
        (Some(a), Some(t)) => format!("{}/{}", human(a), human(t)),
        (None, Some(t)) => format!("-/{}", human(t)),
        _ if d.unified_memory => "shared".into(),
        _ => "-".into(),
    }
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}
