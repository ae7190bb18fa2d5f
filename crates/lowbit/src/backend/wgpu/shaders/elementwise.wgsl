// Element-wise kernels on int8 / int32 data, one thread per element. Params: p0 = n, p1 = cols,
// p2 = op (0 = int8 vectorwise dequant: q * row_stat * (1/127); 1 = the int8 mm dequant's product
// c * row_stat * col_stat, whose fused multiply-add with the scale and bias the host does: Vulkan lets a
// shader's fma round twice), p3 = constant bits (1/127).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> row_stats: array<f32>;
@group(0) @binding(3) var<storage, read> col_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wg_linear(wid, nwg) * 256u + lid;
    if (i >= p.p0) {
        return;
    }
    let r = i / p.p1;
    let j = i % p.p1;
    let k = bitcast<f32>(p.p3);
    if (p.p2 == 0u) {
        let q = (i32(src[i >> 2u] << (24u - 8u * (i & 3u)))) >> 24u;
        out[i] = (f32(q) * row_stats[r]) * k;
    } else {
        out[i] = (f32(bitcast<i32>(src[i])) * row_stats[r]) * col_stats[j];
    }
}
