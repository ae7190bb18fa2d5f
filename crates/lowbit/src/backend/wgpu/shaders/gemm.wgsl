// Tiled GEMM in the nn.Linear layout: out[b, r] = sum_k A[b, k] * W[r, k] (+ bias[r]). 64x64 output tile per
// workgroup, 4x4 per thread, K in steps of 16 through workgroup memory. Params: p0 = batch (M), p1 = rows (N),
// p2 = K, p3 = has bias, p4..p7 free for the loaders. Needs: ACC (f32 or i32), load_a(b, k), load_w(r, k),
// store(b, r, acc).

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> a_tile: array<ACC, 1024>;
var<workgroup> w_tile: array<ACC, 1024>;

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
    var acc: array<ACC, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) {
        acc[i] = ACC(0);
    }
    for (var k0 = 0u; k0 < k; k0 = k0 + 16u) {
        for (var l = 0u; l < 4u; l = l + 1u) {
            let e = lid + l * 256u;
            let row = e / 16u;
            let kk = k0 + e % 16u;
            var av = ACC(0);
            var wv = ACC(0);
            if (b0 + row < m && kk < k) {
                av = load_a(b0 + row, kk);
            }
            if (r0 + row < n && kk < k) {
                wv = load_w(r0 + row, kk);
            }
            a_tile[e] = av;
            w_tile[e] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk = kk + 1u) {
            var av: array<ACC, 4>;
            var wv: array<ACC, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                av[i] = a_tile[(ty * 4u + i) * 16u + kk];
                wv[i] = w_tile[(tx * 4u + i) * 16u + kk];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = acc[i * 4u + j] + av[i] * wv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            let b = b0 + ty * 4u + i;
            let r = r0 + tx * 4u + j;
            if (b < m && r < n) {
                store(b, r, acc[i * 4u + j]);
            }
        }
    }
}
