// Blockwise quantization (8-bit codes or packed NF4/FP4 nibbles), FORMATS.md 2-3. A block is handled by T
// threads of one workgroup: an exact integer max over |x| bit patterns gives absmax, then every thread
// encodes whole output words (EPW elements each). Params: p0 = n, p1 = blocksize, p2 = threads per block.
// Needs: load_x_bits(i), encode(s), EPW, nibble/byte placement `code_shift(j)`.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> absmax_out: array<u32>;

var<workgroup> red: array<u32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = p.p0;
    let bs = p.p1;
    let tpb = p.p2;
    let blk = wg_linear(wid, nwg) * (256u / tpb) + lid / tpb;
    let t = lid % tpb;
    let start = blk * bs;
    let end = min(start + bs, n);

    // NaN is skipped (CUDA's fmaxf); for non-negative floats the bit order is the value order.
    var m = 0u;
    for (var i = start + t; i < end; i = i + tpb) {
        let b = load_x_bits(i) & ABS_MASK;
        if (b <= EXP_MASK) {
            m = max(m, b);
        }
    }
    red[lid] = m;
    workgroupBarrier();
    for (var off = tpb / 2u; off > 0u; off = off >> 1u) {
        if (t < off) {
            red[lid] = max(red[lid], red[lid + off]);
        }
        workgroupBarrier();
    }
    let amax = red[lid - t];
    if (start >= n) {
        return;
    }
    if (t == 0u) {
        absmax_out[blk] = amax;
    }
    // absmax 0 (or subnormal, flushed) makes every scaled value 0 * inf = NaN on CUDA: code 0 everywhere.
    let nan_block = (amax & EXP_MASK) == 0u;
    var r = 0.0;
    if (!nan_block) {
        r = rcp_fast_math(amax);
    }
    let w_end = (start + bs) / EPW;
    for (var w = start / EPW + t; w < w_end; w = w + tpb) {
        let e0 = w * EPW;
        if (e0 >= n) {
            break;
        }
        var word = 0u;
        for (var j = 0u; j < EPW; j = j + 1u) {
            let i = e0 + j;
            var c = 0u;
            if (!nan_block) {
                // Elements past n read as 0.0: the padding nibble of an odd length.
                var xb = 0u;
                if (i < n) {
                    xb = load_x_bits(i);
                }
                if (is_finite_bits(xb)) {
                    c = encode(ftz(ftz(bitcast<f32>(xb)) * r));
                }
            }
            word = word | (c << code_shift(j));
        }
        codes[w] = word;
    }
}
