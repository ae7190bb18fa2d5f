//! Joining the results of an op's chunks back into the result of the whole op. Chunks cover consecutive,
//! whole units (blocks, rows), so joining is concatenation and the bytes equal the unchunked run's.

use crate::backend::BlockCodes;
use crate::tensor::FloatVec;

/// A result that can be rebuilt from the results of consecutive chunks.
pub trait Join: Sized {
    fn join(parts: Vec<Self>) -> Self;
}

impl<T> Join for Vec<T> {
    fn join(parts: Vec<Self>) -> Self {
        parts.into_iter().flatten().collect()
    }
}

impl<A: Join, B: Join> Join for (A, B) {
    fn join(parts: Vec<Self>) -> Self {
        let (a, b): (Vec<A>, Vec<B>) = parts.into_iter().unzip();
        (A::join(a), B::join(b))
    }
}

impl Join for BlockCodes {
    fn join(parts: Vec<Self>) -> Self {
        let mut out = BlockCodes {
            codes: Vec::new(),
            absmax: Vec::new(),
        };
        for p in parts {
            out.codes.extend(p.codes);
            out.absmax.extend(p.absmax);
        }
        out
    }
}

impl Join for FloatVec {
    fn join(parts: Vec<Self>) -> Self {
        let dtype = parts
            .first()
            .map_or(crate::tensor::DType::F32, FloatVec::dtype);
        macro_rules! cat {
            ($variant:ident) => {
                FloatVec::$variant(
                    parts
                        .into_iter()
                        .flat_map(|p| match p {
                            FloatVec::$variant(v) => v,
                            // Every chunk of one op has the op's output dtype.
                            other => {
                                unreachable!("chunk dtype {:?} differs from {dtype}", other.dtype())
                            }
                        })
                        .collect(),
                )
            };
        }
        match dtype {
            crate::tensor::DType::F16 => cat!(F16),
            crate::tensor::DType::BF16 => cat!(BF16),
            _ => cat!(F32),
        }
    }
}

/// Consecutive ranges of at most `chunk` units covering `0..units`.
pub fn chunks(units: usize, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let chunk = chunk.max(1);
    (0..units.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(units))
}
