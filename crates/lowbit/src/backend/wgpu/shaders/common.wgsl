// Float helpers that never lean on the driver's subnormal, NaN or division behaviour: flushing, widening and
// reciprocals are done on bit patterns; only multiplication and comparison (exact in WGSL) touch floats.

const EXP_MASK: u32 = 0x7f800000u;
const SIGN_MASK: u32 = 0x80000000u;
const ABS_MASK: u32 = 0x7fffffffu;

struct Params {
    p0: u32, p1: u32, p2: u32, p3: u32,
    p4: u32, p5: u32, p6: u32, p7: u32,
}

fn ftz_bits(b: u32) -> u32 {
    if ((b & EXP_MASK) == 0u) {
        return b & SIGN_MASK;
    }
    return b;
}

fn ftz(x: f32) -> f32 {
    return bitcast<f32>(ftz_bits(bitcast<u32>(x)));
}

fn is_finite_bits(b: u32) -> bool {
    return (b & EXP_MASK) != EXP_MASK;
}

// Exact f16 -> f32 widening, subnormals included.
fn f16_bits_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        if (m == 0u) {
            return bitcast<f32>(s);
        }
        let sh = countLeadingZeros(m) - 21u;
        return bitcast<f32>(s | ((113u - sh) << 23u) | (((m << sh) & 0x3ffu) << 13u));
    }
    if (e == 31u) {
        return bitcast<f32>(s | EXP_MASK | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn bf16_bits_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

// Correctly rounded 1/a for a positive normal or infinite float32 `a` (bits), by long division on integers.
// Subnormal results come out as subnormal bit patterns (the caller flushes). a = inf gives +0.
fn rcp_rn_bits(a: u32) -> u32 {
    let e = a >> 23u;
    if (e >= 255u) {
        return 0u;
    }
    let m = a & 0x7fffffu;
    if (m == 0u) {
        // 1 / 2^(e-127) = 2^(127-e): biased exponent 254 - e (e = 254 gives the subnormal 2^-127).
        if (e < 254u) {
            return (254u - e) << 23u;
        }
        return 0x400000u;
    }
    let big_m = m | 0x800000u;
    // q = floor(2^48 / M) in [2^24, 2^25), rem = the remainder.
    var rem = 0x1000000u - big_m;
    var q = 1u;
    for (var i = 0u; i < 24u; i = i + 1u) {
        rem = rem << 1u;
        q = q << 1u;
        if (rem >= big_m) {
            rem = rem - big_m;
            q = q | 1u;
        }
    }
    let sticky_rem = select(0u, 1u, rem != 0u);
    if (e <= 252u) {
        var er = 253u - e;
        var mant = q >> 1u;
        let round = q & 1u;
        if (round == 1u && (sticky_rem == 1u || (mant & 1u) == 1u)) {
            mant = mant + 1u;
        }
        if (mant == 0x1000000u) {
            mant = 0x800000u;
            er = er + 1u;
        }
        return (er << 23u) | (mant & 0x7fffffu);
    }
    // e = 253 or 254: a subnormal result, rounded at bit `sh` of q.
    let sh = e - 251u;
    var bits = q >> sh;
    let round = (q >> (sh - 1u)) & 1u;
    let sticky = select(0u, 1u, (q & ((1u << (sh - 1u)) - 1u)) != 0u) | sticky_rem;
    if (round == 1u && (sticky == 1u || (bits & 1u) == 1u)) {
        bits = bits + 1u;
    }
    return bits;
}

// Round half to even to an integer, for |p| < 2^23 (floor and the difference are exact there).
fn rne_i32(p: f32) -> i32 {
    let f = floor(p);
    let d = p - f;
    var r = i32(f);
    if (d > 0.5 || (d == 0.5 && (r & 1) != 0)) {
        r = r + 1;
    }
    return r;
}

fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
