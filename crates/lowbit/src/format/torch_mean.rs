//! `torch.mean` of a contiguous float32 CUDA tensor in torch 2.11's exact reduction order on a 132-SM GPU
//! (H100/H200). Double quantization's `offset` is this mean of the absmax vector; a correctly rounded sum
//! gives a different last bit for about a quarter of real shapes. FORMATS.md §4 describes the order.

const MAX_THREADS: usize = 512;
const VEC: usize = 4;
const VECTORIZE_MIN: usize = 128;
/// SM count of an H100/H200, which only matters above 4,325,376 values.
pub const H100_SM_COUNT: usize = 132;
const THREADS_PER_SM: usize = 2048;

struct Config {
    vector: bool,
    width: usize,
    blocks: usize,
}

fn last_pow2(n: usize) -> usize {
    if n == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

fn reduce_config(n: usize, sm_count: usize) -> Config {
    let vector = n >= VECTORIZE_MIN;
    let dim0 = if vector { n / VEC } else { n };
    let width = if dim0 >= MAX_THREADS {
        MAX_THREADS
    } else {
        last_pow2(dim0)
    };
    let per_thread = n.div_ceil(width);
    let mut blocks = 1;
    if per_thread >= 256 {
        let target = sm_count * (THREADS_PER_SM / width);
        blocks = target
            .min(per_thread.div_ceil(16))
            .max(per_thread.div_ceil(256));
    }
    Config {
        vector,
        width,
        blocks,
    }
}

/// Halving-offset tree over a power-of-two slice; returns element 0.
fn tree(r: &mut [f32]) -> f32 {
    let mut off = r.len() / 2;
    while off >= 1 {
        for t in 0..off {
            r[t] += r[t + off];
        }
        off /= 2;
    }
    r[0]
}

fn scalar_path(x: &[f32], width: usize) -> f32 {
    let mut acc = vec![[0.0f32; VEC]; width];
    for (m, chunk) in x.chunks(width).enumerate() {
        for (t, &v) in chunk.iter().enumerate() {
            acc[t][m % VEC] += v;
        }
    }
    let mut r: Vec<f32> = acc.iter().map(|a| ((a[0] + a[1]) + a[2]) + a[3]).collect();
    tree(&mut r)
}

fn vector_path(x: &[f32], width: usize, blocks: usize) -> f32 {
    let g = width * blocks;
    let mut acc = vec![[0.0f32; VEC]; g];
    let nv = x.len() / VEC;
    for k in 0..nv {
        let a = &mut acc[k % g];
        for i in 0..VEC {
            a[i] += x[k * VEC + i];
        }
    }
    for (t, &v) in x[nv * VEC..].iter().enumerate() {
        acc[t][0] += v;
    }
    let r: Vec<f32> = acc.iter().map(|a| ((a[0] + a[1]) + a[2]) + a[3]).collect();
    let partials: Vec<f32> = r.chunks(width).map(|c| tree(&mut c.to_vec())).collect();
    if blocks == 1 {
        return partials[0];
    }
    let mut slots = [0.0f32; MAX_THREADS];
    for chunk in partials.chunks(MAX_THREADS) {
        for (t, &p) in chunk.iter().enumerate() {
            slots[t] += p;
        }
    }
    tree(&mut slots)
}

/// `torch.sum` of a fresh (16-byte aligned) 1-D float32 CUDA tensor.
pub fn torch_cuda_sum_f32(x: &[f32], sm_count: usize) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let cfg = reduce_config(x.len(), sm_count);
    if cfg.vector {
        vector_path(x, cfg.width, cfg.blocks)
    } else {
        scalar_path(x, cfg.width)
    }
}

/// `torch.mean`: `float32(S * float32(1 / float32(n)))`. NaN for an empty input, as torch gives.
pub fn torch_cuda_mean_f32(x: &[f32]) -> f32 {
    if x.is_empty() {
        return f32::NAN;
    }
    let factor = 1.0f32 / x.len() as f32;
    torch_cuda_sum_f32(x, H100_SM_COUNT) * factor
}
