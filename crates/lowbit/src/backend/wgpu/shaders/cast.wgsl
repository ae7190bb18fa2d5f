// dtype conversion on bit patterns (model_common.wgsl). Params: p0 = elements, p1 = mode (0: f32 -> f16,
// 1: f32 -> bf16, 2: f16 -> f32, 3: bf16 -> f32). Narrowing writes one word (two halves, the odd tail's high
// half zero) per thread; widening one f32 per thread.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn narrow(x: u32) -> u32 {
    if (p.p1 == 0u) {
        return narrow_f16(x);
    }
    return narrow_bf16(x);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wg_linear(wid, nwg) * 256u + lid;
    let n = p.p0;
    if (p.p1 < 2u) {
        let e = 2u * i;
        if (e >= n) {
            return;
        }
        var hi = 0u;
        if (e + 1u < n) {
            hi = narrow(src[e + 1u]) << 16u;
        }
        dst[i] = narrow(src[e]) | hi;
        return;
    }
    if (i >= n) {
        return;
    }
    let h = (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    if (p.p1 == 2u) {
        dst[i] = widen_f16(h);
    } else {
        dst[i] = widen_bf16(h);
    }
}
