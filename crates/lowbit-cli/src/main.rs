//! The `lowbit` command-line tool. Parses arguments, calls the library, prints. No logic lives here.

mod commands;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Low-bit quantization (bitsandbytes NF4/FP4/8-bit, LLM.int8(), BitNet b1.58) on CPU and GPUs.
#[derive(Parser)]
#[command(name = "lowbit", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Global {
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Device to run on: auto, cpu, vulkan[:N], metal, dx12[:N], cuda[:N] (also LOWBIT_DEVICE).
    #[arg(long, global = true, env = "LOWBIT_DEVICE", default_value = "auto")]
    pub device: String,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a built-in synthetic Llama-7B-shaped checkpoint in every format and report size, error, speed.
    Demo(commands::demo::Args),
    /// Time one op: median time, GB/s, GFLOP/s, and the fraction of measured memory bandwidth.
    Bench(commands::bench::Args),
    /// List devices (CPU, GPUs) with their capabilities, and which one `auto` picks and why.
    Devices(commands::devices::Args),
    /// Quantize a safetensors file or model directory to the bitsandbytes (nf4, fp4, int8) or BitNet layout.
    Quantize(commands::quantize::Args),
    /// Dequantize a bitsandbytes / BitNet checkpoint back to float tensors.
    Dequantize(commands::dequantize::Args),
    /// Show the tensors, formats, sizes and compression of a checkpoint.
    Inspect(commands::inspect::Args),
}

fn main() -> ExitCode {
    quiet_vulkan_loader_noise();
    let cli = Cli::parse();
    output::init_logging(cli.global.quiet);
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a, &cli.global),
        Command::Bench(a) => commands::bench::run(a, &cli.global),
        Command::Devices(a) => commands::devices::run(a, &cli.global),
        Command::Quantize(a) => commands::quantize::run(a, &cli.global),
        Command::Dequantize(a) => commands::dequantize::run(a, &cli.global),
        Command::Inspect(a) => commands::inspect::run(a, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid" on every adapter listing when the variable is unset
/// (containers, CI). Compute needs no window system, so point it at the temp dir before any thread starts.
fn quiet_vulkan_loader_noise() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}
