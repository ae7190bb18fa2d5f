//! Memory estimates and chunk planning. An op describes its buffers as `fixed + per_unit * units` bytes,
//! where a unit is what it can be split by (a block, a row, a batch row); the runtime then picks the largest
//! chunk that fits the device's limits and the policy's budget.

pub use crate::capability::{BufferEstimate, MemoryEstimate};

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
    if fits(est, est.units, limits) {
        return Plan::Whole;
    }
    let min_units = min_units.clamp(1, est.units.max(1));
    if !splittable || est.units <= 1 || !fits(est, min_units, limits) {
        let u = if splittable { min_units } else { est.units };
        return Plan::TooBig {
            needed: est.total(u),
        };
    }
    // Binary search the largest fitting chunk in [min_units, units).
    let (mut lo, mut hi) = (min_units, est.units);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(est, mid, limits) {
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

/// Whether a chunk of `units` fits `limits`.
fn fits(est: &MemoryEstimate, units: usize, limits: &Limits) -> bool {
    limits.total.is_none_or(|t| est.total(units) <= t)
        && limits.buffer.is_none_or(|b| est.largest(units) <= b)
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
