// Blockwise dequantization: out[i] = ftz(table[code_i] * absmax[i / blocksize]). Each thread writes VPT vec4s
// (16 contiguous bytes per lane, consecutive lanes consecutive), at vec4 index g0 + k * 256; the code table
// sits in workgroup memory. Params: p0 = n, p1 = log2(blocksize). Needs: EPW, code_shift(j), CODE_MASK,
// TABLE_LEN (2^bits), VPT; regions between ROWS markers are repeated for k = 0..VPT by the host. The host binds
// `out` with ceil(n / 4) vec4s at least.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

var<workgroup> tbl: array<f32, TABLE_LEN>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid < TABLE_LEN) {
        tbl[lid] = table[lid];
    }
    let n = p.p0;
    let g0 = wg_linear(wid, nwg) * (256u * VPT) + lid;
    // All loads first (overlapping the table's), then the stores. Block sizes are multiples of 4, so one vec4
    // lies in one block.
//{ROWS
    let e{k} = (g0 + {k}u * 256u) * 4u;
    var w{k} = 0u;
    var a{k} = 0.0;
    if (e{k} < n) {
        w{k} = codes[e{k} / EPW];
        a{k} = absmax[e{k} >> p.p1];
    }
//}ROWS
    workgroupBarrier();
//{ROWS
    if (e{k} < n) {
        let j0 = e{k} % EPW;
        out[e{k} / 4u] = vec4<f32>(
            ftz(tbl[(w{k} >> code_shift(j0)) & CODE_MASK] * a{k}),
            ftz(tbl[(w{k} >> code_shift(j0 + 1u)) & CODE_MASK] * a{k}),
            ftz(tbl[(w{k} >> code_shift(j0 + 2u)) & CODE_MASK] * a{k}),
            ftz(tbl[(w{k} >> code_shift(j0 + 3u)) & CODE_MASK] * a{k}),
        );
    }
//}ROWS
}
