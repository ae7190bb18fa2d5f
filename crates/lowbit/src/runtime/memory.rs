//! Memory estimates and chunk planning. An op describes its buffers as `fixed + per_unit * units` bytes,
//! where a unit is what it can be split by (a block, a row, a batch row); the runtime then picks the largest
//! chunk that fits the device's limits and the policy's budget.

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

    fn fits(&self, units: usize, limits: &Limits) -> bool {
        limits.total.is_none_or(|t| self.total(units) <= t)
            && limits.buffer.is_none_or(|b| self.largest(units) <= b)
    }
}

/// What one op may use on a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// All buffers together (memory budget, device memory).
    pub total: Option<u64>,
    /// One buffer (the device's max buffer / storage binding size).
    pub buffer: Option<u64>,
}

/// How to run an op given its estimate and the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Everything at once.
    Whole,
    /// Chunks of at most this many units.
    Chunks(usize),
    /// Does not fit even at `min_units`: the bytes the smallest chunk needs.
    TooBig { needed: u64 },
}

/// The largest chunk (in units) that fits, not below `min_units`; `splittable` false means whole or nothing.
pub fn plan(est: &MemoryEstimate, limits: &Limits, splittable: bool, min_units: usize) -> Plan {
    if est.fits(est.units, limits) {
        return Plan::Whole;
    }
    let min_units = min_units.clamp(1, est.units.max(1));
    if !splittable || est.units <= 1 || !est.fits(min_units, limits) {
        let u = if splittable { min_units } else { est.units };
        return Plan::TooBig {
            needed: est.total(u),
        };
    }
    // Binary search the largest fitting chunk in [min_units, units).
    let (mut lo, mut hi) = (min_units, est.units);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if est.fits(mid, limits) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Plan::Chunks(lo)
}

/// The smallest chunk (in units) worth splitting down to: about `min_chunk_bytes`.
pub fn min_units(est: &MemoryEstimate, min_chunk_bytes: u64) -> usize {
    (min_chunk_bytes.div_ceil(est.per_unit()) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_picks_the_largest_chunk_that_fits() {
        // 100 units of 10 bytes plus a fixed 50-byte buffer.
        let est = MemoryEstimate::new(100).buffer(50, 0).buffer(0, 10);
        let total = |t| Limits {
            total: Some(t),
            buffer: None,
        };
        assert_eq!(plan(&est, &total(1050), true, 1), Plan::Whole);
        assert_eq!(plan(&est, &total(1049), true, 1), Plan::Chunks(99));
        assert_eq!(plan(&est, &total(450), true, 1), Plan::Chunks(40));
        assert_eq!(
            plan(&est, &total(450), true, 41),
            Plan::TooBig { needed: 460 }
        );
        assert_eq!(
            plan(&est, &total(450), false, 1),
            Plan::TooBig { needed: 1050 }
        );
        assert_eq!(plan(&est, &total(55), true, 1), Plan::TooBig { needed: 60 });
        // The largest single buffer limits too.
        let buf = Limits {
            total: None,
            buffer: Some(200),
        };
        assert_eq!(plan(&est, &buf, true, 1), Plan::Chunks(20));
        assert_eq!(min_units(&est, 95), 10);
    }
}
