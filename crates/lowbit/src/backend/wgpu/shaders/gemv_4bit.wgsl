// Fused NF4/FP4 GEMV (batch 1): y[r] = sum_k x[k] * ftz(table[nib(r*cols+k)] * absmax[..]) + bias[r].
// 64 threads per row, 4 rows per workgroup; each thread streams whole u32 words (8 nibbles) of its row.
// Params: p0 = row end, p1 = cols, p2 = log2(blocksize), p3 = has bias, p4 = first word held by `packed`,
// p5 = first row of this dispatch.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> lut: array<f32, 16>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid < 16u) {
        lut[lid] = table[lid];
    }
    workgroupBarrier();
    let cols = p.p1;
    let row = p.p5 + wg_linear(wid, nwg) * 4u + lid / 64u;
    let t = lid % 64u;
    var acc = 0.0;
    if (row < p.p0) {
        let base = row * cols;
        let w_begin = base / 8u;
        let w_end = (base + cols + 7u) / 8u;
        for (var w = w_begin + t; w < w_end; w = w + 64u) {
            let word = packed[w - p.p4];
            let e0 = w * 8u;
            let a = absmax[e0 >> p.p2];
            if (e0 >= base && e0 + 8u <= base + cols) {
                let k0 = e0 - base;
                for (var j = 0u; j < 8u; j = j + 1u) {
                    let sh = (j >> 1u) * 8u + 4u * (1u - (j & 1u));
                    acc = acc + x[k0 + j] * ftz(lut[(word >> sh) & 15u] * a);
                }
            } else {
                for (var j = 0u; j < 8u; j = j + 1u) {
                    let i = e0 + j;
                    if (i >= base && i < base + cols) {
                        let sh = (j >> 1u) * 8u + 4u * (1u - (j & 1u));
                        acc = acc + x[i - base] * ftz(lut[(word >> sh) & 15u] * a);
                    }
                }
            }
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off = off >> 1u) {
        if (t < off) {
            red[lid] = red[lid] + red[lid + off];
        }
        workgroupBarrier();
    }
    if (t == 0u && row < p.p0) {
        var b = 0.0;
        if (p.p3 != 0u) {
            b = bias[row];
        }
        y[row] = red[lid] + b;
    }
}
