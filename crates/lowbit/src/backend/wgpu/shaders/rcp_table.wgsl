// The CUDA fast-math reciprocal `rcp.approx.ftz.f32` (FORMATS.md 0.1): RN(1/a) plus the measured per-mantissa
// correction, 2 bits per mantissa, 16 mantissas per word. Input bits of a non-negative value.
@group(0) @binding(9) var<storage, read> rcp_delta: array<u32>;

fn rcp_fast_math(a_bits: u32) -> f32 {
    let a = ftz_bits(a_bits) & ABS_MASK;
    if (a == 0u) {
        return bitcast<f32>(EXP_MASK);
    }
    if (a >= EXP_MASK) {
        return 0.0;
    }
    let rn = rcp_rn_bits(a);
    let m = a & 0x7fffffu;
    let d = (rcp_delta[m >> 4u] >> ((m & 15u) * 2u)) & 3u;
    var bits = rn;
    if (d == 1u) {
        bits = rn + 1u;
    } else if (d == 2u) {
        bits = rn - 1u;
    }
    return bitcast<f32>(ftz_bits(bits));
}
