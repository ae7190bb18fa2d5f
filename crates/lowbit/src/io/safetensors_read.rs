//! Reading safetensors files, with the header treated as untrusted input. Every inconsistency (header size,
//! JSON, duplicate names, dtype, shape, offsets, overlaps, gaps) is an [`Error::Checkpoint`] naming the file
//! and the tensor.
//!
//! Tensor data is read with positioned reads (`pread`), one tensor at a time, not through a memory map: a
//! mapped file that another process truncates kills the reader with SIGBUS, while a short read is an error
//! lowbit can report ("the file shrank while being read"). Streaming memory stays bounded by the largest
//! tensor, and the page cache is not counted against the process.

use super::StDtype;
use super::checkpoint_error as ck;
use crate::tensor::{FloatVec, Tensor, TensorData};
use crate::{Error, Result};
use half::{bf16, f16};
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
    parse_header_prefix(path, bytes, bytes.len() as u64)
}

/// [`parse_header`] from the first bytes of a file of `file_len` bytes: `prefix` must hold at least the
/// 8-byte length and the header it announces (when shorter, the header is reported as truncated).
pub fn parse_header_prefix(path: &Path, bytes: &[u8], file_len: u64) -> Result<Header> {
    let file_len = usize::try_from(file_len).map_err(|_| {
        ck(
            path,
            format!("file is {file_len} bytes, too large for this platform"),
        )
    })?;
    if file_len < 8 || bytes.len() < 8 {
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
    if 8 + n > file_len || 8 + n > bytes.len() {
        return Err(ck(
            path,
            format!("header length {n} runs past the end of the {file_len}-byte file (truncated?)"),
        ));
    }
    let text = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|e| ck(path, format!("header is not UTF-8: {e}")))?;
    let entries = parse_entries(text).map_err(|e| ck(path, format!("header {e}")))?;
    let data_len = file_len - 8 - n;
    let mut metadata = None;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (name, v) in &entries {
        if !seen.insert(name.as_str()) {
            return Err(ck(
                path,
                format!(
                    "tensor {name:?} appears twice in the header; every name must be unique (the file is corrupt)"
                ),
            ));
        }
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

/// The header's top-level entries in file order, duplicates kept (a JSON map would silently keep the last).
fn parse_entries(text: &str) -> std::result::Result<Vec<(String, serde_json::Value)>, String> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(e) = map.next_entry::<String, serde_json::Value>()? {
                v.push(e);
            }
            Ok(v)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let v = de.deserialize_map(Entries).map_err(|e| {
        if e.is_data() {
            "JSON is not an object".to_string()
        } else {
            format!("is not valid JSON: {e}")
        }
    })?;
    de.end().map_err(|e| format!("is not valid JSON: {e}"))?;
    Ok(v)
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

/// An open, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    file: std::fs::File,
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
        let mut prefix = vec![0u8; 8];
        read_exact_at(&file, &mut prefix, 0).map_err(|e| Error::io(path, e))?;
        let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
        if n <= MAX_HEADER_BYTES && 8 + n <= len {
            prefix.resize(8 + n as usize, 0);
            read_exact_at(&file, &mut prefix[8..], 8).map_err(|e| Error::io(path, e))?;
        }
        let header = parse_header_prefix(path, &prefix, len)?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
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

    /// The raw little-endian bytes of a tensor, read from the file. A file that shrank since it was opened
    /// (another process truncating it) is an error saying so.
    pub fn bytes(&self, t: &TensorEntry) -> Result<Vec<u8>> {
        let mut v = vec![0u8; t.range.len()];
        self.read_into(t, &mut v)?;
        Ok(v)
    }

    fn read_into(&self, t: &TensorEntry, buf: &mut [u8]) -> Result<()> {
        self.read_part_into(t, 0, buf)
    }

    /// Reads `buf.len()` bytes of tensor `t` starting `offset` bytes into its data (streamed tensors are
    /// read in parts). A range outside the tensor is an error.
    pub fn read_part_into(&self, t: &TensorEntry, offset: usize, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > t.nbytes())
        {
            return Err(ck(
                &self.path,
                format!(
                    "tensor {:?}: internal: part {offset}+{} is outside its {} bytes",
                    t.name,
                    buf.len(),
                    t.nbytes()
                ),
            ));
        }
        let at = (self.header.data_start + t.range.start + offset) as u64;
        read_exact_at(&self.file, buf, at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ck(
                    &self.path,
                    format!(
                        "tensor {:?}: the file ended before its data (bytes {}..{}); it shrank after it was \
                         opened (truncated or rewritten by another process?)",
                        t.name,
                        at,
                        at + buf.len() as u64
                    ),
                )
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// The tensor's bytes read straight into a vector of `T` (no second copy).
    fn read_vec<T: bytemuck::Pod>(&self, t: &TensorEntry) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); t.range.len() / std::mem::size_of::<T>()];
        self.read_into(t, bytemuck::cast_slice_mut::<T, u8>(&mut v))?;
        Ok(v)
    }

    /// A tensor copied into a lowbit [`Tensor`] (f32/f16/bf16/u8/i8/i32/i64 only).
    pub fn tensor(&self, t: &TensorEntry) -> Result<Tensor> {
        let data = match t.dtype {
            StDtype::F32 => TensorData::Float(FloatVec::F32(self.read_vec(t)?)),
            StDtype::F16 => TensorData::Float(FloatVec::F16(self.read_vec::<f16>(t)?)),
            StDtype::BF16 => TensorData::Float(FloatVec::BF16(self.read_vec::<bf16>(t)?)),
            StDtype::U8 => TensorData::U8(self.bytes(t)?),
            StDtype::I8 => TensorData::I8(self.read_vec(t)?),
            StDtype::I32 => TensorData::I32(self.read_vec(t)?),
            StDtype::I64 => TensorData::I64(self.read_vec(t)?),
            other => {
                return Err(ck(
                    &self.path,
                    format!("tensor {:?}: dtype {other} is not supported here", t.name),
                ));
            }
        };
        // The header check already matched the byte range to the shape; this keeps the path in any error.
        Tensor::new(t.shape.clone(), data)
            .map_err(|e| ck(&self.path, format!("tensor {:?}: {e}", t.name)))
    }

    /// A float tensor of any float dtype widened (exactly) to f32: block scales, which bitsandbytes' CPU
    /// backend saves in bfloat16 where its CUDA backend saves float32.
    pub fn widened_f32(&self, t: &TensorEntry) -> Result<Vec<f32>> {
        Ok(match t.dtype {
            StDtype::F32 => self.read_vec(t)?,
            StDtype::F16 => self
                .read_vec::<f16>(t)?
                .into_iter()
                .map(f32::from)
                .collect(),
            StDtype::BF16 => self
                .read_vec::<bf16>(t)?
                .into_iter()
                .map(f32::from)
                .collect(),
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
        self.read_vec(t)
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving a shared cursor.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut done, mut buf) = (0u64, buf);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset + done) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    done += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
