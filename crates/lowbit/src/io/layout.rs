//! The bitsandbytes / transformers state-dict layout of quantized linear weights (FORMATS.md §5, §7, §9):
//! which keys a quantized weight becomes, with which dtypes and shapes, and how to read them back.
//!
//! For a weight `P.weight` of shape `[out, in]`:
//! - 4-bit (`Linear4bit._save_to_state_dict` + `QuantState.as_dict(packed=True)`): `P.weight` U8
//!   `[(n+1)/2, 1]`, `P.weight.absmax` (F32 `[nb]`, or U8 `[nb]` with double quant), `P.weight.quant_map` F32
//!   `[16]`, with double quant `P.weight.nested_absmax` F32 `[ceil(nb/256)]` and `P.weight.nested_quant_map`
//!   F32 `[256]`, and `P.weight.quant_state.bitsandbytes__nf4|fp4` U8 `[len]` (the JSON).
//! - LLM.int8() (`Linear8bitLt._save_to_state_dict`): `P.weight` I8 `[out, in]`, `P.SCB` F32 `[out]`,
//!   `P.weight_format` U8 scalar `[]` = 0 (row-major).
//! - BitNet (transformers `BitLinear` buffers): `P.weight` U8 `[out/4, in]`, `P.weight_scale` in the model
//!   dtype, shape `[1]`.

use super::StDtype;
use super::checkpoint_error as ck;
use super::safetensors_read::{SafetensorsFile, TensorEntry};
use super::safetensors_write::{PlannedTensor, TailTensor};
use crate::format::blocksize::num_blocks;
use crate::format::int8::WEIGHT_FORMAT_ROW;
use crate::format::quant_state::QuantStateJson;
use crate::format::ternary::{packed_rows, unpack};
use crate::format::{
    Absmax, BLOCKSIZES_4BIT, FourBitType, NESTED_BLOCKSIZE, QuantState, dynamic_map,
};
use crate::ops::{Linear8bitLt, Quantized4bit, ensure_finite};
use crate::runtime::Device;
use crate::tensor::{DType, FloatVec, Floats, Tensor, TensorData};
use crate::{Error, Result};

pub const ABSMAX: &str = "absmax";
pub const QUANT_MAP: &str = "quant_map";
pub const NESTED_ABSMAX: &str = "nested_absmax";
pub const NESTED_QUANT_MAP: &str = "nested_quant_map";
/// Prefix of the packed quant_state key; the 4-bit type name follows.
pub const QUANT_STATE_PREFIX: &str = "quant_state.bitsandbytes__";
pub const SCB: &str = "SCB";
pub const WEIGHT_FORMAT: &str = "weight_format";
pub const WEIGHT_SCALE: &str = "weight_scale";
/// Longest Python repr of a float32 held in a double (`-1.1754943508222875e-38`), bounding the JSON.
const MAX_FLOAT_REPR: usize = 24;

/// A checkpoint quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    FourBit(FourBitType),
    Int8,
    Ternary,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::FourBit(t) => t.name(),
            QuantFormat::Int8 => "int8",
            QuantFormat::Ternary => "ternary",
        }
    }
}

impl std::str::FromStr for QuantFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(QuantFormat::FourBit(FourBitType::Nf4)),
            "fp4" => Ok(QuantFormat::FourBit(FourBitType::Fp4)),
            "int8" | "llm_int8" => Ok(QuantFormat::Int8),
            "ternary" | "bitnet" => Ok(QuantFormat::Ternary),
            _ => Err(Error::UnknownFormat {
                got: s.to_string(),
                known: "nf4, fp4, int8, ternary",
            }),
        }
    }
}

/// How to quantize one weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantSpec {
    pub format: QuantFormat,
    /// 4-bit block size (bitsandbytes / transformers default 64).
    pub blocksize: usize,
    /// 4-bit double quantization (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl QuantSpec {
    pub fn validate(&self) -> Result<()> {
        if matches!(self.format, QuantFormat::FourBit(_))
            && !BLOCKSIZES_4BIT.contains(&self.blocksize)
        {
            return Err(Error::BlockSize {
                op: "quantize",
                got: self.blocksize,
                allowed: BLOCKSIZES_4BIT,
            });
        }
        if self.double_quant && !matches!(self.format, QuantFormat::FourBit(_)) {
            return Err(Error::invalid(
                "quantize",
                format!(
                    "double quantization applies to the 4-bit formats (nf4, fp4) only, not {}; drop --double-quant",
                    self.format.name()
                ),
            ));
        }
        Ok(())
    }
}

