// Embedding gather: out[t, d] = table[ids[t], d] as exact f32 bits (bits_table, generated per dtype).
// Params: p0 = ids * dim, p1 = dim, p2 = vocab. An id outside the table gives a zero row (no stray reads).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wg_linear(wid, nwg) * 256u + lid;
    if (i >= p.p0) {
        return;
    }
    let id = ids[i / p.p1];
    if (id >= p.p2) {
        out[i] = 0u;
        return;
    }
    out[i] = bits_table(id * p.p1 + i % p.p1);
}
