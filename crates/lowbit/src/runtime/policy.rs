//! What the runtime does when a device fails: retry, split, fall back to the CPU, or (strict) return the error.
//! Defaults are documented in `docs/RUNTIME.md`; the environment variables override them.

use crate::{Error, Result};
use std::time::Duration;

/// `LOWBIT_STRICT=1`: return device errors instead of recovering.
pub const ENV_STRICT: &str = "LOWBIT_STRICT";
/// `LOWBIT_MAX_RETRIES=N`: retries of a transient failure.
pub const ENV_MAX_RETRIES: &str = "LOWBIT_MAX_RETRIES";
/// `LOWBIT_MEMORY_LIMIT=64MiB`: the most memory one op may use on a device; larger ops are split.
pub const ENV_MEMORY_LIMIT: &str = "LOWBIT_MEMORY_LIMIT";

/// How a [`Device`](crate::Device) recovers from failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Return every device error to the caller: no retries, no splitting, no CPU fallback.
    pub strict: bool,
    /// Retries of a transient failure (busy, timeout, lost device) before giving up on the device.
    pub max_retries: u32,
    /// Wait before the first retry; doubles per retry up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Memory one op may use on the device (inputs + outputs). `None`: the device's own limits only.
    pub memory_limit: Option<u64>,
    /// Out-of-memory splitting stops at chunks of about this many bytes.
    pub min_chunk_bytes: u64,
    /// Run the op on the CPU when the device cannot (unsupported, out of memory at the smallest chunk,
    /// persistent failure).
    pub cpu_fallback: bool,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            strict: false,
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            memory_limit: None,
            min_chunk_bytes: 64 * 1024,
            cpu_fallback: true,
        }
    }
}

impl RecoveryPolicy {
    /// Strict mode: errors are returned, never recovered.
    pub fn strict() -> Self {
        RecoveryPolicy {
            strict: true,
            ..Default::default()
        }
    }

    /// The defaults overridden by `LOWBIT_STRICT`, `LOWBIT_MAX_RETRIES`, `LOWBIT_MEMORY_LIMIT`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (pure, for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut p = RecoveryPolicy::default();
        if let Some(v) = get(ENV_STRICT) {
            p.strict = parse_bool(ENV_STRICT, &v)?;
        }
        if let Some(v) = get(ENV_MAX_RETRIES) {
            p.max_retries = v.trim().parse().map_err(|_| {
                Error::invalid(
                    ENV_MAX_RETRIES,
                    format!("{v:?} is not a retry count; use a whole number such as 3"),
                )
            })?;
        }
        if let Some(v) = get(ENV_MEMORY_LIMIT) {
            p.memory_limit = Some(parse_bytes(&v).ok_or_else(|| {
                Error::invalid(
                    ENV_MEMORY_LIMIT,
                    format!("{v:?} is not a size; use bytes or a unit, e.g. 64MiB, 2GB, 512k"),
                )
            })?);
        }
        Ok(p)
    }

    /// The wait before retry number `attempt` (1-based): `initial * 2^(attempt-1)`, at most `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

fn parse_bool(var: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::invalid(
            var,
            format!("{v:?} is not a boolean; use 1 or 0"),
        )),
    }
}

/// Parses `64MiB`, `2GB`, `512k`, `1048576` (binary units for `KiB/MiB/GiB`, and for bare `k/m/g`; decimal for
/// `KB/MB/GB`). `None` for anything else.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = value * mult as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}
