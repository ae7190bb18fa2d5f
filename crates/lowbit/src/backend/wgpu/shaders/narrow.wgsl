// A window of columns of every row, moved as 32-bit words (f32 elements, or pairs of halves):
// dst[p4 + i] = src[(i / p1) * p2 + p3 + i % p1]. Params: p0 = words moved, p1 = words per output row,
// p2 = words per input row, p3 = the window's first word in a row, p4 = the first destination word (a
// KV-cache append is one row of every word, written at its row's offset).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wg_linear(wid, nwg) * 256u + lid;
    if (i < p.p0) {
        dst[p.p4 + i] = src[(i / p.p1) * p.p2 + p.p3 + i % p.p1];
    }
}
