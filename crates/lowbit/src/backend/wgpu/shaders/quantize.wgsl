// Blockwise quantization (8-bit codes or packed NF4/FP4 nibbles), FORMATS.md 2-3. An item is one output word
// (EPW consecutive elements). A workgroup covers ITEMS = 256 * R consecutive items in R rows of 256: thread
// `lid` holds item lid + 256 k of each row k in registers (one vector load per item, consecutive lanes reading
// consecutive items), so x is read once. Blocks are 2^p1 items: a block lies within one row when it has at
// most 256 items (p2 = its item count threads share it), else it spans whole rows (p2 = 256).
// absmax: an exact integer max over |x| bit patterns, reduced in workgroup memory; one thread per block then
// computes the reciprocal, and every thread encodes its items from registers and writes whole words.
// Params: p0 = n, p1 = log2(items per block), p2 = min(items per block, 256).
// Needs: R, EPW, code_shift(j), load_item(i) (all EPW elements of item i, in range), load_x_bits(e) (one
// element), encoder_init(lid) (before the first barrier) and encode(s).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> absmax_out: array<u32>;

const ITEMS: u32 = 256u * R;
// Stands for "absmax 0 or subnormal" in `rs` (a reciprocal is never negative).
const NAN_BLOCK: u32 = 0xffffffffu;

// Per-item maxima, then per-block partial maxima (in place).
var<workgroup> red: array<u32, ITEMS>;
// Per block of this workgroup: the reciprocal's bits, or NAN_BLOCK.
var<workgroup> rs: array<u32, ITEMS>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = p.p0;
    let lg = p.p1;
    let tpb = p.p2;
    let item0 = wg_linear(wid, nwg) * ITEMS;
    encoder_init(lid);

    // Load every item once; elements past n read as 0.0 (the padding nibble of an odd length).
    var xs: array<u32, R * EPW>;
    for (var k = 0u; k < R; k = k + 1u) {
        let i = item0 + k * 256u + lid;
        let e0 = i * EPW;
        if (e0 + EPW <= n) {
            let v = load_item(i);
            for (var j = 0u; j < EPW; j = j + 1u) {
                xs[k * EPW + j] = v[j];
            }
        } else {
            for (var j = 0u; j < EPW; j = j + 1u) {
                var b = 0u;
                if (e0 + j < n) {
                    b = load_x_bits(e0 + j);
                }
                xs[k * EPW + j] = b;
            }
        }
        // NaN is skipped (CUDA's fmaxf); for non-negative floats the bit order is the value order.
        var m = 0u;
        for (var j = 0u; j < EPW; j = j + 1u) {
            let b = xs[k * EPW + j] & ABS_MASK;
            if (b <= EXP_MASK) {
                m = max(m, b);
            }
        }
        red[k * 256u + lid] = m;
    }
    workgroupBarrier();

    // Tree over each block's threads of a row down to (at most) 8 partial maxima at its first lanes.
    let t = lid & (tpb - 1u);
    for (var off = tpb / 2u; off >= 8u; off = off >> 1u) {
        if (t < off) {
            for (var k = 0u; k < R; k = k + 1u) {
                let s = k * 256u + lid;
                red[s] = max(red[s], red[s + off]);
            }
        }
        workgroupBarrier();
    }

    // One thread per block: absmax, and the reciprocal every thread of the block then reads.
    let blocks = ITEMS >> lg;
    let rows = max((1u << lg) >> 8u, 1u);
    let parts = min(tpb, 8u);
    for (var b = lid; b < blocks; b = b + 256u) {
        let first = b << lg;
        var amax = 0u;
        for (var k = 0u; k < rows; k = k + 1u) {
            for (var j = 0u; j < parts; j = j + 1u) {
                amax = max(amax, red[first + k * 256u + j]);
            }
        }
        var r_bits = NAN_BLOCK;
        if ((item0 + first) * EPW < n) {
            let blk = (item0 >> lg) + b;
            absmax_out[blk] = amax;
            // absmax 0 (or subnormal, flushed) makes every scaled value 0 * inf = NaN on CUDA: code 0 everywhere.
            if ((amax & EXP_MASK) != 0u) {
                r_bits = bitcast<u32>(rcp_fast_math(amax));
            }
        }
        rs[b] = r_bits;
    }
    workgroupBarrier();

    for (var k = 0u; k < R; k = k + 1u) {
        let li = k * 256u + lid;
        let i = item0 + li;
        if (i * EPW < n) {
            let rb = rs[li >> lg];
            var word = 0u;
            if (rb != NAN_BLOCK) {
                let r = bitcast<f32>(rb);
                for (var j = 0u; j < EPW; j = j + 1u) {
                    let xb = xs[k * EPW + j];
                    var c = 0u;
                    if (is_finite_bits(xb)) {
                        c = encode(ftz(ftz(bitcast<f32>(xb)) * r));
                    }
                    word = word | (c << code_shift(j));
                }
            }
            codes[i] = word;
        }
    }
}
