//! One module per subcommand; each owns its `Args` and `run`.

pub mod bench;
pub mod demo;
pub mod dequantize;
pub mod devices;
pub mod inspect;
pub mod quantize;

/// Errors surface to `main` as boxed errors with a message for the user.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Opens the device named by `--device` / `LOWBIT_DEVICE` (`auto`, `cpu`, `vulkan:1`, ...), with the recovery
/// policy from the environment.
pub fn open_device(
    global: &crate::Global,
) -> Result<lowbit::Device, Box<dyn std::error::Error + Send + Sync>> {
    let device = lowbit::Device::open(&global.device)?;
    tracing::info!("running on {} ({})", device.id(), device.info().name);
    Ok(device)
}