/// `P` of `P.weight` (the module name).
pub fn module_of(weight_name: &str) -> &str {
    weight_name.strip_suffix(".weight").unwrap_or(weight_name)
}

fn sub(weight_name: &str, key: &str) -> String {
    format!("{weight_name}.{key}")
}

fn module_key(weight_name: &str, key: &str) -> String {
    format!("{}.{key}", module_of(weight_name))
}

/// The tensors a weight becomes, known before quantizing it: fixed-size ones in write order, and the
/// quant_state JSON as a tail (its length depends on the double-quant offset's digits).
pub fn plan(
    spec: &QuantSpec,
    weight_name: &str,
    dtype: DType,
    shape: &[usize],
) -> Result<(Vec<PlannedTensor>, Option<TailTensor>)> {
    let w = weight_name;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::shape("quantize", format!("{w}: shape {shape:?} overflows")))?;
    if n == 0 {
        return Err(Error::shape(
            "quantize",
            format!(
                "{w}: shape {shape:?} has no elements; a zero-size weight cannot be quantized \
                 (keep it in full precision with --exclude)"
            ),
        ));
    }
    Ok(match spec.format {
        QuantFormat::FourBit(t) => {
            let nb = num_blocks(n, spec.blocksize);
            let mut p = vec![PlannedTensor::new(w, StDtype::U8, vec![n.div_ceil(2), 1])];
            if spec.double_quant {
                p.push(PlannedTensor::new(sub(w, ABSMAX), StDtype::U8, vec![nb]));
            } else {
                p.push(PlannedTensor::new(sub(w, ABSMAX), StDtype::F32, vec![nb]));
            }
            p.push(PlannedTensor::new(
                sub(w, QUANT_MAP),
                StDtype::F32,
                vec![16],
            ));
            if spec.double_quant {
                let nn = num_blocks(nb, NESTED_BLOCKSIZE);
                p.push(PlannedTensor::new(
                    sub(w, NESTED_ABSMAX),
                    StDtype::F32,
                    vec![nn],
                ));
                p.push(PlannedTensor::new(
                    sub(w, NESTED_QUANT_MAP),
                    StDtype::F32,
                    vec![256],
                ));
            }
            // The JSON with a zero offset ("0.0"), plus room for the longest repr.
            let probe = QuantState {
                quant_type: t,
                blocksize: spec.blocksize,
                dtype,
                shape: shape.to_vec(),
                absmax: if spec.double_quant {
                    Absmax::Nested {
                        absmax_q: vec![],
                        nested_absmax: vec![],
                        nested_code: vec![],
                        offset: 0.0,
                    }
                } else {
                    Absmax::Plain(vec![])
                },
            };
            let max_len =
                probe.to_json().len() + if spec.double_quant { MAX_FLOAT_REPR } else { 0 };
            let tail = TailTensor {
                name: sub(w, &format!("{QUANT_STATE_PREFIX}{}", t.name())),
                max_len,
            };
            (p, Some(tail))
        }
        QuantFormat::Int8 => {
            let [out, inp] = dims2(shape).ok_or_else(|| shape_err(w, shape))?;
            (
                vec![
                    PlannedTensor::new(w, StDtype::I8, vec![out, inp]),
                    PlannedTensor::new(module_key(w, SCB), StDtype::F32, vec![out]),
                    PlannedTensor::new(module_key(w, WEIGHT_FORMAT), StDtype::U8, vec![]),
                ],
                None,
            )
        }
        QuantFormat::Ternary => {
            let [out, inp] = dims2(shape).ok_or_else(|| shape_err(w, shape))?;
            if out % 4 != 0 {
                return Err(Error::invalid(
                    "quantize",
                    format!(
                        "{w}: BitNet packs 4 rows per byte and transformers' BitLinear needs out_features % 4 == 0, \
                         got {out}; exclude this tensor with --exclude"
                    ),
                ));
            }
            (
                vec![
                    PlannedTensor::new(w, StDtype::U8, vec![packed_rows(out), inp]),
                    PlannedTensor::new(
                        module_key(w, WEIGHT_SCALE),
                        StDtype::from_dtype(dtype),
                        vec![1],
                    ),
                ],
                None,
            )
        }
    })
}

fn dims2(shape: &[usize]) -> Option<[usize; 2]> {
    match shape {
        [a, b] => Some([*a, *b]),
        _ => None,
    }
}

fn shape_err(w: &str, shape: &[usize]) -> Error {
    Error::shape(
        "quantize",
        format!("{w}: expected a 2-D [out, in] weight, got {shape:?}"),
    )
}

/// A tensor's name and little-endian bytes.
pub type NamedBytes = (String, Vec<u8>);

