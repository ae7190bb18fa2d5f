// LLM.int8() linear output, bit for bit as the CPU computes it (ops::int8, FORMATS.md §7), two f16 outputs per
// thread (one word of y [rows, n]):
//   y = f16(fma((f32(c) * row_stat) * scb, MM_DEQUANT_SCALE, bias))          int8_mm_dequant, on bit patterns
//   with outlier columns: y = f16(y + f16(sum_j x16[r, col_j] * f16((f32(w[o, col_j]) * scb[o]) * (1/127))))
// The outlier sum keeps the CPU reference matmul's order (8 interleaved partial sums, then lanes 0..7); its
// products are the shader's own floats, so that term is within float32 rounding of the CPU's, not bit-equal.
// Params: p0 = rows, p1 = n (out features), p2 = k, p3 = has bias, p4 = with outlier list,
// p5 = MM_DEQUANT_SCALE bits, p6 = 1/127 bits.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> c_in: array<i32>;
@group(0) @binding(2) var<storage, read> row_stats: array<u32>;
@group(0) @binding(3) var<storage, read> scb: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;
@group(0) @binding(5) var<storage, read> x16: array<u32>;
@group(0) @binding(6) var<storage, read> w_in: array<u32>;
@group(0) @binding(7) var<storage, read> list: array<u32>;
@group(0) @binding(8) var<storage, read_write> y: array<u32>;

fn half_at(i: u32, word: u32) -> u32 {
    return (word >> ((i & 1u) * 16u)) & 0xffffu;
}

fn weight_at(i: u32) -> i32 {
    return i32(w_in[i >> 2u] << (24u - 8u * (i & 3u))) >> 24u;
}

// f16 bits of output `idx`.
fn output(idx: u32) -> u32 {
    let r = idx / p.p1;
    let o = idx % p.p1;
    let t = mul_bits(mul_bits(i32_to_f32_bits(c_in[idx]), row_stats[r]), scb[o]);
    var b = 0u;
    if (p.p3 != 0u) {
        b = widen_f16(half_at(o, bias[o >> 1u]));
    }
    var out = narrow_f16(fma_bits(t, p.p5, b));
    if (p.p4 == 0u) {
        return out;
    }
    let count = list[0];
    if (count == 0u) {
        return out;
    }
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < count; j = j + 1u) {
        let col = list[1u + j];
        let xi = r * p.p2 + col;
        let xv = bitcast<f32>(widen_f16(half_at(xi, x16[xi >> 1u])));
        let wi = o * p.p2 + col;
        let wd = mul_bits(mul_bits(i32_to_f32_bits(weight_at(wi)), scb[o]), p.p6);
        let wv = bitcast<f32>(widen_f16(narrow_f16(wd)));
        acc[j & 7u] = acc[j & 7u] + xv * wv;
    }
    var s = 0.0;
    for (var l = 0u; l < 8u; l = l + 1u) {
        s = s + acc[l];
    }
    // The reference matmul adds its (absent) bias: -0 becomes +0.
    s = s + 0.0;
    let e = widen_f16(narrow_f16(bitcast<u32>(s)));
    let sum = bitcast<f32>(widen_f16(out)) + bitcast<f32>(e);
    return narrow_f16(bitcast<u32>(sum));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let word = wg_linear(wid, nwg) * 256u + lid;
    let total = p.p0 * p.p1;
    let i = 2u * word;
    if (i >= total) {
        return;
    }
    var hi = 0u;
    if (i + 1u < total) {
        hi = output(i + 1u) << 16u;
    }
    y[word] = output(i) | hi;
}
