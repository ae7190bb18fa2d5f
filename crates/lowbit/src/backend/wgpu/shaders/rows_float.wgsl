// Softmax and RMSNorm over the last dimension, one workgroup per row, float32 tree reductions.
// Needs: reduce_max, reduce_sum (row_reduce.wgsl).
// Params: p0 = rows, p1 = cols, p2 = op (0 = softmax, 1 = rms_norm), p3 = eps bits.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg_linear(wid, nwg);
    let cols = p.p1;
    let valid = row < p.p0;
    let base = row * cols;
    if (p.p2 == 0u) {
        var m = -3.4028235e38;
        if (valid) {
            for (var c = lid; c < cols; c = c + 256u) {
                m = max(m, x[base + c]);
            }
        }
        let mx = reduce_max(m, lid);
        var s = 0.0;
        if (valid) {
            for (var c = lid; c < cols; c = c + 256u) {
                s = s + exp(x[base + c] - mx);
            }
        }
        let inv = 1.0 / reduce_sum(s, lid);
        if (valid) {
            for (var c = lid; c < cols; c = c + 256u) {
                y[base + c] = exp(x[base + c] - mx) * inv;
            }
        }
    } else {
        var s = 0.0;
        if (valid) {
            for (var c = lid; c < cols; c = c + 256u) {
                let v = x[base + c];
                s = s + v * v;
            }
        }
        let ms = reduce_sum(s, lid) / f32(cols);
        let inv = inverseSqrt(ms + bitcast<f32>(p.p3));
        if (valid) {
            for (var c = lid; c < cols; c = c + 256u) {
                y[base + c] = x[base + c] * inv * weight[c];
            }
        }
    }
}
