// Multi-row BitNet GEMV, exact i32, for cols % 16 == 0: NB activation rows per dispatch. A byte of packed row r
// carries the 2-bit codes c (weight c - 1) of rows r, R + r, 2R + r, 3R + r (see ternary_gemv_fast.wgsl). A
// thread reads one 16-byte word of its packed row once, splits it into the four rows' codes and takes their dot
// products with the same 16 columns of all NB activation rows, so each weight byte is read once per NB rows.
// TPR threads share a packed row; a workgroup holds SETS = 256 / TPR packed rows. The sums are reduced one
// activation row at a time through one vec4 per thread of workgroup memory.
// Params: p0 = rows, p1 = cols, p2 = R (packed rows), p3 = first activation row of this dispatch, p4 =
// activation rows in xq.
// Needs (generated): TPR, SETS, and the per-activation-row setup, body and reduction lines the host writes in
// place of the three placeholder lines below.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<i32>;

var<workgroup> red: array<vec4<i32>, 256>;

const CODES: u32 = 0x03030303u;
const ONES: u32 = 0x01010101u;

fn dot16(a: vec4<u32>, b: vec4<u32>) -> i32 {
    return (dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y)) + (dot4I8Packed(a.z, b.z) + dot4I8Packed(a.w, b.w));
}

// sum(w * x) over 16 columns for the four rows of a packed word: sum(c * x) - sum(x).
fn dot_rows(c0: vec4<u32>, c1: vec4<u32>, c2: vec4<u32>, c3: vec4<u32>, xv: vec4<u32>) -> vec4<i32> {
    let ones = vec4<u32>(ONES);
    return vec4<i32>(dot16(c0, xv), dot16(c1, xv), dot16(c2, xv), dot16(c3, xv)) - vec4<i32>(dot16(ones, xv));
}

// Sums `v` over the TPR threads of each packed row; thread 0 of the row writes activation row `b`'s outputs.
fn reduce_store(lid: u32, t: u32, pr: u32, b: u32, v: vec4<i32>) {
    red[lid] = v;
    workgroupBarrier();
    for (var off = TPR / 2u; off > 0u; off = off >> 1u) {
        if (t < off) {
            red[lid] = red[lid] + red[lid + off];
        }
        workgroupBarrier();
    }
    if (t == 0u && pr < p.p2 && b < p.p4) {
        let total = red[lid];
        for (var j = 0u; j < 4u; j = j + 1u) {
            let row = j * p.p2 + pr;
            if (row < p.p0) {
                y[b * p.p0 + row] = total[j];
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rs = lid / TPR;
    let t = lid % TPR;
    let pr = wg_linear(wid, nwg) * SETS + rs;
    let chunks = p.p1 / 16u;
    // Packed rows past the end are clamped onto the last one (loads stay in bounds) and not written; so are
    // activation rows past the batch.
    let w0 = min(pr, p.p2 - 1u) * chunks;
    let last_b = p.p4 - 1u;
    let codes = vec4<u32>(CODES);
ROW_SETUP
    for (var k = t; k < chunks; k = k + TPR) {
        let wv = w[w0 + k];
        let c0 = wv & codes;
        let c1 = (wv >> vec4<u32>(2u)) & codes;
        let c2 = (wv >> vec4<u32>(4u)) & codes;
        let c3 = (wv >> vec4<u32>(6u)) & codes;
ROW_BODY
    }
ROW_REDUCE
}
