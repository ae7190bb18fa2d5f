// Per-row absmax and quantization scale (one workgroup per row). Params: p0 = rows, p1 = cols,
// p2 = outlier threshold bits (0 = none), p3 = mode: 0 = LLM.int8() `__fdividef(127, absmax)` (MUFU.RCP then
// an FTZ multiply), 1 = BitNet `float32(float32(1 / max(absmax, p4)) * 127)` with a correctly rounded 1/x.
// Needs: load_x_bits(i).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> absmax_out: array<u32>;
@group(0) @binding(3) var<storage, read_write> scale_out: array<f32>;

var<workgroup> red: array<u32, 256>;

fn is_inlier(b: u32) -> bool {
    let thr = bitcast<f32>(p.p2);
    return !(thr > 0.0) || bitcast<f32>(b & ABS_MASK) < thr;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg_linear(wid, nwg);
    let cols = p.p1;
    var m = 0u;
    if (row < p.p0) {
        for (var c = lid; c < cols; c = c + 256u) {
            let b = load_x_bits(row * cols + c);
            let a = b & ABS_MASK;
            if (a <= EXP_MASK && is_inlier(b)) {
                m = max(m, a);
            }
        }
    }
    red[lid] = m;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off >> 1u) {
        if (lid < off) {
            red[lid] = max(red[lid], red[lid + off]);
        }
        workgroupBarrier();
    }
    if (lid != 0u || row >= p.p0) {
        return;
    }
    let amax = red[0];
    absmax_out[row] = amax;
    if (p.p3 == 0u) {
        // 0 or subnormal absmax: rcp = inf; the quantizer sends those rows to 0 (NaN path).
        scale_out[row] = ftz(127.0 * rcp_fast_math(amax));
    } else {
        let t = max(bitcast<f32>(amax), bitcast<f32>(p.p4));
        scale_out[row] = bitcast<f32>(rcp_rn_bits(bitcast<u32>(t))) * 127.0;
    }
}
