//! Fast CPU kernels: SIMD (AVX2 + FMA + F16C on x86-64) with a portable fallback, threads through rayon.
//! Each kernel family lives in its own module; `unsafe` stays inside `#[target_feature]` functions that are
//! only called after [`isa`] has confirmed the features. Every kernel is tested against `reference`.

pub mod activation;
pub mod attention;
pub mod gemm;
pub mod gemv4;
pub mod gemv4_rows;
pub mod gemv_rows;
pub mod int8;
pub mod q4_lanes;
pub mod q8;
pub mod q8_gemm;
pub mod quantize;
pub mod ternary;
pub mod widen;

use std::sync::OnceLock;

/// The instruction set a kernel may use. Only this crate can name a variant: outside it an `Isa` comes from
/// [`isa`] or [`Isa::available`], which report what this CPU runs, so safe code cannot ask a kernel to
/// execute AVX-512 instructions on a CPU without them.
///
/// ```compile_fail
/// let forged = lowbit::backend::cpu::fast::Isa::Avx512;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust; the compiler's auto-vectorisation only.
    #[non_exhaustive]
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    #[non_exhaustive]
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL: kernels without an AVX-512 variant run their AVX2 one.
    #[non_exhaustive]
    Avx512,
}

impl Isa {
    /// Whether AVX2 kernels may run.
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// Every instruction set this CPU can run, best first (tests run each).
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|&i| i <= isa())
            .collect()
    }
}

/// The best instruction set this CPU supports, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            Isa::Avx512
        } else {
            Isa::Avx2
        }
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// Work per rayon task, in bytes touched: below this, splitting costs more than it saves. With tasks in
/// multiples of the thread count ([`task_len`]), 16 KiB lets a small model's 576-wide projections run as 2-8
/// tasks: SmolLM2-135M NF4 decode on 2 cores, median of 5 alternating runs, int8 activations 114 -> 147
/// tokens/s against 64 KiB without the multiple (float activations 92 -> 94, prefill unchanged).
const MIN_TASK_BYTES: usize = 16 * 1024;

/// Items per rayon task for `n` items of `bytes_per_item` each: big enough to amortise scheduling (at least
/// [`MIN_TASK_BYTES`]), small enough to give every thread several tasks for balance, and, when there are
/// fewer tasks than that, a multiple of the thread count of them, so no thread runs one task more than
/// another (a 576x576 NF4 GEMV was 3 tasks on 2 threads: one thread did two thirds of the work).
pub(crate) fn task_len(n: usize, bytes_per_item: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let total = n.saturating_mul(bytes_per_item.max(1));
    let tasks = (total / MIN_TASK_BYTES).clamp(1, threads * 4);
    let tasks = if tasks >= threads {
        tasks - tasks % threads
    } else {
        tasks
    };
    n.div_ceil(tasks).clamp(1, n.max(1))
}

/// A fresh seed per run for the kernels' random tests (`LOWBIT_SEED` replays one), printed.
#[cfg(test)]
pub(crate) fn test_seed() -> u64 {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    println!("seed {seed} (LOWBIT_SEED={seed} replays)");
    seed
}

/// Repeatable pseudo-random values in `[-spread / 2, spread / 2)` for the kernels' unit tests (an LCG: no
/// dependency, the same data on every machine).
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}
