// Multi-row exact int8 GEMV, `c[b, o] = sum_k q[b, k] * w[o, k]` in i32, for cols % 16 == 0: NB activation rows
// per dispatch. A thread reads one 16-byte word (16 columns) of its weight row once and takes the dot product
// with the same 16 columns of all NB activation rows, so each weight byte is read once per NB rows. TPR threads
// share a weight row; a workgroup holds SETS = 256 / TPR weight rows. Integer sums: exact in any order.
// Params: p0 = weight rows (c's row stride), p1 = cols, p2 = first activation row of this dispatch, p3 =
// activation rows in q.
// Needs (generated): TPR, SETS, NB, RED_LEN and the per-activation-row setup, body and store lines the host
// writes in place of the three placeholder lines below.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> c: array<i32>;

var<workgroup> red: array<i32, RED_LEN>;

fn dot16(a: vec4<u32>, b: vec4<u32>) -> i32 {
    return (dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y)) + (dot4I8Packed(a.z, b.z) + dot4I8Packed(a.w, b.w));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rs = lid / TPR;
    let t = lid % TPR;
    let row = wg_linear(wid, nwg) * SETS + rs;
    let chunks = p.p1 / 16u;
    // A row past the end is clamped onto the last row (loads stay in bounds) and not written; so is an
    // activation row past the batch.
    let w0 = min(row, p.p0 - 1u) * chunks;
    let last_b = p.p3 - 1u;
ROW_SETUP
    for (var k = t; k < chunks; k = k + TPR) {
        let wv = w[w0 + k];
ROW_BODY
    }
ROW_STORE
    workgroupBarrier();
    for (var off = TPR / 2u; off > 0u; off = off >> 1u) {
        if (t < off) {
            for (var b = 0u; b < NB; b = b + 1u) {
                red[lid * NB + b] = red[lid * NB + b] + red[(lid + off) * NB + b];
            }
        }
        workgroupBarrier();
    }
    if (t < NB) {
        let b = p.p2 + t;
        if (row < p.p0 && b < p.p3) {
            c[b * p.p0 + row] = red[rs * TPR * NB + t];
        }
    }
}
