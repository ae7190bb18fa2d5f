// Dense GEMV (one activation row): y[row] = sum_c x[c] w[row, c] (+ bias), x f32, the weight f32, f16 or bf16
// as stored (load_w4 widens four consecutive weights exactly), k % 4 == 0. Lane t of a row set reads vec4 t,
// t + TPR, ... of x and of RPT rows; the sum order is the same for every weight dtype, so a half weight gives
// the bits of its f32 widening. One read of x serves RPT rows, and a warp's loads of x and of a row are
// contiguous. The order differs from the tiled GEMM's, within the matmul tolerance.
// Params: p0 = rows (n), p1 = k / 4, p2 = has bias.
// Needs (generated): TPR, RPT, SETS, RED_LEN, load_w4, the per-row body and the reduction.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w_in: array<WVEC>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, RED_LEN>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    SUBGROUP_BUILTINS
) {
    let rs = lid / TPR;
    let t = lid % TPR;
    let row0 = (wg_linear(wid, nwg) * SETS + rs) * RPT;
    let k4 = p.p1;
    // Rows past the end are clamped onto the last row (loads stay in bounds) and not written.
    let last = p.p0 - 1u;
ROW_SETUP
    for (var c = t; c < k4; c = c + TPR) {
        let x0 = x[c];
ROW_BODY
    }
REDUCE
    if (t < RPT) {
        let row = row0 + t;
        if (row < p.p0) {
            var b = 0.0;
            if (p.p2 != 0u) {
                b = bias[row];
            }
            y[row] = total + b;
        }
    }
}
