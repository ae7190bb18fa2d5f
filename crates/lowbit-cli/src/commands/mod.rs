//! One module per subcommand; each owns its `Args` and `run`.

pub mod bench;
pub mod demo;
pub mod dequantize;
pub mod devices;
pub mod generate;
pub mod inspect;
pub mod perplexity;
pub mod quantize;

/// Errors surface to `main` as boxed errors with a message for the user.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Opens the device named by `--device` / `LOWBIT_DEVICE` (`auto`, `cpu`, `vulkan:1`, ...), with the recovery
/// policy from the environment.
pub fn open_device(
    global: &crate::Global,
) -> Result<lowbit::Device, Box<dyn std::error::Error + Send + Sync>> {
    check_device_name(&global.device)?;
    let device = lowbit::Device::open(&global.device)?;
    tracing::info!("running on {} ({})", device.id(), device.info().name);
    Ok(device)
}

/// The `--device` kinds this build knows on this platform, as shown to the user.
pub fn device_kinds() -> Vec<&'static str> {
    let mut v = vec!["auto", "cpu"];
    if !cfg!(target_os = "macos") {
        v.push("vulkan[:N]");
    }
    if cfg!(target_os = "macos") {
        v.push("metal[:N]");
    }
    if cfg!(windows) {
        v.push("dx12[:N]");
    }
    if !cfg!(target_os = "macos") {
        v.push("cuda[:N]");
    }
    v
}

/// Refuses a `--device` / `LOWBIT_DEVICE` kind that this build cannot run on this platform, saying why and
/// listing the kinds it can (whether such a device is present is for `lowbit::Device::open` to say).
pub fn check_device_name(spec: &str) -> Result<(), String> {
    let s = spec.trim().to_ascii_lowercase();
    let kind = s.split(':').next().unwrap_or("");
    let use_instead = format!("on this platform use one of: {}", device_kinds().join(", "));
    let why = match kind {
        "" | "auto" | "cpu" | "vulkan" => return Ok(()),
        "cuda" if !cfg!(target_os = "macos") => return Ok(()),
        "metal" if cfg!(target_os = "macos") => return Ok(()),
        "dx12" if cfg!(windows) => return Ok(()),
        "metal" => "Metal is macOS-only".to_string(),
        "dx12" => "DX12 is Windows-only".to_string(),
        "cuda" => "CUDA does not run on macOS".to_string(),
        _ => "unknown device kind".to_string(),
    };
    Err(format!("--device {spec:?}: {why}; {use_instead}"))
}
