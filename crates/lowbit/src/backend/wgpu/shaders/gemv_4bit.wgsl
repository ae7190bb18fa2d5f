// Fused NF4/FP4 GEMV (batch 1): y[r] = sum_k x[k] * ftz(table[nib(r*cols+k)] * absmax[..]) + bias[r].
// One workgroup of 256 threads handles RPW rows. When rows are word aligned (cols % 8 == 0) a thread takes
// word i of every one of its rows at once: x[8i..8i+8] is read once for RPW rows, and the RPW weight words
// (coalesced across the workgroup) and their absmax are independent loads in flight together, so the loop
// is bandwidth rather than latency bound. Otherwise each row is streamed word by word with edge checks.
// Params: p0 = row end, p1 = cols, p2 = log2(blocksize), p3 = has bias, p4 = first word held by `packed`,
// p5 = first row of this dispatch.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const RPW: u32 = 8u;

var<workgroup> red: array<f32, 2048>;
var<workgroup> lut: array<f32, 16>;

// Element 2k is the high nibble of byte k.
fn nib(word: u32, j: u32) -> u32 {
    return (word >> ((j >> 1u) * 8u + 4u * (1u - (j & 1u)))) & 15u;
}

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
    let row0 = p.p5 + wg_linear(wid, nwg) * RPW;
    let nrows = min(RPW, max(p.p0, row0) - row0);
    var acc: array<f32, RPW>;
    for (var r = 0u; r < RPW; r = r + 1u) {
        acc[r] = 0.0;
    }
    if ((cols & 7u) == 0u && nrows == RPW) {
        let wpr = cols / 8u;
        let w0 = row0 * wpr - p.p4;
        for (var i = lid; i < wpr; i = i + 256u) {
            var words: array<u32, RPW>;
            var scale: array<f32, RPW>;
            for (var r = 0u; r < RPW; r = r + 1u) {
                words[r] = packed[w0 + r * wpr + i];
                scale[r] = absmax[((row0 + r) * cols + i * 8u) >> p.p2];
            }
            var xs: array<f32, 8>;
            for (var j = 0u; j < 8u; j = j + 1u) {
                xs[j] = x[i * 8u + j];
            }
            for (var r = 0u; r < RPW; r = r + 1u) {
                let word = words[r];
                let a = scale[r];
                var s0 = acc[r];
                var s1 = 0.0;
                for (var j = 0u; j < 8u; j = j + 2u) {
                    s0 = s0 + xs[j] * ftz(lut[nib(word, j)] * a);
                    s1 = s1 + xs[j + 1u] * ftz(lut[nib(word, j + 1u)] * a);
                }
                acc[r] = s0 + s1;
            }
        }
        for (var r = 0u; r < RPW; r = r + 1u) {
            red[r * 256u + lid] = acc[r];
        }
    } else {
        for (var r = 0u; r < nrows; r = r + 1u) {
            let base = (row0 + r) * cols;
            let w_end = (base + cols + 7u) / 8u;
            var s = 0.0;
            for (var w = base / 8u + lid; w < w_end; w = w + 256u) {
                let word = packed[w - p.p4];
                let e0 = w * 8u;
                let a = absmax[e0 >> p.p2];
                for (var j = 0u; j < 8u; j = j + 1u) {
                    let e = e0 + j;
                    if (e >= base && e < base + cols) {
                        s = s + x[e - base] * ftz(lut[nib(word, j)] * a);
                    }
                }
            }
            red[r * 256u + lid] = s;
        }
        for (var r = nrows; r < RPW; r = r + 1u) {
            red[r * 256u + lid] = 0.0;
        }
    }
    workgroupBarrier();
    // Row r's 256 partial sums: thread lid sums eight of them (stride 32), then a 32-wide tree.
    let rr = lid / 32u;
    let l = lid % 32u;
    var s = 0.0;
    for (var k = 0u; k < 8u; k = k + 1u) {
        s = s + red[rr * 256u + l + 32u * k];
    }
    workgroupBarrier();
    red[lid] = s;
    workgroupBarrier();
    for (var off = 16u; off > 0u; off = off >> 1u) {
        if (l < off) {
            red[lid] = red[lid] + red[lid + off];
        }
        workgroupBarrier();
    }
    if (l == 0u && rr < nrows) {
        let row = row0 + rr;
        var b = 0.0;
        if (p.p3 != 0u) {
            b = bias[row];
        }
        y[row] = red[lid] + b;
    }
}
