//! Devices: where ops run. A [`Device`] wraps one backend; every op goes through [`Device::run`] /
//! [`Device::run_split`], the single place where policy (validation against capabilities and memory,
//! retries, chunking, CPU fallback, statistics) applies. See `docs/RUNTIME.md`.

mod device;
pub mod discovery;
pub mod join;
pub mod memory;
pub mod policy;
pub mod selection;
pub mod stats;

pub use crate::capability::{
    DeviceError, DeviceErrorKind, DeviceInfo, DeviceType, OpKind, OpParams, StepArgs, StepKey,
    StepRun, Support, error, info,
};
pub use device::Device;
pub use discovery::{cpu_info, devices};
pub use join::Join;
pub use memory::MemoryEstimate;
pub use policy::RecoveryPolicy;
pub use selection::{AutoChoice, DeviceSpec, auto_select, open_backend};
pub use stats::{DeviceStatsSnapshot, OpStats, StatsSnapshot, stats_snapshot};