/// The bytes of a quantized weight in [`plan`]'s order, and its relative error `||W - W'|| / ||W||`.
pub struct Encoded {
    pub tensors: Vec<(String, Vec<u8>)>,
    pub tail: Option<(String, Vec<u8>)>,
    pub rel_error: f64,
}

/// Quantizes `w` (named `weight_name`) with the library's ops. Non-finite weights are rejected. This is the
/// tensor-at-a-time reference path; `quantize_stream` produces the same bytes chunk by chunk.
pub fn encode(dev: &Device, spec: &QuantSpec, weight_name: &str, w: &Tensor) -> Result<Encoded> {
    let wf = w.floats("quantize")?;
    ensure_finite("quantize", wf)
        .map_err(|e| Error::invalid("quantize", format!("{weight_name}: {e}")))?;
    let name = weight_name;
    match spec.format {
        QuantFormat::FourBit(t) => {
            if spec.double_quant {
                check_double_quant_range(name, wf, spec.blocksize)?;
            }
            let q = dev.quantize_4bit(w, t, spec.blocksize, spec.double_quant)?;
            // Compared in f32, before rounding to the weight's dtype: the format's own error, the same
            // statistic the streaming path accumulates.
            let deq = dev.dequantize_4bit_as(&q, DType::F32)?;
            let rel_error = rel_error(wf, deq.floats("dequantize")?);
            let (rest, tail) = fourbit_state_tensors(name, &q.state);
            let mut tensors = vec![(name.to_string(), q.packed)];
            tensors.extend(rest);
            Ok(Encoded {
                tensors,
                tail: Some(tail),
                rel_error,
            })
        }
        QuantFormat::Int8 => {
            check_f16_range(name, wf, w.shape())?;
            let layer = Linear8bitLt::from_weight(dev, w, None, 0.0)?;
            let qt = Tensor::new(w.shape().to_vec(), layer.weight)?;
            let deq = dev.int8_vectorwise_dequant(&qt, &layer.scb)?;
            let rel_error = rel_error(wf, deq.floats("dequantize")?);
            let TensorData::I8(q) = qt.into_parts().1 else {
                unreachable!("built above")
            };
            let mut tensors = vec![(name.to_string(), bytemuck::cast_slice(&q).to_vec())];
            tensors.extend(int8_state_tensors(name, &layer.scb));
            Ok(Encoded {
                tensors,
                tail: None,
                rel_error,
            })
        }
        QuantFormat::Ternary => {
            let tw = dev.ternary_quantize(w)?;
            let (scale, stored_scale) = ternary_scale_tensor(name, tw.weight_scale, w.dtype());
            let deq = ternary_values(&tw.packed, tw.rows, tw.cols, stored_scale);
            let rel_error = rel_error(wf, Floats::F32(&deq));
            Ok(Encoded {
                tensors: vec![(name.to_string(), tw.packed), scale],
                tail: None,
                rel_error,
            })
        }
    }
}

/// The tensors after the packed 4-bit weight, in [`plan`]'s order, and the quant_state tail.
pub(crate) fn fourbit_state_tensors(
    name: &str,
    state: &QuantState,
) -> (Vec<NamedBytes>, NamedBytes) {
    let t = state.quant_type;
    let mut tensors = Vec::new();
    match &state.absmax {
        Absmax::Plain(a) => {
            tensors.push((sub(name, ABSMAX), f32_bytes(a)));
            tensors.push((sub(name, QUANT_MAP), f32_bytes(t.quant_map())));
        }
        Absmax::Nested {
            absmax_q,
            nested_absmax,
            nested_code,
            ..
        } => {
            tensors.push((sub(name, ABSMAX), absmax_q.clone()));
            tensors.push((sub(name, QUANT_MAP), f32_bytes(t.quant_map())));
            tensors.push((sub(name, NESTED_ABSMAX), f32_bytes(nested_absmax)));
            tensors.push((sub(name, NESTED_QUANT_MAP), f32_bytes(nested_code)));
        }
    }
    let tail = (
        sub(name, &format!("{QUANT_STATE_PREFIX}{}", t.name())),
        state.to_json().into_bytes(),
    );
    (tensors, tail)
}

/// The tensors after the int8 weight, in [`plan`]'s order: SCB and the row-major weight format.
pub(crate) fn int8_state_tensors(name: &str, scb: &[f32]) -> Vec<(String, Vec<u8>)> {
    vec![
        (module_key(name, SCB), f32_bytes(scb)),
        (module_key(name, WEIGHT_FORMAT), vec![WEIGHT_FORMAT_ROW]),
    ]
}

