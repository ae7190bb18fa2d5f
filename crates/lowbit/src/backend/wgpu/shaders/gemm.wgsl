// Tiled GEMM in the nn.Linear layout: out[b, r] = sum_k A[b, k] * W[r, k] (+ bias[r]). 64x64 output tile per
// workgroup, 4x4 per thread, K in steps of 16 through workgroup memory. The tiles are stored k-major (for each
// k, the 64 rows as 16 vec4, padded to 17 so the stores spread over the banks), so a thread reads its 4 rows of
// A and 4 rows of W as one vec4 each, conflict-free. Params: p0 = batch (M), p1 = rows (N), p2 = K,
// p3 = has bias, p4..p7 free for the loaders. Needs: ACC (f32 or i32), load_a(b, k), load_w(r, k),
// store(b, r, acc).

@group(0) @binding(0) var<uniform> p: Params;

const STRIDE: u32 = 17u;
var<workgroup> a_tile: array<vec4<ACC>, 272>;
var<workgroup> w_tile: array<vec4<ACC>, 272>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m = p.p0;
    let n = p.p1;
    let k = p.p2;
    let b0 = wid.y * 64u;
    let r0 = wid.x * 64u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc0 = vec4<ACC>(ACC(0));
    var acc1 = vec4<ACC>(ACC(0));
    var acc2 = vec4<ACC>(ACC(0));
    var acc3 = vec4<ACC>(ACC(0));
    for (var k0 = 0u; k0 < k; k0 = k0 + 16u) {
        // Consecutive lanes load consecutive k of one row (coalesced); element (row, kk) goes to
        // tile[kk * STRIDE + row / 4][row % 4].
        for (var l = 0u; l < 4u; l = l + 1u) {
            let e = lid + l * 256u;
            let row = e / 16u;
            let kk = e % 16u;
            var av = ACC(0);
            var wv = ACC(0);
            if (b0 + row < m && k0 + kk < k) {
                av = load_a(b0 + row, k0 + kk);
            }
            if (r0 + row < n && k0 + kk < k) {
                wv = load_w(r0 + row, k0 + kk);
            }
            a_tile[kk * STRIDE + row / 4u][row % 4u] = av;
            w_tile[kk * STRIDE + row / 4u][row % 4u] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk = kk + 1u) {
            let av = a_tile[kk * STRIDE + ty];
            let wv = w_tile[kk * STRIDE + tx];
            acc0 = acc0 + av.x * wv;
            acc1 = acc1 + av.y * wv;
            acc2 = acc2 + av.z * wv;
            acc3 = acc3 + av.w * wv;
        }
        workgroupBarrier();
    }
    let rows = array<vec4<ACC>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            let b = b0 + ty * 4u + i;
            let r = r0 + tx * 4u + j;
            if (b < m && r < n) {
                store(b, r, rows[i][j]);
            }
        }
    }
}
