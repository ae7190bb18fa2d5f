//! The `lowbit` command-line tool. Parses arguments, calls the library, prints. No logic lives here.

mod commands;
mod output;

use clap::{Parser, Subcommand};
use std::io::Write;
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
    /// Generate text with a model (Llama family, Qwen2/3, Mistral, BitNet), printing it as it is made.
    Generate(commands::generate::Args),
    /// Perplexity of a model on a text file.
    Perplexity(commands::perplexity::Args),
}

fn main() -> ExitCode {
    quiet_vulkan_loader_noise();
    let cli = Cli::parse();
    output::init_logging(cli.global.quiet);
    install_interrupt_handler();
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a, &cli.global),
        Command::Bench(a) => commands::bench::run(a, &cli.global),
        Command::Devices(a) => commands::devices::run(a, &cli.global),
        Command::Quantize(a) => commands::quantize::run(a, &cli.global),
        Command::Dequantize(a) => commands::dequantize::run(a, &cli.global),
        Command::Inspect(a) => commands::inspect::run(a, &cli.global),
        Command::Generate(a) => commands::generate::run(a, &cli.global),
        Command::Perplexity(a) => commands::perplexity::run(a, &cli.global),
    };
    let result = result.and_then(|()| output::flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<output::StdoutError>()
                .is_some_and(output::StdoutError::is_broken_pipe)
            {
                // The reader went away (`| head`): nothing more to say, as other Unix tools do.
                return ExitCode::SUCCESS;
            }
            let interrupted = matches!(
                e.downcast_ref::<lowbit::Error>(),
                Some(lowbit::Error::Interrupted { .. })
            );
            // stderr may be closed or full too: never panic over it.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if interrupted {
                ExitCode::from(INTERRUPTED_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit status after Ctrl-C / SIGTERM (128 + SIGINT, as shells report it).
const INTERRUPTED_EXIT: u8 = 130;

/// Ctrl-C, SIGTERM and SIGHUP ask the running job to stop at the next tensor and remove its temporary output
/// (it then returns `Error::Interrupted` and `main` exits 130). A job stuck in one long step is not waited
/// for: after a grace period the handler removes every registered temporary itself and exits.
fn install_interrupt_handler() {
    let result = ctrlc::set_handler(|| {
        lowbit::io::temps::request_interrupt();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let removed = lowbit::io::temps::remove_registered();
        let _ = writeln!(
            std::io::stderr(),
            "error: interrupted; removed {} temporary output path(s)",
            removed.len()
        );
        std::process::exit(INTERRUPTED_EXIT as i32);
    });
    if let Err(e) = result {
        tracing::warn!(
            "cannot install the Ctrl-C handler ({e}); an interrupt may leave temporary files"
        );
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
