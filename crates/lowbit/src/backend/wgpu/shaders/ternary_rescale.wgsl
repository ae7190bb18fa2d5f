// BitNet's final scaling y[b, o] = f32(acc[b, o]) / (x_scale[b] * weight_scale), bit for bit as the CPU's float32
// arithmetic computes it. WGSL's `/` is only accurate to 2.5 ulp and the driver may flush subnormals, so the
// int-to-float conversion, the product and the quotient are each rounded to nearest-even here on integer bit
// patterns (float_bits.wgsl: subnormals kept, overflow to infinity). NaN results are the quiet NaN 0x7fc00000
// (payloads and NaN signs are not matched). With a bias (p3 = 1) the sum y + bias[o] is rounded the same
// way (one fma_bits with a factor of 1: the product is exact). One thread per output.
// Params: p0 = n (batch * rows), p1 = rows, p2 = weight_scale bits, p3 = 1 with a bias (binding 4).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> acc: array<i32>;
@group(0) @binding(2) var<storage, read> x_scale: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;

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
    // i < batch * rows, so i / rows < batch: x_scale holds one scale per batch row.
    let d = mul_bits(x_scale[i / p.p1], p.p2);
    var r = div_bits(i32_to_f32_bits(acc[i]), d);
    if (p.p3 != 0u) {
        r = fma_bits(r, 0x3f800000u, bias[i % p.p1]);
    }
    y[i] = r;
}
