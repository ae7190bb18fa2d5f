// BitNet GEMV (batch 1), exact i32, for cols % 16 == 0. A byte of packed row r carries the 2-bit codes c (weight
// c - 1) of rows r, R + r, 2R + r, 3R + r, so `(word >> 2j) & 0x03030303` holds four codes of row jR + r as
// bytes and one dot4I8Packed with four activations gives sum(c * x); subtracting sum(x) turns it into
// sum(w * x). Each thread streams 16-byte words (16 columns) of RPT packed rows, reusing one 16-byte read of x.
// TPR threads share a set of RPT packed rows (4 * RPT outputs).
// Params: p0 = rows, p1 = cols, p2 = R (packed rows).
// Needs (generated): TPR, RPT, SETS, RED_LEN, the per-row body and the reduction.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<i32>;

var<workgroup> red: array<vec4<i32>, RED_LEN>;

const CODES: u32 = 0x03030303u;

// Sum over 16 columns of c * x for each of the four rows packed in a byte.
fn dot16(wv: vec4<u32>, xv: vec4<u32>) -> vec4<i32> {
    return vec4<i32>(dot_codes(wv, xv, 0u), dot_codes(wv, xv, 2u), dot_codes(wv, xv, 4u), dot_codes(wv, xv, 6u));
}

fn dot_codes(wv: vec4<u32>, xv: vec4<u32>, sh: u32) -> i32 {
    return dot4I8Packed((wv.x >> sh) & CODES, xv.x) + dot4I8Packed((wv.y >> sh) & CODES, xv.y)
        + dot4I8Packed((wv.z >> sh) & CODES, xv.z) + dot4I8Packed((wv.w >> sh) & CODES, xv.w);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    SUBGROUP_BUILTINS
) {
    let rs = lid / TPR;
    let t = lid % TPR;
    let pr0 = (wg_linear(wid, nwg) * SETS + rs) * RPT;
    let chunks = p.p1 / 16u;
    // Packed rows past the end are clamped onto the last one (loads stay in bounds) and not written.
    let last = p.p2 - 1u;
ROW_SETUP
    for (var c = t; c < chunks; c = c + TPR) {
        let xv = xq[c];
        let ones = 0x01010101u;
        let xs = vec4<i32>(dot4I8Packed(ones, xv.x) + dot4I8Packed(ones, xv.y) + dot4I8Packed(ones, xv.z)
            + dot4I8Packed(ones, xv.w));
ROW_BODY
    }
REDUCE
    if (t < RPT) {
        let pr = pr0 + t;
        if (pr < p.p2) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let row = j * p.p2 + pr;
                if (row < p.p0) {
                    y[row] = total[j];
                }
            }
        }
    }
}
