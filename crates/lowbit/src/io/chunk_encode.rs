//! The encoding stage of the streaming quantizer: one unit (a chunk of a tensor, or a whole ternary tensor)
//! through the library's kernels, plus what the checks and the error statistic need from it, computed
//! while the chunk is in cache: non-finite values, int8's float16 range, the error sums.

use super::layout::{QuantFormat, QuantSpec};
use super::quant_error::{self, BlockMoments, ErrorSums};
use super::stream_read::Payload;
use crate::format::Absmax;
use crate::format::ternary::{abs_sum, weight_scale};
use crate::runtime::Device;
use crate::tensor::{Float, FloatVec, Tensor, TensorData};
use crate::{Result, with_floats};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// What the checks found in a unit; indices are into the whole tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scan {
    /// First non-finite value and how many there are.
    pub non_finite: Option<(usize, usize)>,
    /// First value that float16 cannot hold (int8 only).
    pub f16_overflow: Option<(usize, f32)>,
}

impl Scan {
    /// `self` followed by `later`: the first finding wins, counts add.
    pub fn then(self, later: Scan) -> Scan {
        let non_finite = match (self.non_finite, later.non_finite) {
            (Some((f, a)), Some((_, b))) => Some((f, a + b)),
            (a, b) => a.or(b),
        };
        Scan {
            non_finite,
            f16_overflow: self.f16_overflow.or(later.f16_overflow),
        }
    }
}

/// An encoded unit.
pub enum EncodedUnit {
    /// Bytes of a tensor kept in full precision.
    Raw(Vec<u8>),
    FourBit {
        packed: Vec<u8>,
        absmax: Vec<f32>,
        moments: Vec<BlockMoments>,
        scan: Scan,
    },
    Int8 {
        q: Vec<i8>,
        scb: Vec<f32>,
        err: ErrorSums,
        scan: Scan,
    },
    Ternary {
        packed: Vec<u8>,
        weight_scale: f32,
        err: ErrorSums,
        scan: Scan,
    },
}

