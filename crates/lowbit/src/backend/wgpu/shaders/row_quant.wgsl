// Row-wise int8 quantization with a per-row scale, one thread per output word (4 values).
// Params: p0 = rows, p1 = cols, p2 = outlier threshold bits (0 = none), p3 = mode (0 = LLM.int8(), 1 = BitNet
// activations), p4 = 1 to zero whole outlier columns. Needs: load_x_bits(i).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<u32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read> col_flags: array<u32>;
@group(0) @binding(5) var<storage, read_write> q: array<u32>;

fn quant_one(i: u32) -> i32 {
    let cols = p.p1;
    let row = i / cols;
    let b = load_x_bits(i);
    if (!is_finite_bits(b)) {
        return 0;
    }
    if (p.p3 == 1u) {
        let v = bitcast<f32>(b) * scale[row];
        return clamp(rne_i32(v), -128, 127);
    }
    let thr = bitcast<f32>(p.p2);
    if (thr > 0.0) {
        if (!(bitcast<f32>(b & ABS_MASK) < thr)) {
            return 0;
        }
        if (p.p4 != 0u && col_flags[i % cols] != 0u) {
            return 0;
        }
    }
    // absmax 0 or subnormal: scale inf, 0 * inf = NaN, which __float2int_rn turns into 0.
    if ((absmax[row] & EXP_MASK) == 0u) {
        return 0;
    }
    let v = ftz(ftz(bitcast<f32>(b)) * scale[row]);
    return clamp(rne_i32(v), -128, 127);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = wg_linear(wid, nwg) * 256u + lid;
    let n = p.p0 * p.p1;
    if (w * 4u >= n) {
        return;
    }
    var word = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = w * 4u + j;
        if (i < n) {
            word = word | ((u32(quant_one(i)) & 0xffu) << (8u * j));
        }
    }
    q[w] = word;
}
