// Exact conversions between f32 and f16/bf16 bit patterns, bit-identical to the `half` crate (what the CPU
// uses): widening quiets NaNs (sets the top mantissa bit), narrowing rounds to nearest even on integers,
// overflows to infinity, rounds into subnormals and keeps NaN payload bits. No float arithmetic is involved,
// so the driver's denormal and NaN rules do not matter.

fn widen_f16(h: u32) -> u32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        if (m == 0u) {
            return s;
        }
        let sh = countLeadingZeros(m) - 21u;
        return s | ((113u - sh) << 23u) | (((m << sh) & 0x3ffu) << 13u);
    }
    if (e == 31u) {
        if (m == 0u) {
            return s | 0x7f800000u;
        }
        return s | 0x7fc00000u | (m << 13u);
    }
    return s | ((e + 112u) << 23u) | (m << 13u);
}

fn widen_bf16(h: u32) -> u32 {
    if ((h & 0x7fffu) > 0x7f80u) {
        return (h | 0x40u) << 16u;
    }
    return h << 16u;
}

// Four halves packed two per word (the lower half first), widened exactly.
fn widen4_f16(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(widen_f16(w.x & 0xffffu), widen_f16(w.x >> 16u),
                                        widen_f16(w.y & 0xffffu), widen_f16(w.y >> 16u)));
}

fn widen4_bf16(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(widen_bf16(w.x & 0xffffu), widen_bf16(w.x >> 16u),
                                        widen_bf16(w.y & 0xffffu), widen_bf16(w.y >> 16u)));
}

// Round-to-nearest-even test of `half`: the round bit is set and so is a lower bit or the kept lsb.
fn round_up(m: u32, round_bit: u32) -> bool {
    return (m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u;
}

fn narrow_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let exp = (x >> 23u) & 0xffu;
    let man = x & 0x7fffffu;
    if ((x & 0x7fffffffu) == 0u) {
        return sign;
    }
    if (exp == 0xffu) {
        return sign | 0x7c00u | select(0u, 0x200u, man != 0u) | (man >> 13u);
    }
    let he = i32(exp) - 112;
    if (he >= 31) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        if (he < -10) {
            return sign;
        }
        // A subnormal half: the hidden bit joins the mantissa, shifted right by 14 - he (14..=24).
        let m = man | 0x800000u;
        let sh = u32(14 - he);
        return sign | ((m >> sh) + select(0u, 1u, round_up(m, 1u << (sh - 1u))));
    }
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    let h = sign | (u32(he) << 10u) | (man >> 13u);
    return h + select(0u, 1u, round_up(man, 0x1000u));
}

fn narrow_bf16(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x40u;
    }
    return (x >> 16u) + select(0u, 1u, round_up(x, 0x8000u));
}
