// BitNet's final scaling y[b, o] = f32(acc[b, o]) / (x_scale[b] * weight_scale), bit for bit as the CPU's float32
// arithmetic computes it. WGSL's `/` is only accurate to 2.5 ulp and the driver may flush subnormals, so the
// int-to-float conversion, the product and the quotient are each rounded to nearest-even here on integer bit
// patterns (subnormals kept, overflow to infinity). NaN results are the quiet NaN 0x7fc00000 (payloads and
// NaN signs are not matched). One thread per output.
// Params: p0 = n (batch * rows), p1 = rows, p2 = weight_scale bits.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> acc: array<i32>;
@group(0) @binding(2) var<storage, read> x_scale: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;

const QNAN: u32 = 0x7fc00000u;

// |x| = (m / 2^31) * 2^e with the leading one of m at bit 31.
struct Unpacked {
    e: i32,
    m: u32,
}

// A finite nonzero |x| (bits without sign), subnormals normalised.
fn unpack(b: u32) -> Unpacked {
    let be = b >> 23u;
    let frac = b & 0x7fffffu;
    if (be == 0u) {
        let lz = countLeadingZeros(frac);
        return Unpacked(-118 - i32(lz), frac << lz);
    }
    return Unpacked(i32(be) - 127, (frac | 0x800000u) << 8u);
}

// Rounds (-1)^s * (m / 2^31) * 2^e (m >= 2^31; `sticky`: nonzero bits were cut below m) to float32 bits.
fn round_pack(s: u32, e: i32, m: u32, sticky: bool) -> u32 {
    let sign = s << 31u;
    let be = e + 127;
    if (be >= 255) {
        return sign | EXP_MASK;
    }
    if (be >= 1) {
        var mant = m >> 8u;
        let rest = m & 0xffu;
        if (rest > 0x80u || (rest == 0x80u && (sticky || (mant & 1u) == 1u))) {
            mant = mant + 1u;
        }
        // mant carries the implicit one at bit 23, so adding it to exponent be - 1 gives exponent be, and a
        // carry out of the significand (mant = 2^24) bumps the exponent, up to infinity, by itself.
        return sign | ((u32(be - 1) << 23u) + mant);
    }
    // Subnormal or zero: the value in units of 2^-149 is m / 2^(9 - be).
    let sh = u32(9 - be);
    if (sh > 32u) {
        return sign;
    }
    if (sh == 32u) {
        // In [2^-150, 2^-149): exactly half rounds to even (zero), anything above to 2^-149.
        return sign | select(0u, 1u, m > 0x80000000u || sticky);
    }
    var q = m >> sh;
    let rest = m & ((1u << sh) - 1u);
    let half = 1u << (sh - 1u);
    if (rest > half || (rest == half && (sticky || (q & 1u) == 1u))) {
        q = q + 1u;
    }
    return sign | q;
}

fn i32_to_f32_bits(v: i32) -> u32 {
    if (v == 0) {
        return 0u;
    }
    let neg = v < 0;
    // Two's complement negation on u32 also covers i32::MIN.
    let u = select(bitcast<u32>(v), 0u - bitcast<u32>(v), neg);
    let lz = countLeadingZeros(u);
    return round_pack(select(0u, 1u, neg), 31 - i32(lz), u << lz, false);
}

fn mul_bits(a: u32, b: u32) -> u32 {
    let s = (a ^ b) >> 31u;
    let aa = a & ABS_MASK;
    let ab = b & ABS_MASK;
    if (aa > EXP_MASK || ab > EXP_MASK) {
        return QNAN;
    }
    if (aa == EXP_MASK || ab == EXP_MASK) {
        if (aa == 0u || ab == 0u) {
            return QNAN;
        }
        return (s << 31u) | EXP_MASK;
    }
    if (aa == 0u || ab == 0u) {
        return s << 31u;
    }
    let ua = unpack(aa);
    let ub = unpack(ab);
    // 24-bit significands in 16-bit halves: P = hh 2^32 + mid 2^16 + ll, in [2^46, 2^48).
    let x = ua.m >> 8u;
    let z = ub.m >> 8u;
    let ll = (x & 0xffffu) * (z & 0xffffu);
    let mid = (x & 0xffffu) * (z >> 16u) + (x >> 16u) * (z & 0xffffu);
    let hh = (x >> 16u) * (z >> 16u);
    let hi = (hh << 16u) + mid + (ll >> 16u);
    let lo = ll & 0xffffu;
    if (hi >= 0x80000000u) {
        return round_pack(s, ua.e + ub.e + 1, hi, lo != 0u);
    }
    return round_pack(s, ua.e + ub.e, (hi << 1u) | (lo >> 15u), (lo & 0x7fffu) != 0u);
}

fn div_bits(a: u32, b: u32) -> u32 {
    let s = (a ^ b) >> 31u;
    let aa = a & ABS_MASK;
    let ab = b & ABS_MASK;
    if (aa > EXP_MASK || ab > EXP_MASK || (aa == EXP_MASK && ab == EXP_MASK) || (aa == 0u && ab == 0u)) {
        return QNAN;
    }
    if (aa == EXP_MASK || ab == 0u) {
        return (s << 31u) | EXP_MASK;
    }
    if (aa == 0u || ab == EXP_MASK) {
        return s << 31u;
    }
    let ua = unpack(aa);
    let ub = unpack(ab);
    var x = ua.m >> 8u;
    let z = ub.m >> 8u;
    var e = ua.e - ub.e;
    if (x < z) {
        x = x << 1u;
        e = e - 1;
    }
    // x / z in [1, 2): 32 quotient bits by shift-subtract long division, the leading one at bit 31.
    var q = 1u;
    var rem = x - z;
    for (var i = 0u; i < 31u; i = i + 1u) {
        rem = rem << 1u;
        q = q << 1u;
        if (rem >= z) {
            rem = rem - z;
            q = q | 1u;
        }
    }
    return round_pack(s, e, q, rem != 0u);
}

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
    y[i] = div_bits(i32_to_f32_bits(acc[i]), d);
}
