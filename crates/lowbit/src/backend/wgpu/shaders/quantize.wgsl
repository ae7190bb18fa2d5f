// Blockwise quantization (8-bit codes or packed NF4/FP4 nibbles), FORMATS.md 2-3. An item is one output word
// (EPW consecutive elements, held as `Item`: EPW / 4 vec4s of f32 bit patterns). A workgroup covers
// ITEMS = 256 * R consecutive items in R rows of 256: thread `lid` holds item lid + 256 k of each row k in
// registers (whole-vector loads, consecutive lanes reading consecutive items), so x is read once. Blocks are
// 2^p1 items: a block lies within one row when it has at most 256 items (p2 = its item count threads share
// it), else it spans whole rows (p2 = 256).
// absmax: an exact integer max over |x| bit patterns, reduced in workgroup memory; one thread per block then
// computes the reciprocal, and every thread encodes its items from registers and writes whole words.
// Params: p0 = n, p1 = log2(items per block), p2 = min(items per block, 256).
// Needs: R, EPW, `Item`, load_item(i, n) (elements past n read as 0.0), item_max(it), item_word(it, r),
// encoder_init(lid) (before the first barrier) and encode4(s). Regions between ROWS markers are repeated for
// k = 0..R (the host unrolls them, so items stay in registers).

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

// max |x| over the non-NaN lanes (CUDA's fmaxf skips NaN); for non-negative floats the bit order is the value
// order.
fn quad_max(v: vec4<u32>) -> u32 {
    let a = v & vec4<u32>(ABS_MASK);
    let m = select(vec4<u32>(0u), a, a <= vec4<u32>(EXP_MASK));
    return max(max(m.x, m.y), max(m.z, m.w));
}

fn ftz4(b: vec4<u32>) -> vec4<u32> {
    return select(b, b & vec4<u32>(SIGN_MASK), (b & vec4<u32>(EXP_MASK)) == vec4<u32>(0u));
}

// Codes of four elements: encode(ftz(ftz(x) * r)), 0 for a non-finite x.
fn encode_quad(v: vec4<u32>, r: f32) -> vec4<u32> {
    let s = ftz4(bitcast<vec4<u32>>(bitcast<vec4<f32>>(ftz4(v)) * r));
    let c = encode4(bitcast<vec4<f32>>(s));
    return select(vec4<u32>(0u), c, (v & vec4<u32>(EXP_MASK)) != vec4<u32>(EXP_MASK));
}

// Four codes placed as elements j0..j0 + 3 of a word.
fn pack_quad(c: vec4<u32>, j0: u32) -> u32 {
    return (c.x << code_shift(j0)) | (c.y << code_shift(j0 + 1u)) | (c.z << code_shift(j0 + 2u))
        | (c.w << code_shift(j0 + 3u));
}

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

    // Every item is loaded once.
//{ROWS
    let it{k} = load_item(item0 + {k}u * 256u + lid, n);
    red[{k}u * 256u + lid] = item_max(it{k});
//}ROWS
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
            absmax_out[(item0 >> lg) + b] = amax;
            // absmax 0 (or subnormal, flushed) makes every scaled value 0 * inf = NaN on CUDA: code 0 everywhere.
            if ((amax & EXP_MASK) != 0u) {
                r_bits = bitcast<u32>(rcp_fast_math(amax));
            }
        }
        rs[b] = r_bits;
    }
    workgroupBarrier();

//{ROWS
    {
        let li = {k}u * 256u + lid;
        if ((item0 + li) * EPW < n) {
            let rb = rs[li >> lg];
            var word = 0u;
            if (rb != NAN_BLOCK) {
                word = item_word(it{k}, bitcast<f32>(rb));
            }
            codes[item0 + li] = word;
        }
    }
//}ROWS
}
