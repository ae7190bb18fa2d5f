// BitNet GEMV (batch 1), exact i32. Packed row r carries in each byte the weights of rows r, R + r, 2R + r,
// 3R + r, so one pass over it yields four outputs; a workgroup takes PPW packed rows. Each thread reads one
// word of x (four i8) per step and the matching word of each of its packed rows (independent, coalesced
// loads in flight together); the 2-bit fields of a word become four packed i8 vectors (SWAR, no borrow across
// bytes) that meet x in exact dot4I8Packed products. Needs cols % 4 == 0 (x and the packed rows are then
// word aligned). Params: p0 = rows, p1 = cols, p2 = R.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<i32>;

const PPW: u32 = 4u;

var<workgroup> red: array<vec4<i32>, 1024>;

// Field q of every byte (values 0..2) minus one, as four packed i8.
fn trits(wv: u32, q: u32) -> u32 {
    let f = (wv >> (2u * q)) & 0x03030303u;
    return ((f | 0x80808080u) - 0x01010101u) ^ 0x80808080u;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r0 = wg_linear(wid, nwg) * PPW;
    let words = p.p1 / 4u;
    let np = min(PPW, max(p.p2, r0) - r0);
    var acc: array<vec4<i32>, PPW>;
    for (var k = 0u; k < PPW; k = k + 1u) {
        acc[k] = vec4<i32>(0);
    }
    if (np == PPW) {
        for (var i = lid; i < words; i = i + 256u) {
            let xv = xq[i];
            var wv: array<u32, PPW>;
            for (var k = 0u; k < PPW; k = k + 1u) {
                wv[k] = w[(r0 + k) * words + i];
            }
            for (var k = 0u; k < PPW; k = k + 1u) {
                acc[k] = acc[k] + vec4<i32>(
                    dot4I8Packed(xv, trits(wv[k], 0u)),
                    dot4I8Packed(xv, trits(wv[k], 1u)),
                    dot4I8Packed(xv, trits(wv[k], 2u)),
                    dot4I8Packed(xv, trits(wv[k], 3u)),
                );
            }
        }
        for (var k = 0u; k < PPW; k = k + 1u) {
            red[k * 256u + lid] = acc[k];
        }
    } else {
        for (var k = 0u; k < PPW; k = k + 1u) {
            var s = vec4<i32>(0);
            if (k < np) {
                for (var i = lid; i < words; i = i + 256u) {
                    let xv = xq[i];
                    let wk = w[(r0 + k) * words + i];
                    s = s + vec4<i32>(
                        dot4I8Packed(xv, trits(wk, 0u)),
                        dot4I8Packed(xv, trits(wk, 1u)),
                        dot4I8Packed(xv, trits(wk, 2u)),
                        dot4I8Packed(xv, trits(wk, 3u)),
                    );
                }
            }
            red[k * 256u + lid] = s;
        }
    }
    workgroupBarrier();
    // Packed row k's 256 partial sums: 64 threads each sum four (stride 64), then a 64-wide tree.
    let k = lid / 64u;
    let l = lid % 64u;
    var s = vec4<i32>(0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        s = s + red[k * 256u + l + 64u * j];
    }
    workgroupBarrier();
    red[lid] = s;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off = off >> 1u) {
        if (l < off) {
            red[lid] = red[lid] + red[lid + off];
        }
        workgroupBarrier();
    }
    if (l == 0u && k < np) {
        let t = red[lid];
        for (var q = 0u; q < 4u; q = q + 1u) {
            let row = q * p.p2 + r0 + k;
            if (row < p.p0) {
                y[row] = t[q];
            }
        }
    }
}