/// The `weight_scale` tensor in the model's dtype, and the value it stores (what a loader multiplies by).
pub(crate) fn ternary_scale_tensor(
    name: &str,
    weight_scale: f32,
    dtype: DType,
) -> ((String, Vec<u8>), f32) {
    let scale = FloatVec::from_f32(vec![weight_scale], dtype);
    let stored = scale.to_f32_vec()[0];
    (
        (module_key(name, WEIGHT_SCALE), scale.to_le_bytes()),
        stored,
    )
}

/// LLM.int8() works on the float16 weight (bitsandbytes' `Int8Params` converts to half before quantizing), so
/// a value beyond float16's range (±65504) becomes inf, its row's SCB inf, and the row dequantizes to NaN.
/// Refused with the tensor, row and value instead.
fn check_f16_range(name: &str, wf: Floats, shape: &[usize]) -> Result<()> {
    let cols = shape.get(1).copied().unwrap_or(1).max(1);
    if let Some(i) = (0..wf.len()).find(|&i| half::f16::from_f32(wf.get_f32(i)).is_infinite()) {
        return Err(f16_range_error(name, i, wf.get_f32(i), cols));
    }
    Ok(())
}

/// The error for value `i` (`value`, beyond float16's range) of an int8 weight with `cols` columns.
pub(crate) fn f16_range_error(name: &str, i: usize, value: f32, cols: usize) -> Error {
    Error::invalid(
        "quantize",
        format!(
            "{name}: row {} holds {:e} (column {}), beyond float16's range (±65504); LLM.int8() computes \
             its row scales (SCB) in float16 as bitsandbytes does, so this row would dequantize to NaN. \
             Keep the tensor in full precision with --exclude, or use nf4/fp4",
            i / cols,
            value,
            i % cols
        ),
    )
}

/// Double quantization subtracts the float32 mean of the block scales (torch's `absmax.mean()`): when their
/// sum leaves float32's range the mean is inf and the nested state is unusable. Refused before quantizing.
fn check_double_quant_range(name: &str, wf: Floats, blocksize: usize) -> Result<()> {
    let (mut sum, mut block_max) = (0.0f64, 0.0f64);
    for i in 0..wf.len() {
        block_max = block_max.max((wf.get_f32(i) as f64).abs());
        if (i + 1).is_multiple_of(blocksize) || i + 1 == wf.len() {
            sum += block_max;
            block_max = 0.0;
        }
    }
    check_absmax_sum(name, sum)
}

/// [`check_double_quant_range`] from the block scales the kernel returned (the same sum, in the same
/// order, for finite input).
pub(crate) fn check_double_quant_absmax(name: &str, absmax: &[f32]) -> Result<()> {
    check_absmax_sum(name, absmax.iter().fold(0.0f64, |s, &a| s + a as f64))
}

fn check_absmax_sum(name: &str, sum: f64) -> Result<()> {
    if sum >= f32::MAX as f64 / 2.0 {
        return Err(Error::invalid(
            "quantize",
            format!(
                "{name}: the block scales (absmax) sum to {sum:e}, beyond float32's range, so double \
                 quantization's mean of them (the nested offset) would be infinite. Quantize without \
                 --double-quant, or rescale the weights"
            ),
        ));
    }
    Ok(())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// `t / weight_scale` for every ternary value (the weight BitLinear effectively applies).
fn ternary_values(packed: &[u8], rows: usize, cols: usize, weight_scale: f32) -> Vec<f32> {
    unpack(packed, rows, cols)
        .into_iter()
        .map(|t| t as f32 / weight_scale)
        .collect()
}

/// `||a - b||_2 / ||a||_2` in f64 (0 when `a` is all zeros and `b` equals it).
pub fn rel_error(a: Floats, b: Floats) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..a.len().min(b.len()) {
        let (x, y) = (a.get_f32(i) as f64, b.get_f32(i) as f64);
        num += (x - y) * (x - y);
        den += x * x;
    }
    if den == 0.0 {
        if num == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (num / den).sqrt()
    }
}

/// A logical tensor of a checkpoint: a plain tensor, or the keys of one quantized weight.
#[derive(Clone, Debug, PartialEq)]
pub enum Group {
    Plain(String),
    FourBit {
        weight: String,
        quant_type: FourBitType,
        /// Every key of the group (weight first).
        keys: Vec<String>,
    },
    Int8 {
        weight: String,
        keys: Vec<String>,
    },
    Ternary {
        weight: String,
        keys: Vec<String>,
    },
}

