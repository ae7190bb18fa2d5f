//! The vocabulary every layer shares about devices: which ops exist ([`OpKind`]), what an op needs
//! ([`OpParams`], [`MemoryEstimate`]), what a device is and can do ([`DeviceInfo`], [`Support`]) and how it
//! fails ([`DeviceError`]). It sits at the bottom, beside `format` and `tensor`, so backends describe
//! themselves and report failures without importing the runtime that governs them.

pub mod error;
pub mod info;
pub mod memory;
mod op;
mod step;

pub use error::{DeviceError, DeviceErrorKind};
pub use info::{DeviceInfo, DeviceType, FORMATS, OpParams, Support};
pub use memory::{BufferEstimate, MemoryEstimate};
pub use op::{Op, OpKind};
pub use step::{StepArgs, StepKey, StepRun};
