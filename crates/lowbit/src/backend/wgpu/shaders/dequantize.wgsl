// Blockwise dequantization: out[i] = ftz(table[code_i] * absmax[i / blocksize]). One thread per packed word.
// Params: p0 = n, p1 = log2(blocksize). Needs: EPW, code_shift(j), CODE_MASK.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = wg_linear(wid, nwg) * 256u + lid;
    let e0 = w * EPW;
    if (e0 >= p.p0) {
        return;
    }
    let word = codes[w];
    // Block sizes are multiples of EPW, so one word lies in one block.
    let a = absmax[e0 >> p.p1];
    for (var j = 0u; j < EPW; j = j + 1u) {
        let c = (word >> code_shift(j)) & CODE_MASK;
        out[e0 + j] = ftz(table[c] * a);
    }
}
