//! Buffer reuse for device tensors: a buffer whose tensor is dropped goes back to a free list keyed by its
//! size, and a later op of a similar size takes it instead of allocating, so a steady decode loop allocates
//! nothing after its first steps.
//!
//! Why reuse is safe, although ops are only recorded (into one pending command buffer) and run later:
//! - A buffer is given back only when nothing on the host holds it any more, so every command that reads or
//!   writes its old contents was recorded before the release.
//! - An op that takes it writes it from the GPU, in a command recorded after all of those. One queue runs
//!   command buffers in submission order, and wgpu orders the dispatches inside one, in one compute pass or
//!   several (it tracks each buffer's usage per dispatch and inserts the barriers), so the new writes land
//!   after the old reads.
//! - A host upload is different: `Queue::write_buffer` lands at the start of the *next* submission, before
//!   the commands already recorded in the pending command buffer. A buffer released while that pending
//!   buffer may still read it would be overwritten too early. So uploads take only buffers released before
//!   the last submission (`generation`), whose old readers are all already on the queue, ahead of the write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a pooled buffer is for: storage (ops, uploads) or mappable staging (read-back); never mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Use {
    Storage,
    Staging,
}

impl Use {
    pub(crate) fn usages(self) -> wgpu::BufferUsages {
        match self {
            Use::Storage => {
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST
            }
            Use::Staging => wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        }
    }
}

struct Free {
    buffer: wgpu::Buffer,
    /// The pool's generation when the buffer came back.
    released: u64,
}

/// Free buffers by (use, byte size), the submission generation and a count of every buffer the context
/// created (pooled or not), which tests read to assert that a steady loop allocates nothing.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<(Use, u64), Vec<Free>>>,
    generation: AtomicU64,
    created: AtomicU64,
}

/// The byte size a request of `bytes` is served with: at least 256, then steps of 1/32 of the next power
/// of two (at most 1/16 of the request unused), 1 MiB steps from 16 MiB up; never past `max` (one binding),
/// where the request itself (rounded to u32 words) is used.
pub(crate) fn size_class(bytes: u64, max: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let bytes = bytes.max(1);
    let step = if bytes > 16 * MIB {
        MIB
    } else {
        (bytes.next_power_of_two() / 32).max(256)
    };
    let class = bytes.div_ceil(step) * step;
    if class > max {
        bytes.div_ceil(4) * 4
    } else {
        class
    }
}

impl BufferPool {
    /// A free buffer of exactly `size` bytes; for a host upload (`for_upload`) only one released before the
    /// last submission (see the module comment).
    pub(crate) fn take(&self, usage: Use, size: u64, for_upload: bool) -> Option<wgpu::Buffer> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let list = free.get_mut(&(usage, size))?;
        // The lowest buffer (by wgpu's identity order) of those allowed, not the last released: a loop then
        // gets the same buffers at the same points of every step whatever order they came back in, so its
        // cached bind groups (context.rs) match from the second step on.
        let (i, _) = list
            .iter()
            .enumerate()
            .filter(|(_, f)| !for_upload || f.released < generation)
            .min_by(|(_, a), (_, b)| a.buffer.cmp(&b.buffer))?;
        Some(list.swap_remove(i).buffer)
    }

    /// Takes `buffer` back. The caller guarantees nothing else uses it from now on (its tensor is gone).
    pub(crate) fn give_back(&self, usage: Use, buffer: wgpu::Buffer) {
        let released = self.generation.load(Ordering::Acquire);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.entry((usage, buffer.size()))
            .or_default()
            .push(Free { buffer, released });
    }

    /// Called after each submission of recorded work.
    pub(crate) fn submitted(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Drops every free buffer (their memory returns to the driver once no command uses them).
    pub(crate) fn trim(&self) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let n = free.values().map(Vec::len).sum();
        free.clear();
        n
    }

    /// Free buffers held now.
    pub(crate) fn free_buffers(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_and_waste_little() {
        let max = 1 << 40;
        for bytes in [
            1u64,
            4,
            255,
            256,
            257,
            1000,
            4096,
            4097,
            65_537,
            1 << 24,
            (1 << 24) + 1,
            30_000_000,
        ] {
            let c = size_class(bytes, max);
            assert!(c >= bytes && c.is_multiple_of(4), "{bytes} -> {c}");
            assert!(c - bytes < (bytes / 16).max(256), "{bytes} -> {c}");
        }
        // Past one binding the request is served as asked (rounded to words).
        assert_eq!(size_class(1001, 1000), 1004);
    }
}
