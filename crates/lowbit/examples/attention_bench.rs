//! The CPU's causal attention at a prefill's shape, on a pool thread as a model runs it:
//! `cargo run --release -p lowbit --example attention_bench [ROWS [HEADS KV_HEADS HEAD_DIM]]` (default: a
//! 370-token SmolLM2-135M prompt, 9 heads over 3 KV heads of 64). Prints the median time and the GFLOP/s of
//! the causal products (`2 * 2 * head_dim` per visible query-key pair and head).
use lowbit::backend::cpu::fast::attention::attention;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("a number"))
        .collect();
    let rows = a.first().copied().unwrap_or(370);
    let (heads, kv_heads, hd) = match a[..] {
        [_, h, g, d] => (h, g, d),
        _ => (9, 3, 64),
    };
    let data = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0 - 1.0) * 0.5)
            .collect()
    };
    let q = data(rows * heads * hd, 1);
    let k = data(rows * kv_heads * hd, 2);
    let v = data(rows * kv_heads * hd, 3);
    let scale = 1.0 / (hd as f32).sqrt();
    rayon::scope(|_| {
        let mut t: Vec<f64> = (0..21)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(attention(&q, &k, &v, heads, kv_heads, hd, rows, 0, scale));
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        let pairs = (rows * (rows + 1) / 2) as f64;
        let gflop = pairs * heads as f64 * 4.0 * hd as f64 / 1e9;
        println!(
            "attention {rows} rows, {heads}/{kv_heads} heads of {hd}, {} threads: {:.2} ms median ({:.2}-{:.2}), {:.1} GFLOP/s",
            rayon::current_num_threads(),
            t[10],
            t[0],
            t[20],
            gflop / (t[10] / 1e3)
        );
    });
}
