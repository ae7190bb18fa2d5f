// Rotary position embedding, one thread per output element, f32 out. cos/sin are the shared tables
// (format::rope::cos_sin_table, [n_pos, rotary_dim / 2]); token t uses row pos_start + t.
// Params: p0 = elements, p1 = heads, p2 = head_dim, p3 = rotary_dim, p4 = pos_start,
// p5 = layout (0: halves (i, i + r/2), 1: interleaved (2i, 2i + 1)).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = wg_linear(wid, nwg) * 256u + lid;
    if (e >= p.p0) {
        return;
    }
    let hd = p.p2;
    let rot = p.p3;
    let d = e % hd;
    if (d >= rot) {
        out[e] = bits_x(e);
        return;
    }
    let head0 = e - d;
    let half = rot / 2u;
    var i: u32;
    var ia: u32;
    var second: bool;
    if (p.p5 == 0u) {
        second = d >= half;
        i = select(d, d - half, second);
        ia = head0 + i;
    } else {
        second = (d & 1u) == 1u;
        i = d / 2u;
        ia = head0 + 2u * i;
    }
    let ib = select(ia + 1u, ia + half, p.p5 == 0u);
    let t = e / (p.p1 * hd);
    let k = (p.p4 + t) * half + i;
    let c = cos_t[k];
    let s = sin_t[k];
    let a = load_x(ia);
    let b = load_x(ib);
    var y: f32;
    if (second) {
        y = b * c + a * s;
    } else {
        y = a * c - b * s;
    }
    out[e] = bitcast<u32>(y);
}