impl Group {
    pub fn weight(&self) -> &str {
        match self {
            Group::Plain(w)
            | Group::FourBit { weight: w, .. }
            | Group::Int8 { weight: w, .. }
            | Group::Ternary { weight: w, .. } => w,
        }
    }
    pub fn keys(&self) -> Vec<String> {
        match self {
            Group::Plain(w) => vec![w.clone()],
            Group::FourBit { keys, .. }
            | Group::Int8 { keys, .. }
            | Group::Ternary { keys, .. } => keys.clone(),
        }
    }
    pub fn format_name(&self) -> Option<&'static str> {
        match self {
            Group::Plain(_) => None,
            Group::FourBit { quant_type, .. } => Some(quant_type.name()),
            Group::Int8 { .. } => Some("int8"),
            Group::Ternary { .. } => Some("ternary"),
        }
    }
}

/// Groups a file's tensors into plain tensors and quantized weights, in file order of each group's weight.
pub fn groups(file: &SafetensorsFile) -> Result<Vec<Group>> {
    let mut claimed = std::collections::HashSet::new();
    let mut quantized = std::collections::HashMap::new();
    for t in file.tensors() {
        let Some((weight, qtype)) = t.name.split_once(&format!(".{QUANT_STATE_PREFIX}")) else {
            continue;
        };
        let quant_type: FourBitType = qtype.parse().map_err(|_| {
            ck(
                file.path(),
                format!("tensor {:?}: unknown 4-bit type {qtype:?}", t.name),
            )
        })?;
        let mut keys = vec![weight.to_string()];
        for k in [ABSMAX, QUANT_MAP, NESTED_ABSMAX, NESTED_QUANT_MAP] {
            if file.get(&sub(weight, k)).is_some() {
                keys.push(sub(weight, k));
            }
        }
        keys.push(t.name.clone());
        if quantized.contains_key(weight) {
            return Err(ck(
                file.path(),
                format!(
                    "tensor {weight:?} has more than one quant_state; bitsandbytes requires exactly one"
                ),
            ));
        }
        claimed.extend(keys.iter().cloned());
        quantized.insert(
            weight.to_string(),
            Group::FourBit {
                weight: weight.to_string(),
                quant_type,
                keys,
            },
        );
    }
    for t in file.tensors() {
        if claimed.contains(&t.name) || !t.name.ends_with(".weight") {
            continue;
        }
        let scb = module_key(&t.name, SCB);
        let scale = module_key(&t.name, WEIGHT_SCALE);
        if t.dtype == StDtype::I8 && file.get(&scb).is_some() {
            let mut keys = vec![t.name.clone(), scb];
            let wf = module_key(&t.name, WEIGHT_FORMAT);
            if file.get(&wf).is_some() {
                keys.push(wf);
            }
            claimed.extend(keys.iter().cloned());
            quantized.insert(
                t.name.clone(),
                Group::Int8 {
                    weight: t.name.clone(),
                    keys,
                },
            );
        } else if t.dtype == StDtype::U8 && file.get(&scale).is_some() {
            let keys = vec![t.name.clone(), scale];
            claimed.extend(keys.iter().cloned());
            quantized.insert(
                t.name.clone(),
                Group::Ternary {
                    weight: t.name.clone(),
                    keys,
                },
            );
        }
    }
    let mut out = Vec::new();
    for t in file.tensors() {
        if let Some(g) = quantized.remove(&t.name) {
            out.push(g);
        } else if !claimed.contains(&t.name) {
            out.push(Group::Plain(t.name.clone()));
        }
    }
    if let Some(w) = quantized.keys().next() {
        return Err(ck(
            file.path(),
            format!("tensor {w:?} is missing but its quantization state is present"),
        ));
    }
    Ok(out)
}

/// The quant_state key and parsed JSON of a 4-bit weight (header and JSON only; no tensor data copied).
pub fn fourbit_json(file: &SafetensorsFile, weight: &str) -> Result<(String, QuantStateJson)> {
    let bad = |key: &str, d: String| ck(file.path(), format!("tensor {key:?}: {d}"));
    let qs_entry = file
        .tensors()
        .iter()
        .find(|t| t.name.starts_with(&sub(weight, QUANT_STATE_PREFIX)))
        .ok_or_else(|| bad(weight, "quant_state tensor is missing".into()))?;
    if qs_entry.dtype != StDtype::U8 {
        return Err(bad(
            &qs_entry.name,
            format!("dtype {} where U8 is required", qs_entry.dtype),
        ));
    }
    let js = QuantStateJson::parse(&file.bytes(qs_entry)?)
        .map_err(|e| bad(&qs_entry.name, e.to_string()))?;
    let suffix_type = &qs_entry.name[weight.len() + 1 + QUANT_STATE_PREFIX.len()..];
    if suffix_type != js.quant_type.name() {
        return Err(bad(
            &qs_entry.name,
            format!("key says {suffix_type} but the JSON says {}", js.quant_type),
        ));
    }
    Ok((qs_entry.name.clone(), js))
}

