// Float32 arithmetic on bit patterns, correctly rounded to nearest-even with subnormals kept: WGSL lets a driver
// flush subnormals, round `/` to 2.5 ulp, convert integers with either neighbour and evaluate `fma` with two
// roundings, so the kernels whose bits must equal the CPU's compute here on integers instead.

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

// A 64-bit magnitude (hi, lo) times 2^e, its leading one at bit 62 (one bit of headroom for a sum).
struct Wide {
    hi: u32,
    lo: u32,
    e: i32,
}

// (hi, lo) >> d with every bit shifted out OR-ed into bit 0 ("jammed"): with 39+ guard bits below a float32's
// rounding position, that one bit rounds a sum or difference exactly as all the lost bits would.
fn shr_jam(w: Wide, d: u32) -> Wide {
    if (d == 0u) {
        return w;
    }
    if (d < 32u) {
        let st = select(0u, 1u, (w.lo << (32u - d)) != 0u);
        return Wide(w.hi >> d, (w.lo >> d) | (w.hi << (32u - d)) | st, w.e + i32(d));
    }
    if (d < 64u) {
        let dd = d - 32u;
        var lost = w.lo;
        if (dd > 0u) {
            lost = lost | (w.hi << (32u - dd));
        }
        return Wide(0u, (w.hi >> dd) | select(0u, 1u, lost != 0u), w.e + i32(d));
    }
    return Wide(0u, select(0u, 1u, (w.hi | w.lo) != 0u), w.e + i32(d));
}

// round(a * b + c) with one rounding (C's fmaf): the 48-bit product is exact, the sum is formed on 64 bits.
fn fma_bits(a: u32, b: u32, c: u32) -> u32 {
    let sp = (a ^ b) >> 31u;
    let sc = c >> 31u;
    let aa = a & ABS_MASK;
    let ab = b & ABS_MASK;
    let ac = c & ABS_MASK;
    if (aa > EXP_MASK || ab > EXP_MASK || ac > EXP_MASK) {
        return QNAN;
    }
    if (aa == EXP_MASK || ab == EXP_MASK) {
        if (aa == 0u || ab == 0u || (ac == EXP_MASK && sc != sp)) {
            return QNAN;
        }
        return (sp << 31u) | EXP_MASK;
    }
    if (ac == EXP_MASK) {
        return c;
    }
    if (aa == 0u || ab == 0u) {
        // A zero product: c, or a zero that is negative only when both zeros are.
        if (ac == 0u) {
            return (sp & sc) << 31u;
        }
        return c;
    }
    if (ac == 0u) {
        return mul_bits(a, b);
    }
    let ua = unpack(aa);
    let ub = unpack(ab);
    // 24-bit significands: |a b| = P 2^(ea + eb - 46), P = hh 2^32 + mid 2^16 + ll in [2^46, 2^48).
    let x = ua.m >> 8u;
    let z = ub.m >> 8u;
    let ll = (x & 0xffffu) * (z & 0xffffu);
    let mid = (x & 0xffffu) * (z >> 16u) + (x >> 16u) * (z & 0xffffu);
    let hh = (x >> 16u) * (z >> 16u);
    let plo = ll + (mid << 16u);
    let phi = hh + (mid >> 16u) + select(0u, 1u, plo < ll);
    // Leading one to bit 62 (a shift of 15 or 16).
    let s = countLeadingZeros(phi) - 1u;
    var pw = Wide((phi << s) | (plo >> (32u - s)), plo << s, ua.e + ub.e - 46 - i32(s));
    let uc = unpack(ac);
    var cw = Wide(uc.m >> 1u, uc.m << 31u, uc.e - 62);
    // big >= small in magnitude.
    let p_big = pw.e > cw.e || (pw.e == cw.e && (pw.hi > cw.hi || (pw.hi == cw.hi && pw.lo >= cw.lo)));
    var big = cw;
    var small = pw;
    var sign = sc;
    if (p_big) {
        big = pw;
        small = cw;
        sign = sp;
    }
    small = shr_jam(small, u32(big.e - small.e));
    var hi: u32;
    var lo: u32;
    if (sp == sc) {
        lo = big.lo + small.lo;
        hi = big.hi + small.hi + select(0u, 1u, lo < big.lo);
    } else {
        lo = big.lo - small.lo;
        hi = big.hi - small.hi - select(0u, 1u, big.lo < small.lo);
    }
    if (hi == 0u && lo == 0u) {
        // Exact cancellation rounds to +0.
        return 0u;
    }
    // Leading one to bit 63; the top word is the significand, the rest sticky.
    var n = countLeadingZeros(hi);
    if (hi == 0u) {
        n = 32u + countLeadingZeros(lo);
    }
    if (n >= 32u) {
        hi = lo << (n - 32u);
        lo = 0u;
    } else if (n > 0u) {
        hi = (hi << n) | (lo >> (32u - n));
        lo = lo << n;
    }
    return round_pack(sign, big.e - i32(n) + 63, hi, lo != 0u);
}
