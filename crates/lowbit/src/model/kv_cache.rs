//! A sequence's KV cache: every layer's keys and values on the model's device, filled position by position.

use crate::device_tensor::DeviceTensor;

/// A fresh number for this process (recorded steps' keys).
pub(super) fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Keys and values of every layer for one sequence, on the model's device.
pub struct KvCache {
    pub(super) k: Vec<DeviceTensor>,
    pub(super) v: Vec<DeviceTensor>,
    pub(super) len: usize,
    pub(super) capacity: usize,
    /// Unique in this process (recorded steps write into these buffers).
    pub(super) id: u64,
}

impl KvCache {
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position (the buffers are reused).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}
