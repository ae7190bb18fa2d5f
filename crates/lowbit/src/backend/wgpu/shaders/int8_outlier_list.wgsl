// LLM.int8(): the outlier columns flagged by col_outliers.wgsl as an ascending list, list[0] = count and
// list[1 + j] = the j-th column, so the output kernel visits only those columns, in the order the CPU does.
// One workgroup of 256 threads, each over a contiguous run of columns. Params: p0 = cols.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> flags: array<u32>;
@group(0) @binding(2) var<storage, read_write> list: array<u32>;

var<workgroup> counts: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let per = (p.p0 + 255u) / 256u;
    let c0 = min(lid * per, p.p0);
    let c1 = min(c0 + per, p.p0);
    var n = 0u;
    for (var c = c0; c < c1; c = c + 1u) {
        n = n + select(0u, 1u, flags[c] != 0u);
    }
    counts[lid] = n;
    workgroupBarrier();
    // The runs before this one: 255 adds at most, once per forward pass.
    var at = 0u;
    for (var t = 0u; t < lid; t = t + 1u) {
        at = at + counts[t];
    }
    for (var c = c0; c < c1; c = c + 1u) {
        if (flags[c] != 0u) {
            list[1u + at] = c;
            at = at + 1u;
        }
    }
    if (lid == 255u) {
        list[0] = at;
    }
}
