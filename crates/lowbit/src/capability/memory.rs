//! What an op says about its memory: `fixed + per_unit * units` bytes per buffer, over the units it can be
//! split by. The runtime plans chunks from it (`runtime::memory`).

use serde::Serialize;

/// One buffer an op reads or writes: `fixed + per_unit * units` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BufferEstimate {
    pub fixed: u64,
    pub per_unit: u64,
}

/// The buffers of one op, over `units` splittable units.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    pub units: usize,
    pub buffers: Vec<BufferEstimate>,
}

impl MemoryEstimate {
    pub fn new(units: usize) -> Self {
        MemoryEstimate {
            units,
            buffers: Vec::new(),
        }
    }

    /// Adds a buffer of `fixed + per_unit * units` bytes.
    pub fn buffer(mut self, fixed: u64, per_unit: u64) -> Self {
        self.buffers.push(BufferEstimate { fixed, per_unit });
        self
    }

    /// Total bytes for a chunk of `units`.
    pub fn total(&self, units: usize) -> u64 {
        self.buffers
            .iter()
            .map(|b| {
                b.fixed
                    .saturating_add(b.per_unit.saturating_mul(units as u64))
            })
            .fold(0u64, u64::saturating_add)
    }

    /// The largest single buffer for a chunk of `units`.
    pub fn largest(&self, units: usize) -> u64 {
        self.buffers
            .iter()
            .map(|b| {
                b.fixed
                    .saturating_add(b.per_unit.saturating_mul(units as u64))
            })
            .max()
            .unwrap_or(0)
    }

    /// Bytes per unit over all buffers (at least 1).
    pub fn per_unit(&self) -> u64 {
        self.buffers.iter().map(|b| b.per_unit).sum::<u64>().max(1)
    }
}