/// The entries of a 4-bit group and its JSON, after every check loading makes that does not need the bulk
/// data: dtypes, the standard code maps (64 B and 1 KiB read), and every length against the JSON's shape and
/// block size. [`load_fourbit`] and [`check`] (what `inspect` runs) share it.
struct FourBitParts<'a> {
    js: QuantStateJson,
    packed: &'a TensorEntry,
    absmax: &'a TensorEntry,
    nested_absmax: Option<&'a TensorEntry>,
}

fn fourbit_parts<'a>(file: &'a SafetensorsFile, weight: &str) -> Result<FourBitParts<'a>> {
    let path = file.path();
    let bad = |key: &str, d: String| ck(path, format!("tensor {key:?}: {d}"));
    let (_, js) = fourbit_json(file, weight)?;
    let w = file.require(weight)?;
    if w.dtype.size() == 0
        || !matches!(
            w.dtype,
            StDtype::U8 | StDtype::I8 | StDtype::F16 | StDtype::BF16 | StDtype::F32 | StDtype::F64
        )
    {
        return Err(bad(
            weight,
            format!("packed 4-bit data has dtype {}", w.dtype),
        ));
    }
    let qm = file.require(&sub(weight, QUANT_MAP))?;
    let quant_map = file.f32_values(qm)?;
    if quant_map.iter().map(|v| v.to_bits()).ne(js
        .quant_type
        .quant_map()
        .iter()
        .map(|v| v.to_bits()))
    {
        return Err(bad(
            &qm.name,
            format!(
                "is not the standard {} table; custom code maps are not supported",
                js.quant_type
            ),
        ));
    }
    let absmax = file.require(&sub(weight, ABSMAX))?;
    let corrupt = |d: String| bad(weight, Error::CorruptQuantState(d).to_string());
    if !BLOCKSIZES_4BIT.contains(&js.blocksize) {
        return Err(corrupt(format!(
            "blocksize {} is not one of {BLOCKSIZES_4BIT:?}",
            js.blocksize
        )));
    }
    let n: usize = js.shape.iter().product();
    if w.nbytes() != n.div_ceil(2) {
        return Err(corrupt(format!(
            "{} packed bytes for shape {:?} ({n} elements); expected {}",
            w.nbytes(),
            js.shape,
            n.div_ceil(2)
        )));
    }
    let nb = num_blocks(n, js.blocksize);
    let mut nested_absmax = None;
    match js.nested_offset {
        None => {
            if !absmax.dtype.is_float() {
                return Err(bad(
                    &absmax.name,
                    format!("dtype {} where a float type is required", absmax.dtype),
                ));
            }
        }
        Some(offset) => {
            if absmax.dtype != StDtype::U8 {
                return Err(bad(
                    &absmax.name,
                    format!(
                        "dtype {} with double quantization; expected U8",
                        absmax.dtype
                    ),
                ));
            }
            if !offset.is_finite() {
                return Err(corrupt(format!("nested offset {offset} is not finite")));
            }
            let nqm = file.require(&sub(weight, NESTED_QUANT_MAP))?;
            let nested_code = file.f32_values(nqm)?;
            if nested_code
                .iter()
                .map(|v| v.to_bits())
                .ne(dynamic_map(true).values.iter().map(|v| v.to_bits()))
            {
                return Err(bad(
                    &nqm.name,
                    "is not the signed dynamic 8-bit map; custom code maps are not supported"
                        .into(),
                ));
            }
            let na = file.require(&sub(weight, NESTED_ABSMAX))?;
            if !na.dtype.is_float() {
                return Err(bad(
                    &na.name,
                    format!("dtype {} where a float type is required", na.dtype),
                ));
            }
            let nn = num_blocks(nb, NESTED_BLOCKSIZE);
            if na.numel() != nn {
                return Err(corrupt(format!(
                    "{} nested absmax values; expected {nn}",
                    na.numel()
                )));
            }
            nested_absmax = Some(na);
        }
    }
    if absmax.numel() != nb {
        return Err(corrupt(format!(
            "{} absmax values for {n} elements in blocks of {}; expected {nb}",
            absmax.numel(),
            js.blocksize
        )));
    }
    Ok(FourBitParts {
        js,
        packed: w,
        absmax,
        nested_absmax,
    })
}

