//! GPU failures as the runtime's typed device errors, and the log the device's error handler keeps.

use crate::capability::DeviceError;
use crate::{Error, Result};
use std::sync::Mutex;

/// A GPU failure as a device error, so the runtime can retry, split or fall back.
pub(crate) fn gpu_err(detail: impl Into<String>) -> Error {
    Error::Device(DeviceError::OperationFailed {
        device: "wgpu".into(),
        op: "gpu".into(),
        reason: detail.into(),
    })
}

/// Out of GPU memory, or an operand larger than one binding: the runtime splits the op and retries.
pub(crate) fn gpu_oom(op: &str, needed: u64, available: Option<u64>) -> Error {
    Error::Device(DeviceError::OutOfMemory {
        device: "wgpu".into(),
        op: op.into(),
        needed,
        available,
    })
}

/// The device stopped answering: retried, then the runtime falls back to the CPU.
pub(crate) fn gpu_lost(reason: impl Into<String>) -> Error {
    Error::Device(DeviceError::DeviceLost {
        device: "wgpu".into(),
        reason: reason.into(),
    })
}

/// What the device's error handler saw: dispatches and submissions run without error scopes (a push and a
/// pop per op cost about a fifth of a decoder block's time on an H200), so the handler counts each error by
/// kind and keeps the last message; `submit` and `flush` compare the counts before and after their calls
/// (wgpu-core reports an error to the handler on the thread and in the call that raised it).
#[derive(Default)]
pub(super) struct ErrorLog {
    out_of_memory: std::sync::atomic::AtomicU64,
    other: std::sync::atomic::AtomicU64,
    last: Mutex<String>,
}

impl ErrorLog {
    pub(super) fn record(&self, e: &wgpu::Error) {
        use std::sync::atomic::Ordering::Relaxed;
        match e {
            wgpu::Error::OutOfMemory { .. } => self.out_of_memory.fetch_add(1, Relaxed),
            _ => self.other.fetch_add(1, Relaxed),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.out_of_memory.load(Relaxed), self.other.load(Relaxed))
    }

    /// The typed error for what was reported since `before` (a [`counts`](Self::counts)), if anything.
    pub(super) fn since(&self, before: (u64, u64), what: &str) -> Result<()> {
        let (oom, other) = self.counts();
        if oom > before.0 {
            tracing::debug!("wgpu out of memory in {what}");
            return Err(gpu_oom(what, 0, None));
        }
        if other > before.1 {
            let msg = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(gpu_err(format!("GPU error in {what}: {msg}")));
        }
        Ok(())
    }
}
