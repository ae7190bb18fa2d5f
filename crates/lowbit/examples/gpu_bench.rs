//! GPU kernel benchmarks through wgpu: prints a table and JSON (GB/s, fraction of copy bandwidth, TFLOP/s).
//!
//! cargo run --release -p lowbit --example gpu_bench -- [--quick] [--sweep] [--adapter N] [--iters N]
//! (`--sweep` also times the general GEMV kernels and every work split of the vectorised ones.)
//! (Vulkan on Linux, Metal on macOS, DX12 on Windows.)

use lowbit::backend::wgpu::WgpuBackend;
use lowbit::backend::wgpu::bench::{BenchConfig, format_table, run_suite_with};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut cfg = BenchConfig {
        quick: args.iter().any(|a| a == "--quick"),
        sweep: args.iter().any(|a| a == "--sweep"),
        ..Default::default()
    };
    if let Some(n) = value("--iters") {
        cfg.iters = n.max(1);
    }
    let backends = if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else if cfg!(windows) {
        wgpu::Backends::DX12
    } else {
        wgpu::Backends::VULKAN
    };
    let backend = match WgpuBackend::open(backends, value("--adapter").unwrap_or(0)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let info = backend.adapter_info();
    println!(
        "adapter: {} ({:?}, {})",
        info.name, info.backend, info.driver_info
    );
    match run_suite_with(&backend, cfg) {
        Ok(rows) => {
            print!("{}", format_table(&rows));
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).expect("rows serialize")
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
