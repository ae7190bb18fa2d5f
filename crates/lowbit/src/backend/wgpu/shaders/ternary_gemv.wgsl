// BitNet GEMV (batch 1), exact i32: one workgroup per packed row r; each byte of it carries the weights of
// rows r, R + r, 2R + r, 3R + r, so one pass over the packed row yields four outputs. Needs cols % 4 == 0
// (x and the packed row are then word aligned). Params: p0 = rows, p1 = cols, p2 = R.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<i32>;

var<workgroup> red: array<vec4<i32>, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wg_linear(wid, nwg);
    let words = p.p1 / 4u;
    var acc = vec4<i32>(0);
    if (r < p.p2) {
        let base = r * words;
        for (var i = lid; i < words; i = i + 256u) {
            let wv = w[base + i];
            let xv = xq[i];
            for (var j = 0u; j < 4u; j = j + 1u) {
                let x = i32(xv << (24u - 8u * j)) >> 24u;
                let b = (wv >> (8u * j)) & 0xffu;
                let t = vec4<i32>(
                    i32(b & 3u) - 1,
                    i32((b >> 2u) & 3u) - 1,
                    i32((b >> 4u) & 3u) - 1,
                    i32((b >> 6u) & 3u) - 1,
                );
                acc = acc + t * x;
            }
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off >> 1u) {
        if (lid < off) {
            red[lid] = red[lid] + red[lid + off];
        }
        workgroupBarrier();
    }
    if (lid == 0u && r < p.p2) {
        let s = red[0];
        for (var i = 0u; i < 4u; i = i + 1u) {
            let row = i * p.p2 + r;
            if (row < p.p0) {
                y[row] = s[i];
            }
        }
    }
}
