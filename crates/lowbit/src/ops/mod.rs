//! The public op API. Each op validates shapes, dtypes and block sizes once, then runs one backend kernel on
//! a [`Device`](crate::Device) (`device.quantize_4bit(...)`). Free functions of the same names run on the
//! process's default device.
//!
//! Non-finite inputs: the quantizers reproduce bitsandbytes' CUDA behaviour (a block's absmax ignores NaN,
//! a NaN value gets code 0, an infinite absmax zeroes its block); [`ensure_finite`] rejects such input up
//! front where a caller prefers an error (the checkpoint writer does).

mod blockwise;
mod dense;
pub mod device;
mod device_int8;
mod device_q8;
mod fourbit;
pub(crate) mod int8;
mod ternary;

pub use blockwise::Quantized8bit;
pub use device::{Weight4bit, WeightTernary};
pub use device_int8::Weight8bit;
pub use device_q8::{WeightQ4Lanes, WeightQ8};
pub use fourbit::Quantized4bit;
pub use int8::{Int8Quantized, Linear8bitLt};
pub use ternary::{BitLinear, TernaryWeight};

use crate::tensor::{Floats, Tensor};
use crate::{Error, Result};

/// Fails with [`Error::NonFinite`] if `x` holds NaN or ±inf.
pub fn ensure_finite(op: &'static str, x: Floats) -> Result<()> {
    match x.non_finite() {
        Some((first, count)) => Err(Error::NonFinite { op, count, first }),
        None => Ok(()),
    }
}

/// Splits a tensor of shape `[..., k]` into (rows, k). A 1-D tensor is one row.
pub(crate) fn rows_cols(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape().split_last() {
        None => Err(Error::shape(
            op,
            "expected at least one dimension, got a scalar",
        )),
        Some((&k, lead)) => Ok((lead.iter().product(), k)),
    }
}

/// Checks that `t` has exactly `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    got: usize,
    expected: usize,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Length {
            op,
            what,
            got,
            expected,
        })
    }
}

/// The data of an optional bias of length `n`.
pub(crate) fn bias_floats<'a>(
    op: &'static str,
    bias: Option<&'a Tensor>,
    n: usize,
) -> Result<Option<Floats<'a>>> {
    bias.map(|b| {
        let f = b.floats(op)?;
        check_len(op, "bias", f.len(), n)?;
        Ok(f)
    })
    .transpose()
}

pub(crate) use crate::tensor::with_last_dim;
