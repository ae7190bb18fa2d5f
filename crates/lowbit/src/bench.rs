//! Machine measurements that performance targets are stated against.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes the read-bandwidth probe streams through (large enough to defeat every cache level).
pub const READ_PROBE_BYTES: usize = 1 << 30;

/// Sustained multi-threaded read bandwidth in bytes per second: the best of `repeats` passes summing
/// `bytes` of u64 words on every rayon thread. Memory kernels are judged as a fraction of this figure.
pub fn measure_read_bandwidth_with(bytes: usize, repeats: usize) -> f64 {
    let words = (bytes / 8).max(1);
    // Distinct non-zero values so every page is really backed and nothing is folded away.
    let data: Vec<u64> = (0..words as u64)
        .into_par_iter()
        .map(|i| i ^ 0x9E37)
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        std::hint::black_box(sum_u64(&data));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// The probe's kernel: a wrapping sum of `data`, split evenly over the rayon threads.
pub fn sum_u64(data: &[u64]) -> u64 {
    let threads = rayon::current_num_threads().max(1);
    let chunk = data.len().div_ceil(threads * 4).max(1024);
    data.par_chunks(chunk)
        .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
        .reduce(|| 0, u64::wrapping_add)
}

/// [`measure_read_bandwidth_with`] over 1 GiB, best of 5.
pub fn measure_read_bandwidth() -> f64 {
    measure_read_bandwidth_with(READ_PROBE_BYTES, 5)
}
