//! Reading safetensors files: memory-mapped, with the header treated as untrusted input. Every inconsistency
//! (header size, JSON, dtype, shape, offsets, overlaps, gaps) is an [`Error::Checkpoint`] naming the file and
//! the tensor.

use super::StDtype;
use super::checkpoint_error as ck;
use crate::tensor::{FloatVec, Tensor, TensorData};
use crate::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Largest header accepted (the limit of the reference safetensors implementation).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Most dimensions a tensor may declare.
const MAX_DIMS: usize = 64;

/// One tensor of a safetensors file, as its (validated) header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub range: Range<usize>,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.range.len()
    }
}

/// The parsed header: tensors in file order, and the optional `__metadata__` strings.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Offset of the data section (8 + header length).
    pub data_start: usize,
    pub tensors: Vec<TensorEntry>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Validates the header of a safetensors file whose full contents are `bytes` (only the header is read; the
/// data section is checked against the declared offsets). `path` is used in error messages.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let file_len = bytes.len();
    if file_len < 8 {
        return Err(ck(
            path,
            format!(
                "file is {file_len} bytes; a safetensors file starts with an 8-byte header length"
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(ck(
            path,
            format!(
                "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; not a safetensors file?"
            ),
        ));
    }
    let n = n as usize;
    if 8 + n > file_len {
        return Err(ck(
            path,
            format!("header length {n} runs past the end of the {file_len}-byte file (truncated?)"),
        ));
    }
    let text = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|e| ck(path, format!("header is not UTF-8: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ck(path, format!("header is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ck(path, "header JSON is not an object"))?;
    let data_len = file_len - 8 - n;
    let mut metadata = None;
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            metadata = Some(parse_metadata(path, v)?);
            continue;
        }
        tensors.push(parse_entry(path, name, v, data_len)?);
    }
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    let mut pos = 0usize;
    for t in &tensors {
        if t.range.start < pos {
            return Err(ck(
                path,
                format!(
                    "tensor {:?}: data_offsets [{}, {}] overlap the previous tensor (ends at {pos})",
                    t.name, t.range.start, t.range.end
                ),
            ));
        }
        if t.range.start > pos {
            return Err(ck(
                path,
                format!(
                    "tensor {:?}: data starts at {} but the previous tensor ends at {pos}; \
                     safetensors data must be contiguous",
                    t.name, t.range.start
                ),
            ));
        }
        pos = t.range.end;
    }
    if pos != data_len {
        return Err(ck(
            path,
            format!(
                "tensors cover {pos} bytes but the data section holds {data_len}; file is corrupt"
            ),
        ));
    }
    Ok(Header {
        data_start: 8 + n,
        tensors,
        metadata,
    })
}

fn parse_metadata(path: &Path, v: &serde_json::Value) -> Result<BTreeMap<String, String>> {
    let obj = v
        .as_object()
        .ok_or_else(|| ck(path, "__metadata__ is not an object"))?;
    obj.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(ck(
                path,
                format!("__metadata__ value for {k:?} is not a string"),
            )),
        })
        .collect()
}

fn parse_entry(
    path: &Path,
    name: &str,
    v: &serde_json::Value,
    data_len: usize,
) -> Result<TensorEntry> {
    let bad = |d: String| ck(path, format!("tensor {name:?}: {d}"));
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header entry is not an object".into()))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("missing or non-string \"dtype\"".into()))?;
    let dtype =
        StDtype::parse(dtype_name).ok_or_else(|| bad(format!("unknown dtype {dtype_name:?}")))?;
    let shape_v = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("missing or non-list \"shape\"".into()))?;
    if shape_v.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions (at most {MAX_DIMS})",
            shape_v.len()
        )));
    }
    let shape = shape_v
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let offsets = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("\"data_offsets\" is not a list of two integers".into()))?;
    let off = |i: usize| {
        offsets[i]
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| {
                bad(format!(
                    "data offset {} is not a non-negative integer",
                    offsets[i]
                ))
            })
    };
    let (start, end) = (off(0)?, off(1)?);
    if start > end {
        return Err(bad(format!("data_offsets [{start}, {end}] are reversed")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{start}, {end}] run past the {data_len}-byte data section (truncated file?)"
        )));
    }
    let nbytes = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if nbytes != end - start {
        return Err(bad(format!(
            "dtype {dtype} x shape {shape:?} needs {nbytes} bytes but data_offsets [{start}, {end}] hold {}",
            end - start
        )));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype,
        shape,
        range: start..end,
    })
}

