//! Device failures, by kind. The runtime's recovery policy keys on the kind: transient failures are retried,
//! out-of-memory splits the op, capability and persistent failures fall back to the CPU, invalid input is
//! returned as is (the CPU would reject it too).

use serde::Serialize;

/// A failure of a device or its backend. Every message names the device and says what to do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DeviceError {
    #[error("{device} is not available: {reason}")]
    PlatformUnavailable { device: String, reason: String },

    #[error(
        "{device}: initialisation failed: {reason}; check the driver, or choose another device with \
         --device / LOWBIT_DEVICE (`lowbit devices` lists them)"
    )]
    InitFailed { device: String, reason: String },

    #[error(
        "{device} cannot run {op}: {reason}; run it on the CPU (--device cpu) or leave strict mode off \
         so the runtime falls back to the CPU"
    )]
    CapabilityMismatch {
        device: String,
        op: String,
        reason: String,
    },

    #[error("{op} failed on {device}: {reason}")]
    OperationFailed {
        device: String,
        op: String,
        reason: String,
    },

    #[error(
        "{op} on {device} needs about {needed} bytes{}; lower the batch or tensor size, raise \
         LOWBIT_MEMORY_LIMIT, or leave strict mode off so the op is split or run on the CPU",
        match .available { Some(a) => format!(" but only {a} are available"), None => String::new() }
    )]
    OutOfMemory {
        device: String,
        op: String,
        needed: u64,
        available: Option<u64>,
    },

    #[error("{device} was lost ({reason}); the runtime retries and then falls back to the CPU")]
    DeviceLost { device: String, reason: String },

    #[error("{op} on {device} hit a transient failure ({reason}); it is retried with backoff")]
    Transient {
        device: String,
        op: String,
        reason: String,
    },

    #[error("invalid input to {op} on {device}: {reason}")]
    InvalidInput {
        device: String,
        op: String,
        reason: String,
    },

    #[error("unknown or unavailable device {requested:?}; devices on this machine: {known}")]
    NotFound { requested: String, known: String },
}

/// The kind of a [`DeviceError`], for statistics and log de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceErrorKind {
    PlatformUnavailable,
    InitFailed,
    CapabilityMismatch,
    OperationFailed,
    OutOfMemory,
    DeviceLost,
    Transient,
    InvalidInput,
    NotFound,
}

impl DeviceErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceErrorKind::PlatformUnavailable => "platform_unavailable",
            DeviceErrorKind::InitFailed => "init_failed",
            DeviceErrorKind::CapabilityMismatch => "capability_mismatch",
            DeviceErrorKind::OperationFailed => "operation_failed",
            DeviceErrorKind::OutOfMemory => "out_of_memory",
            DeviceErrorKind::DeviceLost => "device_lost",
            DeviceErrorKind::Transient => "transient",
            DeviceErrorKind::InvalidInput => "invalid_input",
            DeviceErrorKind::NotFound => "not_found",
        }
    }
}

impl DeviceError {
    pub fn kind(&self) -> DeviceErrorKind {
        match self {
            DeviceError::PlatformUnavailable { .. } => DeviceErrorKind::PlatformUnavailable,
            DeviceError::InitFailed { .. } => DeviceErrorKind::InitFailed,
            DeviceError::CapabilityMismatch { .. } => DeviceErrorKind::CapabilityMismatch,
            DeviceError::OperationFailed { .. } => DeviceErrorKind::OperationFailed,
            DeviceError::OutOfMemory { .. } => DeviceErrorKind::OutOfMemory,
            DeviceError::DeviceLost { .. } => DeviceErrorKind::DeviceLost,
            DeviceError::Transient { .. } => DeviceErrorKind::Transient,
            DeviceError::InvalidInput { .. } => DeviceErrorKind::InvalidInput,
            DeviceError::NotFound { .. } => DeviceErrorKind::NotFound,
        }
    }

    /// Worth retrying as is: busy, timeouts, a lost context the backend recreates on the next call.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DeviceError::Transient { .. } | DeviceError::DeviceLost { .. }
        )
    }

    /// Worth retrying with a smaller piece of the op.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, DeviceError::OutOfMemory { .. })
    }

    /// The CPU would fail the same way, so falling back cannot help.
    pub fn is_input_error(&self) -> bool {
        matches!(self, DeviceError::InvalidInput { .. })
    }

    pub fn transient(
        device: impl Into<String>,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceError::Transient {
            device: device.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    pub fn failed(
        device: impl Into<String>,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceError::OperationFailed {
            device: device.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    pub fn out_of_memory(
        device: impl Into<String>,
        op: impl Into<String>,
        needed: u64,
        available: Option<u64>,
    ) -> Self {
        DeviceError::OutOfMemory {
            device: device.into(),
            op: op.into(),
            needed,
            available,
        }
    }

    pub fn unsupported(
        device: impl Into<String>,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceError::CapabilityMismatch {
            device: device.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }
}