/// Reads a 4-bit weight back into a [`Quantized4bit`], cross-checking every key against the JSON.
pub fn load_fourbit(file: &SafetensorsFile, weight: &str) -> Result<Quantized4bit> {
    let parts = fourbit_parts(file, weight)?;
    let js = parts.js;
    // quant_storage other than uint8 reinterprets the same bytes.
    let packed = file.bytes(parts.packed)?;
    let absmax = match (js.nested_offset, parts.nested_absmax) {
        (Some(offset), Some(na)) => Absmax::Nested {
            absmax_q: file.bytes(parts.absmax)?,
            nested_absmax: file.widened_f32(na)?,
            nested_code: dynamic_map(true).values.to_vec(),
            offset,
        },
        _ => Absmax::Plain(file.widened_f32(parts.absmax)?),
    };
    let state = QuantState {
        quant_type: js.quant_type,
        blocksize: js.blocksize,
        dtype: js.dtype,
        shape: js.shape,
        absmax,
    };
    state
        .validate(packed.len())
        .map_err(|e| ck(file.path(), format!("tensor {weight:?}: {e}")))?;
    Ok(Quantized4bit { packed, state })
}

/// An int8 group's entries after the checks loading makes: 2-D I8 weight, one float SCB per row, row-major
/// `weight_format` if present.
fn int8_parts<'a>(
    file: &'a SafetensorsFile,
    weight: &str,
) -> Result<(&'a TensorEntry, &'a TensorEntry)> {
    let path = file.path();
    let w = file.require(weight)?;
    let scb_e = file.require(&module_key(weight, SCB))?;
    if w.dtype != StDtype::I8 {
        return Err(ck(
            path,
            format!("tensor {weight:?}: int8 weight has dtype {}", w.dtype),
        ));
    }
    let [rows, _] = dims2(&w.shape).ok_or_else(|| {
        ck(
            path,
            format!(
                "tensor {weight:?}: int8 weight must be 2-D, got {:?}",
                w.shape
            ),
        )
    })?;
    if !scb_e.dtype.is_float() {
        return Err(ck(
            path,
            format!(
                "tensor {:?}: dtype {} where a float type is required",
                scb_e.name, scb_e.dtype
            ),
        ));
    }
    if scb_e.numel() != rows {
        return Err(ck(
            path,
            format!(
                "tensor {:?}: {} values for {rows} rows",
                scb_e.name,
                scb_e.numel()
            ),
        ));
    }
    if let Some(wf) = file.get(&module_key(weight, WEIGHT_FORMAT)) {
        let b = if wf.nbytes() <= 16 {
            file.bytes(wf)?
        } else {
            vec![]
        };
        if wf.dtype != StDtype::U8 || b != [WEIGHT_FORMAT_ROW] {
            return Err(ck(
                path,
                format!(
                    "tensor {:?}: only the row-major weight format (U8 scalar 0) is supported, got {} {:?}",
                    wf.name, wf.dtype, b
                ),
            ));
        }
    }
    Ok((w, scb_e))
}

/// A ternary group's entries after the checks loading makes, and the unpacked shape `[4 * rows, cols]`.
fn ternary_parts<'a>(
    file: &'a SafetensorsFile,
    weight: &str,
) -> Result<(&'a TensorEntry, &'a TensorEntry, [usize; 2])> {
    let path = file.path();
    let w = file.require(weight)?;
    let s = file.require(&module_key(weight, WEIGHT_SCALE))?;
    if !s.dtype.is_float() {
        return Err(ck(
            path,
            format!("tensor {:?}: weight_scale must be a float", s.name),
        ));
    }
    if s.numel() != 1 {
        return Err(ck(
            path,
            format!(
                "tensor {:?}: weight_scale has {} values, expected 1",
                s.name,
                s.numel()
            ),
        ));
    }
    let [r, cols] = dims2(&w.shape).ok_or_else(|| {
        ck(
            path,
            format!(
                "tensor {weight:?}: packed ternary weight must be 2-D, got {:?}",
                w.shape
            ),
        )
    })?;
    let rows = r.checked_mul(4).ok_or_else(|| {
        ck(
            path,
            format!(
                "tensor {weight:?}: packed shape {:?} unpacks to {r} x 4 rows, which overflows",
                w.shape
            ),
        )
    })?;
    Ok((w, s, [rows, cols]))
}

/// Reads an LLM.int8() weight: int8 rows `[rows, cols]` and their absmax (`SCB`) widened to f32.
pub fn load_int8(file: &SafetensorsFile, weight: &str) -> Result<(Vec<i8>, Vec<f32>, [usize; 2])> {
    let (w, scb_e) = int8_parts(file, weight)?;
    let shape =
        dims2(&w.shape).ok_or_else(|| ck(file.path(), format!("tensor {weight:?} must be 2-D")))?;
    let TensorData::I8(rows) = file.tensor(w)?.into_parts().1 else {
        return Err(ck(file.path(), format!("tensor {weight:?} is not int8")));
    };
    Ok((rows, file.widened_f32(scb_e)?, shape))
}

