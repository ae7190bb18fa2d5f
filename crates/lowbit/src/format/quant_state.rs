//! bitsandbytes' `QuantState` for 4-bit tensors and its JSON (FORMATS.md §4, §5).

use super::blocksize::{BLOCKSIZES_4BIT, NESTED_BLOCKSIZE, num_blocks};
use super::fourbit::FourBitType;
use super::pyrepr::python_float_repr;
use crate::tensor::DType;
use crate::{Error, Result};
use std::borrow::Cow;

/// Per-block scales of a 4-bit tensor: plain float32, or 8-bit with double quantization.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    Plain(Vec<f32>),
    /// `absmax ≈ code[absmax_q[j]] * nested_absmax[j / 256] + offset`.
    Nested {
        absmax_q: Vec<u8>,
        nested_absmax: Vec<f32>,
        nested_code: Vec<f32>,
        offset: f32,
    },
}

impl Absmax {
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(a) => a.len(),
            Absmax::Nested { absmax_q, .. } => absmax_q.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_nested(&self) -> bool {
        matches!(self, Absmax::Nested { .. })
    }
    /// The float32 absmax the 4-bit dequantizer uses. With double quant this is
    /// `float32(float32(code[q] * nested_absmax[j / 256]) + offset)`: two roundings, two torch kernels, no fma.
    /// Plain absmax is borrowed, so the per-call cost of a GEMV stays at reading the weights.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Absmax::Plain(a) => Cow::Borrowed(a),
            Absmax::Nested {
                absmax_q,
                nested_absmax,
                nested_code,
                offset,
            } => Cow::Owned(
                absmax_q
                    .iter()
                    .enumerate()
                    .map(|(j, &q)| {
                        let v = super::float::ftz(
                            nested_code[q as usize] * nested_absmax[j / NESTED_BLOCKSIZE],
                        );
                        v + *offset
                    })
                    .collect(),
            ),
        }
    }
}

/// Everything needed to dequantize a packed 4-bit tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantState {
    pub quant_type: FourBitType,
    pub blocksize: usize,
    /// The original tensor's dtype (dequantization output dtype).
    pub dtype: DType,
    /// The original tensor's shape.
    pub shape: Vec<usize>,
    pub absmax: Absmax,
}

impl QuantState {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks internal consistency and that `packed_len` bytes hold the tensor.
    pub fn validate(&self, packed_len: usize) -> Result<()> {
        let bad = |m: String| Err(Error::CorruptQuantState(m));
        if !BLOCKSIZES_4BIT.contains(&self.blocksize) {
            return bad(format!(
                "blocksize {} is not one of {:?}",
                self.blocksize, BLOCKSIZES_4BIT
            ));
        }
        if !self.dtype.is_float() {
            return bad(format!(
                "dtype {} is not a float type (float32, float16, bfloat16)",
                self.dtype
            ));
        }
        let n = self.numel();
        let nb = num_blocks(n, self.blocksize);
        if self.absmax.len() != nb {
            return bad(format!(
                "{} absmax values for {n} elements in blocks of {}; expected {nb}",
                self.absmax.len(),
                self.blocksize
            ));
        }
        if packed_len != n.div_ceil(2) {
            return bad(format!(
                "{packed_len} packed bytes for {n} elements; expected {}",
                n.div_ceil(2)
            ));
        }
        if let Absmax::Nested {
            nested_absmax,
            nested_code,
            offset,
            ..
        } = &self.absmax
        {
            let nn = num_blocks(nb, NESTED_BLOCKSIZE);
            if nested_absmax.len() != nn {
                return bad(format!(
                    "{} nested absmax values; expected {nn}",
                    nested_absmax.len()
                ));
            }
            if nested_code.len() != 256 {
                return bad(format!(
                    "nested code has {} values; expected 256",
                    nested_code.len()
                ));
            }
            if !offset.is_finite() {
                return bad(format!("nested offset {offset} is not finite"));
            }
        }
        Ok(())
    }

    /// The JSON bitsandbytes stores under `weight.quant_state.bitsandbytes__<type>`, byte for byte
    /// (Python `json.dumps` of the ordered dict; `nested_offset` as Python's repr of the float32).
    pub fn to_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.quant_type.name(),
            self.blocksize,
            self.dtype.torch_name(),
            shape.join(", ")
        );
        if let Absmax::Nested { offset, .. } = &self.absmax {
            s += &format!(
                ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                python_float_repr(*offset as f64)
            );
        }
        s.push('}');
        s
    }
}

/// The fields of the quant_state JSON (keys in any order, as `QuantState.from_dict` accepts).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantStateJson {
    pub quant_type: FourBitType,
    pub blocksize: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `Some(offset)` with double quantization.
    pub nested_offset: Option<f32>,
}

impl QuantStateJson {
    /// Parses untrusted JSON bytes; every missing or ill-typed field is a `CorruptQuantState` error.
    pub fn parse(bytes: &[u8]) -> Result<QuantStateJson> {
        let bad = |m: String| Error::CorruptQuantState(m);
        if bytes.len() > 64 * 1024 {
            return Err(bad(format!(
                "quant_state JSON is {} bytes; refusing more than 64 KiB",
                bytes.len()
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("quant_state is not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("quant_state JSON is not an object".into()))?;
        let field = |k: &str| {
            obj.get(k)
                .ok_or_else(|| bad(format!("quant_state JSON lacks \"{k}\"")))
        };
        let quant_type: FourBitType = field("quant_type")?
            .as_str()
            .ok_or_else(|| bad("\"quant_type\" is not a string".into()))?
            .parse()
            .map_err(|_| bad(format!("unknown quant_type {}", obj["quant_type"])))?;
        let blocksize = field("blocksize")?
            .as_u64()
            .ok_or_else(|| bad("\"blocksize\" is not an integer".into()))?
            as usize;
        let dtype_name = field("dtype")?
            .as_str()
            .ok_or_else(|| bad("\"dtype\" is not a string".into()))?;
        let dtype = DType::parse(dtype_name)
            .filter(|d| d.is_float())
            .ok_or_else(|| {
                bad(format!(
                    "dtype {dtype_name:?} is not float16, bfloat16 or float32"
                ))
            })?;
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| bad("\"shape\" is not a list".into()))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| bad("\"shape\" holds a non-integer".into()))
            })
            .collect::<Result<Vec<usize>>>()?;
        if shape.len() > 8 {
            return Err(bad(format!("shape has {} dimensions", shape.len())));
        }
        shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= 1 << 40)
            .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let nested_offset = match obj.get("nested_offset") {
            None => None,
            Some(o) => {
                let nb = obj.get("nested_blocksize").and_then(|b| b.as_u64());
                if nb != Some(NESTED_BLOCKSIZE as u64) {
                    return Err(bad(format!(
                        "nested_blocksize {nb:?} is not {NESTED_BLOCKSIZE}"
                    )));
                }
                Some(
                    o.as_f64()
                        .ok_or_else(|| bad("\"nested_offset\" is not a number".into()))?
                        as f32,
                )
            }
        };
        Ok(QuantStateJson {
            quant_type,
            blocksize,
            dtype,
            shape,
            nested_offset,
        })
    }
}
