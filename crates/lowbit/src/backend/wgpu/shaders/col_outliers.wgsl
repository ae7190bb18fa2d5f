// LLM.int8() outlier columns: flag[c] = 1 iff some row has !(|a| < threshold). One thread per column.
// Params: p0 = rows, p1 = cols, p2 = threshold bits. Needs: load_x_bits(i).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> flags: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wg_linear(wid, nwg) * 256u + lid;
    if (c >= p.p1) {
        return;
    }
    let thr = bitcast<f32>(p.p2);
    var f = 0u;
    for (var r = 0u; r < p.p0; r = r + 1u) {
        let b = load_x_bits(r * p.p1 + c);
        if (!(bitcast<f32>(b & ABS_MASK) < thr)) {
            f = 1u;
        }
    }
    flags[c] = f;
}