/// An open, validated, memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(ck(
                path,
                format!(
                    "file is {len} bytes; a safetensors file starts with an 8-byte header length"
                ),
            ));
        }
        // SAFETY: the file is opened read-only; lowbit never writes through this mapping. A file truncated
        // by another process while mapped would fault, as with every mmap-based reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse_header(path, &mmap)?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            header,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.header.tensors
    }
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.header.metadata.as_ref()
    }
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }
    /// The entry named `name`, or an error naming the file and the missing tensor.
    pub fn require(&self, name: &str) -> Result<&TensorEntry> {
        self.get(name)
            .ok_or_else(|| ck(&self.path, format!("tensor {name:?} is missing")))
    }

    /// The raw little-endian bytes of a tensor (straight from the mapping).
    pub fn bytes(&self, t: &TensorEntry) -> &[u8] {
        let s = self.header.data_start;
        &self.mmap[s + t.range.start..s + t.range.end]
    }

    /// Tells the kernel the pages of `t` are no longer needed, so that streaming a large file through the
    /// mapping keeps resident memory bounded by the largest tensor instead of growing with the file.
    pub fn release(&self, t: &TensorEntry) {
        #[cfg(unix)]
        {
            let page = 4096;
            let s = self.header.data_start + t.range.start;
            let start = s.div_ceil(page) * page;
            let end = (self.header.data_start + t.range.end) / page * page;
            if end > start {
                // SAFETY: read-only file-backed private mapping; dropped pages are re-read from the file on
                // the next access, so no data the program can observe changes.
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// A tensor copied into a lowbit [`Tensor`] (f32/f16/bf16/u8/i8/i32/i64 only).
    pub fn tensor(&self, t: &TensorEntry) -> Result<Tensor> {
        let b = self.bytes(t);
        let data = match t.dtype {
            StDtype::F32 => TensorData::Float(FloatVec::F32(le_vec(b))),
            StDtype::F16 => TensorData::Float(FloatVec::F16(le_vec::<f16>(b))),
            StDtype::BF16 => TensorData::Float(FloatVec::BF16(le_vec::<bf16>(b))),
            StDtype::U8 => TensorData::U8(b.to_vec()),
            StDtype::I8 => TensorData::I8(le_vec(b)),
            StDtype::I32 => TensorData::I32(le_vec(b)),
            StDtype::I64 => TensorData::I64(le_vec(b)),
            other => {
                return Err(ck(
                    &self.path,
                    format!("tensor {:?}: dtype {other} is not supported here", t.name),
                ));
            }
        };
        Ok(Tensor {
            shape: t.shape.clone(),
            data,
        })
    }

    /// A float tensor of any float dtype widened (exactly) to f32: block scales, which bitsandbytes' CPU
    /// backend saves in bfloat16 where its CUDA backend saves float32.
    pub fn widened_f32(&self, t: &TensorEntry) -> Result<Vec<f32>> {
        let b = self.bytes(t);
        Ok(match t.dtype {
            StDtype::F32 => le_vec(b),
            StDtype::F16 => le_vec::<f16>(b).into_iter().map(f32::from).collect(),
            StDtype::BF16 => le_vec::<bf16>(b).into_iter().map(f32::from).collect(),
            other => {
                return Err(ck(
                    &self.path,
                    format!(
                        "tensor {:?}: dtype {other} where a float type is required",
                        t.name
                    ),
                ));
            }
        })
    }

    /// The tensor as f32 values, requiring dtype F32 (code maps).
    pub fn f32_values(&self, t: &TensorEntry) -> Result<Vec<f32>> {
        if t.dtype != StDtype::F32 {
            return Err(ck(
                &self.path,
                format!(
                    "tensor {:?}: dtype {} where F32 is required",
                    t.name, t.dtype
                ),
            ));
        }
        Ok(le_vec(self.bytes(t)))
    }
}

/// Copies little-endian bytes (any alignment) into a typed vector. lowbit targets little-endian hosts only.
pub(crate) fn le_vec<T: bytemuck::Pod>(b: &[u8]) -> Vec<T> {
    let mut v = vec![T::zeroed(); b.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(b);
    v
}
