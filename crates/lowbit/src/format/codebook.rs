//! Code maps: the 256-value dynamic 8-bit code and the 16-value NF4 / FP4 tables, with the decision
//! thresholds the CUDA quantizers compare against (FORMATS.md §1, §3). Every backend takes them from here.

use std::sync::OnceLock;

/// NF4 values (the stored `quant_map`); index order is value order, zero is index 7. The published decimals
/// are kept verbatim; each rounds to the float32 bitsandbytes stores.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// NF4 decision thresholds of `dQuantizeNF4`: index = number of thresholds strictly below the scaled value.
/// rustc rounds each decimal literal straight to f32 once, as the CUDA compiler does (FORMATS.md §0.4); going
/// through f64 first would give a different f32 for three of them.
#[allow(clippy::excessive_precision)]
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// FP4 magnitudes of the low three bits, in units of 1/12.
const FP4_MAG_TWELFTHS: [f32; 8] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];

const fn fp4_table(negative_zero_at_8: bool) -> [f32; 16] {
    let mut t = [0.0f32; 16];
    let mut i = 0;
    while i < 8 {
        t[i] = FP4_MAG_TWELFTHS[i] / 12.0;
        t[i + 8] = -FP4_MAG_TWELFTHS[i] / 12.0;
        i += 1;
    }
    if !negative_zero_at_8 {
        t[8] = 0.0;
    }
    t
}

/// The FP4 table bitsandbytes stores as `quant_map` (+0.0 at index 8).
pub const FP4_CODE: [f32; 16] = fp4_table(false);
/// The FP4 table the CUDA dequantizer effectively uses: `lut[nib & 7] * (1 - 2 * (nib >> 3))`, so -0.0 at 8.
pub const FP4_DEQUANT: [f32; 16] = fp4_table(true);

/// FP4 magnitude thresholds (`|s| > t`, strict), increasing.
#[allow(clippy::excessive_precision)]
pub const FP4_THRESHOLDS: [f32; 7] = [
    0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333,
];
/// Low three bits chosen for each rank (number of thresholds below `|s|`).
pub const FP4_BITS_BY_RANK: [u8; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

/// A 256-entry 8-bit code with the midpoints the CUDA quantizer's binary search effectively compares with.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook8 {
    pub values: [f32; 256],
    /// `float32(float32(code[j] + code[j+1]) * 0.5)` for j = 0..254.
    pub midpoints: [f32; 255],
}

impl Codebook8 {
    /// Builds the midpoints of a sorted code. Returns `None` if the values are not sorted ascending.
    pub fn new(values: [f32; 256]) -> Option<Codebook8> {
        if values.windows(2).any(|w| w[0].is_nan() || w[0] > w[1]) {
            return None;
        }
        let mut midpoints = [0.0f32; 255];
        for j in 0..255 {
            midpoints[j] = (values[j] + values[j + 1]) * 0.5;
        }
        Some(Codebook8 { values, midpoints })
    }
}

/// bitsandbytes' `create_dynamic_map(signed)` (FORMATS.md §1), computed once.
pub fn dynamic_map(signed: bool) -> &'static Codebook8 {
    static SIGNED: OnceLock<Codebook8> = OnceLock::new();
    static UNSIGNED: OnceLock<Codebook8> = OnceLock::new();
    let cell = if signed { &SIGNED } else { &UNSIGNED };
    cell.get_or_init(|| Codebook8::new(build_dynamic_map(signed)).expect("dynamic map is sorted"))
}

/// torch's CPU `linspace(start, end, steps)` in float32: each value one fused multiply-add, rounded once.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(|i| {
            if i < steps / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

fn build_dynamic_map(signed: bool) -> [f32; 256] {
    // 10^(i-6) as Python computes `10.0 ** (i - 6)` (a double), then rounded to float32.
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut vals: Vec<f32> = Vec::with_capacity(256);
    for (i, &scale) in SCALES.iter().enumerate() {
        let k = if signed {
            1usize << i
        } else {
            1usize << (i + 1)
        };
        let b = linspace_f32(0.1, 1.0, k + 1);
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            let v = scale as f32 * mean;
            vals.push(v);
            if signed {
                vals.push(-v);
            }
        }
    }
    vals.push(0.0);
    vals.push(1.0);
    vals.resize(256, 0.0);
    vals.sort_by(f32::total_cmp);
    // total_cmp orders -0.0 before +0.0; the code holds only +0.0.
    vals.try_into().expect("256 values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_landmarks() {
        let s = dynamic_map(true);
        assert_eq!(s.values[127], 0.0);
        assert_eq!(s.values[255], 1.0);
        assert!((s.values[0] + 0.99296874).abs() < 1e-7);
        let u = dynamic_map(false);
        assert_eq!(u.values[0], 0.0);
        assert_eq!(u.values[255], 1.0);
        assert!(u.values.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn three_nf4_thresholds_differ_when_rounded_through_f64() {
        let texts = [
            "-0.8480964004993439",
            "-0.6106329262256622",
            "-0.4599952697753906",
            "-0.33967943489551544",
            "-0.23460740596055984",
            "-0.13791173323988914",
            "-0.045525018125772476",
            "0.03979014977812767",
            "0.1202552504837513",
            "0.2035212516784668",
            "0.2920137718319893",
            "0.3893125355243683",
            "0.5016634166240692",
            "0.6427869200706482",
            "0.8614784181118011",
        ];
        let mut differ = 0;
        for (t, &c) in texts.iter().zip(NF4_THRESHOLDS.iter()) {
            assert_eq!(t.parse::<f32>().unwrap(), c, "literal {t} must round once");
            differ += (t.parse::<f64>().unwrap() as f32 != c) as usize;
        }
        // numpy agrees: np.float32(float(t)) != f32_literal(t) for 4 of the 15 texts.
        assert_eq!(differ, 4);
    }

    #[test]
    fn fp4_tables() {
        assert_eq!(FP4_CODE[8].to_bits(), 0.0f32.to_bits());
        assert_eq!(FP4_DEQUANT[8].to_bits(), (-0.0f32).to_bits());
        assert_eq!(FP4_CODE[3], 1.0);
        assert_eq!(FP4_CODE[11], -1.0);
    }
}
