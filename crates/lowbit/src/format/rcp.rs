//! The H100's hardware reciprocal (`MUFU.RCP`, PTX `rcp.approx.ftz.f32`), which bitsandbytes' kernels use for
//! every `1.0f / absmax` because they are built with `--use_fast_math`. It is the correctly rounded 1/a for
//! 86.8% of mantissas and one ulp above or below for the rest; the measured correction is stored as 2 bits per
//! mantissa (FORMATS.md §0.1). Without it about 1 golden case in 20 differs.

use std::sync::OnceLock;

/// zlib stream of 2^21 bytes: byte k covers mantissas 4k..4k+3, 2 bits each, least significant first;
/// 0 = correctly rounded, 1 = +1 ulp, 2 = -1 ulp.
static RCP_DELTA_ZLIB: &[u8] = include_bytes!("rcp_approx_delta.zlib");

/// Number of mantissas covered by the table (every f32 mantissa).
pub const MANTISSAS: usize = 1 << 23;

/// The decoded correction table, 2 bits per mantissa (2 MiB), decoded once on first use.
pub fn delta_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let t = miniz_oxide::inflate::decompress_to_vec_zlib(RCP_DELTA_ZLIB)
            .expect("embedded reciprocal table is a valid zlib stream");
        assert_eq!(
            t.len(),
            MANTISSAS / 4,
            "embedded reciprocal table has the wrong length"
        );
        t
    })
}

/// The correction for one mantissa: -1, 0 or +1 ulp.
#[inline(always)]
pub fn delta(mantissa: u32) -> i32 {
    let byte = delta_table()[(mantissa >> 2) as usize];
    match (byte >> ((mantissa & 3) * 2)) & 3 {
        1 => 1,
        2 => -1,
        _ => 0,
    }
}

/// `1.0f / a` exactly as bitsandbytes' CUDA kernels compute it: the correctly rounded reciprocal's bit
/// pattern plus the per-mantissa delta. Zero or subnormal `a` gives ±inf; a result below 2^-126 flushes to 0.
#[inline]
pub fn rcp_approx(a: f32) -> f32 {
    let a = super::float::ftz(a);
    let rn = 1.0f32 / a;
    if !rn.is_finite() || rn == 0.0 {
        return super::float::ftz(rn);
    }
    let d = delta(a.to_bits() & 0x7F_FFFF);
    super::float::ftz(f32::from_bits(rn.to_bits().wrapping_add_signed(d)))
}

/// `__fdividef(127.0f, a)`: `MUFU.RCP` then an FTZ multiply, `RN(127 * rcp(a))`.
#[inline]
pub fn fdividef_127(a: f32) -> f32 {
    super::float::mul_ftz(127.0, rcp_approx(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_about_13_percent_of_mantissas() {
        let off = (0..MANTISSAS as u32)
            .step_by(97)
            .filter(|&m| delta(m) != 0)
            .count();
        let frac = off as f64 / (MANTISSAS / 97) as f64;
        assert!(
            (0.12..0.145).contains(&frac),
            "fraction off by one ulp: {frac}"
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(rcp_approx(0.0), f32::INFINITY);
        assert_eq!(rcp_approx(-0.0), f32::NEG_INFINITY);
        assert_eq!(
            rcp_approx(1e-40),
            f32::INFINITY,
            "subnormal input counts as zero"
        );
        assert_eq!(rcp_approx(f32::MAX), 0.0, "subnormal result flushes");
        assert_eq!(rcp_approx(1.0), 1.0);
        assert_eq!(rcp_approx(2.0), 0.5);
    }

    #[test]
    fn within_one_ulp_of_exact() {
        for &a in &[3.0f32, 7.0, 24.0, 0.1, 123.456, -5.5, 1e30, 1e-30] {
            let exact = (1.0f32 / a).to_bits() as i64;
            let got = rcp_approx(a).to_bits() as i64;
            assert!((exact - got).abs() <= 1, "{a}");
        }
    }
}
