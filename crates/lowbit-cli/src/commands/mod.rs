//! One module per subcommand; each owns its `Args` and `run`.

pub mod bench;
pub mod demo;
pub mod dequantize;
pub mod inspect;
pub mod quantize;

/// Errors surface to `main` as boxed errors with a message for the user.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Opens the device named by `--device` / `LOWBIT_DEVICE`.
pub fn open_device(
    global: &crate::Global,
) -> Result<lowbit::Device, Box<dyn std::error::Error + Send + Sync>> {
    match global.device.as_str() {
        "auto" | "cpu" => Ok(lowbit::Device::cpu()),
        other => Err(format!("unknown device {other:?}; available: cpu").into()),
    }
}