/// Reads a ternary weight (transformers' BitNet packing) and its `weight_scale`.
pub fn load_ternary(file: &SafetensorsFile, weight: &str) -> Result<crate::ops::TernaryWeight> {
    let (w, s, [rows, cols]) = ternary_parts(file, weight)?;
    let scale = file.widened_f32(s)?[0];
    if !scale.is_finite() || scale <= 0.0 {
        return Err(ck(
            file.path(),
            format!(
                "tensor {:?}: weight_scale must be positive and finite, got {scale}",
                s.name
            ),
        ));
    }
    Ok(crate::ops::TernaryWeight {
        packed: file.bytes(w)?,
        weight_scale: scale,
        rows,
        cols,
    })
}

/// Every check loading a group makes that does not need its bulk data (`inspect` runs this): the 4-bit
/// JSON, code maps and lengths, int8 SCB and weight format, ternary packing and scale.
pub fn check(file: &SafetensorsFile, group: &Group) -> Result<()> {
    match group {
        Group::Plain(name) => file.require(name).map(drop),
        Group::FourBit { weight, .. } => fourbit_parts(file, weight).map(drop),
        Group::Int8 { weight, .. } => int8_parts(file, weight).map(drop),
        Group::Ternary { weight, .. } => ternary_parts(file, weight).map(drop),
    }
}

/// Dequantizes a group to floats (`dtype` or the weight's original dtype).
pub fn decode(
    dev: &Device,
    file: &SafetensorsFile,
    group: &Group,
    dtype: Option<DType>,
) -> Result<Tensor> {
    let path = file.path();
    let t = match group {
        Group::Plain(name) => return file.tensor(file.require(name)?),
        Group::FourBit { weight, .. } => dev.dequantize_4bit(&load_fourbit(file, weight)?)?,
        Group::Int8 { weight, .. } => {
            let (w, scb_e) = int8_parts(file, weight)?;
            let scb = file.widened_f32(scb_e)?;
            let q = file.tensor(w)?;
            let out = dev.int8_vectorwise_dequant(&q, &scb)?;
            let out_dtype = dtype.unwrap_or(DType::F16);
            return Tensor::from_floats(
                out.shape().to_vec(),
                FloatVec::from_f32(out.floats("decode")?.to_f32_vec(), out_dtype),
            );
        }
        Group::Ternary { weight, .. } => {
            let (w, s, [rows, cols]) = ternary_parts(file, weight)?;
            let scale_t = file.tensor(s)?;
            let sf = scale_t.floats("decode").map_err(|_| {
                ck(
                    path,
                    format!("tensor {:?}: weight_scale must be a float", s.name),
                )
            })?;
            let vals = ternary_values(&file.bytes(w)?, rows, cols, sf.get_f32(0));
            let out_dtype = dtype.unwrap_or(sf.dtype());
            return Tensor::from_floats(vec![rows, cols], FloatVec::from_f32(vals, out_dtype));
        }
    };
    Ok(match dtype {
        Some(d) if d != t.dtype() => Tensor::from_floats(
            t.shape().to_vec(),
            FloatVec::from_f32(t.floats("decode")?.to_f32_vec(), d),
        )?,
        _ => t,
    })
}

/// Shape and dtype of the original weight of a group, read from headers and the quant_state JSON only.
pub fn original_shape_dtype(
    file: &SafetensorsFile,
    group: &Group,
) -> Result<(Vec<usize>, StDtype)> {
    let get = |n: &str| -> Result<&TensorEntry> { file.require(n) };
    Ok(match group {
        Group::Plain(n) => {
            let e = get(n)?;
            (e.shape.clone(), e.dtype)
        }
        Group::FourBit { weight, .. } => {
            let js = fourbit_json(file, weight)?.1;
            (js.shape, StDtype::from_dtype(js.dtype))
        }
        Group::Int8 { weight, .. } => (get(weight)?.shape.clone(), StDtype::F16),
        Group::Ternary { weight, .. } => {
            let (_, s, shape) = ternary_parts(file, weight)?;
            (shape.to_vec(), s.dtype)
        }
    })
}

/// Block size of a 4-bit group (None for other groups).
pub fn blocksize(file: &SafetensorsFile, group: &Group) -> Result<Option<usize>> {
    Ok(match group {
        Group::FourBit { weight, .. } => Some(fourbit_json(file, weight)?.1.blocksize),
        _ => None,
    })
}
