// RMSNorm over rows whose length is a multiple of 4, one workgroup per row, read as vec4: each thread keeps
// four 16-byte loads in flight (the scalar kernel's one load per loop step left a one-row decode norm waiting
// on memory latency 16 times in a row). Float32 sums, a tree reduction across the workgroup.
// Params: p0 = rows, p1 = cols / 4, p3 = eps bits. Needs: reduce_sum (row_reduce.wgsl).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg_linear(wid, nwg);
    let n = p.p1;
    let valid = row < p.p0;
    let base = row * n;
    var s4 = vec4<f32>(0.0);
    if (valid) {
        var c = lid;
        for (; c + 768u < n; c = c + 1024u) {
            let a = x[base + c];
            let b = x[base + c + 256u];
            let d = x[base + c + 512u];
            let e = x[base + c + 768u];
            s4 = s4 + (a * a + b * b) + (d * d + e * e);
        }
        for (; c < n; c = c + 256u) {
            let a = x[base + c];
            s4 = s4 + a * a;
        }
    }
    let ms = reduce_sum((s4.x + s4.y) + (s4.z + s4.w), lid) / f32(n * 4u);
    let inv = inverseSqrt(ms + bitcast<f32>(p.p3));
    if (valid) {
        for (var c = lid; c < n; c = c + 256u) {
            y[base + c] = x[base + c] * inv * weight[c];
        }
    }
}