/// Encodes a unit of the tensor of `shape` starting at element `offset`.
pub fn encode_unit(
    dev: &Device,
    spec: &QuantSpec,
    shape: &[usize],
    offset: usize,
    payload: Payload,
    recycle: &dyn Fn(FloatVec),
) -> Result<EncodedUnit> {
    let (data, abs_sum_f64) = match payload {
        Payload::Raw(b) => return Ok(EncodedUnit::Raw(b)),
        Payload::Values { data, abs_sum } => (data, abs_sum),
    };
    let cols = shape.get(1).copied().unwrap_or(1).max(1);
    match spec.format {
        QuantFormat::FourBit(t) => {
            let xt = Tensor::vector(data);
            // Blocks are independent, so a chunk of whole blocks quantizes to its slice of the tensor's bytes.
            let q = dev.quantize_4bit(&xt, t, spec.blocksize, false)?;
            let moments = with_floats!(xt.floats("quantize")?, s => {
                quant_error::fourbit_moments(s, &q.packed, t, spec.blocksize)
            });
            // A non-finite value makes its block's Σx² non-finite, so the exact scan (first index, count)
            // is needed only then: the clean case costs no extra pass.
            let scan = if moments.iter().all(|m| m[0].is_finite()) {
                Scan::default()
            } else {
                with_floats!(xt.floats("quantize")?, s => scan(s, offset, false))
            };
            if let (_, TensorData::Float(v)) = xt.into_parts() {
                recycle(v);
            }
            let absmax = match q.state.absmax {
                Absmax::Plain(a) => a,
                nested => nested.to_f32().into_owned(),
            };
            Ok(EncodedUnit::FourBit {
                packed: q.packed,
                absmax,
                moments,
                scan,
            })
        }
        QuantFormat::Int8 => {
            let scan = with_floats!(data.as_floats(), s => scan(s, offset, true));
            // bitsandbytes quantizes the float16 weight; rows are independent with threshold 0.
            let (h, wide) = match data {
                FloatVec::F16(h) => (h, None),
                other => {
                    let x = widen(other);
                    let mut h = vec![f16::ZERO; x.len()];
                    h.convert_from_f32_slice(&x);
                    (h, Some(x))
                }
            };
            let rows = h.len() / cols;
            let ht = Tensor::from_floats(vec![rows, cols], FloatVec::F16(h))?;
            let q = dev.int8_vectorwise_quant(&ht, 0.0)?;
            // The error against the weight as read (the f32 copy for other dtypes), like the reference path.
            let err = match &wide {
                Some(x) => quant_error::int8_error(x, &q.q, &q.row_stats, cols),
                None => with_floats!(ht.floats("quantize")?, s => {
                    quant_error::int8_error(s, &q.q, &q.row_stats, cols)
                }),
            };
            if let (_, TensorData::Float(v)) = ht.into_parts() {
                // Only an f16 input buffer comes back in the size the reader asks for.
                if wide.is_none() {
                    recycle(v);
                }
            }
            Ok(EncodedUnit::Int8 {
                q: q.q,
                scb: q.row_stats,
                err,
                scan,
            })
        }
        QuantFormat::Ternary => {
            let n = data.len();
            let scan = with_floats!(data.as_floats(), s => scan(s, 0, false));
            let sum = match abs_sum_f64 {
                Some(s) => s as f32,
                None => with_floats!(data.as_floats(), s => abs_sum(s.iter().map(|v| v.to_f32()))),
            };
            let scale = weight_scale(sum, n);
            let w = Tensor::new(shape.to_vec(), TensorData::Float(data))?;
            let tw = dev.ternary_quantize_scaled(&w, scale)?;
            let (_, stored) = super::layout::ternary_scale_tensor("", scale, w.dtype());
            let err = quant_error::ternary_error(
                w.floats("quantize")?,
                &tw.packed,
                tw.rows,
                tw.cols,
                stored,
            );
            Ok(EncodedUnit::Ternary {
                packed: tw.packed,
                weight_scale: scale,
                err,
                scan,
            })
        }
    }
}

/// The values as f32 (exact), with the SIMD conversions of `half` (F16C where the CPU has it).
fn widen(data: FloatVec) -> Vec<f32> {
    match data {
        FloatVec::F32(v) => v,
        FloatVec::F16(v) => to_f32(&v),
        FloatVec::BF16(v) => to_f32(&v),
    }
}

fn to_f32<H>(v: &[H]) -> Vec<f32>
where
    [H]: HalfFloatSliceExt,
{
    let mut out = vec![0.0f32; v.len()];
    v.convert_to_f32_slice(&mut out);
    out
}

/// Values per rayon task of the scan.
const SCAN_TASK: usize = 1 << 16;

/// Non-finite values (and, for int8, values float16 rounds to infinity) of `x`, which starts at element
/// `offset` of its tensor.
fn scan<T: Float>(x: &[T], offset: usize, f16_range: bool) -> Scan {
    x.par_chunks(SCAN_TASK)
        .enumerate()
        .map(|(k, xs)| {
            let base = offset + k * SCAN_TASK;
            // Counting first keeps the common, clean case a tight loop.
            let bad = xs.iter().filter(|v| !v.to_f32().is_finite()).count();
            let non_finite = (bad > 0).then(|| {
                let first = xs.iter().position(|v| !v.to_f32().is_finite());
                (base + first.unwrap_or(0), bad)
            });
            let f16_overflow = if f16_range {
                xs.iter()
                    .position(|v| {
                        let v = v.to_f32();
                        v.abs() > 65504.0 && f16::from_f32(v).is_infinite()
                    })
                    .map(|i| (base + i, xs[i].to_f32()))
            } else {
                None
            };
            Scan {
                non_finite,
                f16_overflow,
            }
        })
        .reduce(Scan::default, Scan::then)
}
