//! Per-device, per-op statistics: runs, time, retries, chunking, fallbacks, errors by kind. Devices with the
//! same id share one record for the whole process, so `stats_snapshot()` answers "where did my ops run?".

use crate::capability::OpKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Counters of one op on one device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    /// Calls (successful or not).
    pub runs: u64,
    /// Wall time of all calls, recovery included, in nanoseconds.
    pub total_ns: u64,
    /// Retries after transient failures.
    pub retries: u64,
    /// Calls that were split into chunks (memory budget or out-of-memory).
    pub chunked_runs: u64,
    /// Chunks run by those calls.
    pub chunks: u64,
    /// Calls that ran on the CPU instead (or unsplit over the memory budget on the CPU itself).
    pub fallbacks: u64,
    /// Calls that returned an error to the caller.
    pub failures: u64,
    /// Every error seen, recovered or not, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn merge(&mut self, o: &OpStats) {
        self.runs += o.runs;
        self.total_ns += o.total_ns;
        self.retries += o.retries;
        self.chunked_runs += o.chunked_runs;
        self.chunks += o.chunks;
        self.fallbacks += o.fallbacks;
        self.failures += o.failures;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// The counters of one device (thread-safe; shared by every `Device` value with the same id).
#[derive(Debug, Default)]
pub struct DeviceStats {
    ops: Mutex<BTreeMap<OpKind, OpStats>>,
}

impl DeviceStats {
    /// Adds one call's counters.
    pub(crate) fn record(&self, op: OpKind, call: &OpStats) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.entry(op).or_default().merge(call);
    }

    pub fn snapshot(&self, device: &str) -> DeviceStatsSnapshot {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        DeviceStatsSnapshot {
            device: device.to_string(),
            ops: ops
                .iter()
                .map(|(k, v)| (k.name().to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn reset(&self) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The statistics of one device at a point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStatsSnapshot {
    pub device: String,
    pub ops: BTreeMap<String, OpStats>,
}

impl DeviceStatsSnapshot {
    /// The counters of `op` (zero if it never ran).
    pub fn op(&self, op: OpKind) -> OpStats {
        self.ops.get(op.name()).cloned().unwrap_or_default()
    }
}

/// The statistics of every device used in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub devices: Vec<DeviceStatsSnapshot>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<DeviceStats>>> {
    static REG: OnceLock<Mutex<BTreeMap<String, Arc<DeviceStats>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// The shared counters of the device `id`.
pub(crate) fn for_device(id: &str) -> Arc<DeviceStats> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.entry(id.to_string()).or_default().clone()
}

/// Statistics of every device used so far in this process.
pub fn stats_snapshot() -> StatsSnapshot {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    StatsSnapshot {
        devices: reg.iter().map(|(id, s)| s.snapshot(id)).collect(),
    }
}

fn fmt_duration(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2}s", d.as_secs_f64())
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

impl fmt::Display for DeviceStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (op, s) in &self.ops {
            let errors = if s.errors.is_empty() {
                "-".to_string()
            } else {
                s.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            writeln!(
                f,
                "{:<10} {:<24} {:>6} {:>10} {:>7} {:>7} {:>9} {:>8}  {}",
                self.device,
                op,
                s.runs,
                fmt_duration(s.total_ns),
                s.retries,
                s.chunked_runs,
                s.fallbacks,
                s.failures,
                errors
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<24} {:>6} {:>10} {:>7} {:>7} {:>9} {:>8}  errors",
            "device", "op", "runs", "time", "retries", "chunked", "fallbacks", "failures"
        )?;
        for d in &self.devices {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
