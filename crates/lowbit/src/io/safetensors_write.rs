//! Streaming safetensors writer. The header is laid out up front from the tensors' dtypes and shapes, so
//! tensors are written one at a time and never held together in memory. Small "tail" tensors whose exact
//! length is only known at the end (the quant_state JSON) go after all others, into space the header reserved
//! for their maximum length; the header is padded with spaces, as the format allows. The file is written
//! under a temporary name, synced and renamed: a reader never sees a partial file.

use super::StDtype;
use super::checkpoint_error as ck;
use super::safetensors_read::MAX_HEADER_BYTES;
use super::temps;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A tensor whose dtype and shape (hence byte length) are known before its data.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    pub fn new(name: impl Into<String>, dtype: StDtype, shape: Vec<usize>) -> Self {
        PlannedTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// A U8 tensor written last whose length is at most `max_len`.
#[derive(Clone, Debug, PartialEq)]
pub struct TailTensor {
    pub name: String,
    pub max_len: usize,
}

/// Writes one safetensors file tensor by tensor.
pub struct StreamingWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    planned: Vec<PlannedTensor>,
    next: usize,
    /// Bytes of `planned[next]` already written by [`write_part`](Self::write_part).
    partial: usize,
    tails: Vec<TailTensor>,
    metadata: BTreeMap<String, String>,
    header_len: usize,
    data_len: usize,
}

impl StreamingWriter {
    /// Starts `path` (written as a hidden temporary beside it until [`finish`](Self::finish)).
    pub fn create(
        path: &Path,
        planned: Vec<PlannedTensor>,
        tails: Vec<TailTensor>,
        metadata: BTreeMap<String, String>,
    ) -> Result<StreamingWriter> {
        let mut names = std::collections::HashSet::new();
        for n in planned
            .iter()
            .map(|p| &p.name)
            .chain(tails.iter().map(|t| &t.name))
        {
            if !names.insert(n.as_str()) {
                return Err(ck(path, format!("tensor {n:?} would be written twice")));
            }
        }
        let header_len = check_header_size(path, &planned, &tails, &metadata)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| ck(path, "output path has no file name"))?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", temps::unique_tag()));
        let file =
            temps::create_registered(&tmp, || File::create(&tmp).map_err(|e| Error::io(&tmp, e)))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header; the real one is written by `finish`.
        out.write_all(&vec![b' '; 8 + header_len])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(StreamingWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            planned,
            next: 0,
            partial: 0,
            tails,
            metadata,
            header_len,
            data_len: 0,
        })
    }

    /// Name of the next planned tensor, if any.
    pub fn next_name(&self) -> Option<&str> {
        self.planned.get(self.next).map(|p| p.name.as_str())
    }

    /// Writes the next planned tensor; `bytes` must be its exact little-endian data.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let whole = self.planned.get(self.next).map(PlannedTensor::nbytes);
        if self.partial != 0 || whole.is_some_and(|n| n != bytes.len()) {
            let p = &self.planned[self.next];
            return Err(ck(
                &self.path,
                format!(
                    "internal: expected tensor {:?} ({} bytes), got {name:?} ({} bytes)",
                    p.name,
                    p.nbytes() - self.partial,
                    bytes.len()
                ),
            ));
        }
        self.write_part(name, bytes)
    }

    /// Writes the next `bytes` of the next planned tensor (a streamed tensor arrives in parts, in order);
    /// the tensor counts as written once its planned length is reached. A part running past that length is
    /// an error.
    pub fn write_part(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.planned.get(self.next).ok_or_else(|| {
            ck(
                &self.path,
                format!("tensor {name:?} was not planned for this file"),
            )
        })?;
        let total = p.nbytes();
        if p.name != name || self.partial + bytes.len() > total {
            return Err(ck(
                &self.path,
                format!(
                    "internal: expected tensor {:?} ({} of {total} bytes left), got {name:?} ({} bytes)",
                    p.name,
                    total - self.partial,
                    bytes.len()
                ),
            ));
        }
        let out = self.out.as_mut().expect("open until finish");
        out.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))?;
        self.data_len += bytes.len();
        self.partial += bytes.len();
        if self.partial == total {
            self.next += 1;
            self.partial = 0;
        }
        Ok(())
    }

    /// Writes the tail tensors, the header, syncs and renames into place. Returns the data section size
    /// (what `metadata.total_size` of an index counts).
    pub fn finish(mut self, tails: Vec<(String, Vec<u8>)>) -> Result<u64> {
        if self.next != self.planned.len() {
            return Err(ck(
                &self.path,
                format!(
                    "internal: {} of {} planned tensors written",
                    self.next,
                    self.planned.len()
                ),
            ));
        }
        let expected: Vec<&str> = self.tails.iter().map(|t| t.name.as_str()).collect();
        let got: Vec<&str> = tails.iter().map(|t| t.0.as_str()).collect();
        if expected != got {
            return Err(ck(
                &self.path,
                format!("internal: tails {got:?} != {expected:?}"),
            ));
        }
        let mut real = Vec::with_capacity(tails.len());
        for ((name, bytes), t) in tails.iter().zip(&self.tails) {
            if bytes.len() > t.max_len {
                return Err(ck(
                    &self.path,
                    format!(
                        "internal: tail {name:?} is {} bytes > {}",
                        bytes.len(),
                        t.max_len
                    ),
                ));
            }
            real.push((name.clone(), bytes.len()));
        }
        let mut out = self.out.take().expect("open until finish");
        let io = |e| Error::io(&self.tmp, e);
        for (_, bytes) in &tails {
            out.write_all(bytes).map_err(io)?;
            self.data_len += bytes.len();
        }
        let mut header = header_json(&self.planned, &real, &self.metadata).into_bytes();
        debug_assert!(header.len() <= self.header_len);
        header.resize(self.header_len, b' ');
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&(self.header_len as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        temps::unregister(&self.tmp);
        Ok(self.data_len as u64)
    }
}

impl Drop for StreamingWriter {
    fn drop(&mut self) {
        // Not finished (error or panic): leave nothing behind.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            temps::unregister(&self.tmp);
        }
    }
}

/// The padded header length of a file holding `planned` and `tails` (at their maximum length), or an error
/// when it exceeds the 100 MB limit that lowbit's reader and the safetensors library enforce: such a file
/// could be written but never read back.
pub fn check_header_size(
    path: &Path,
    planned: &[PlannedTensor],
    tails: &[TailTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<usize> {
    let max_tails: Vec<(String, usize)> =
        tails.iter().map(|t| (t.name.clone(), t.max_len)).collect();
    let header_len = header_json(planned, &max_tails, metadata).len().div_ceil(8) * 8;
    if header_len as u64 > MAX_HEADER_BYTES {
        return Err(ck(
            path,
            format!(
                "the header would be {header_len} bytes for {} tensors, over the {MAX_HEADER_BYTES}-byte limit \
                 that safetensors readers (lowbit's and the safetensors library) enforce, so the file could \
                 not be read back; nothing was written. Split the model into more shards (fewer tensors per \
                 file) or quantize fewer tensors (--exclude)",
                planned.len() + tails.len()
            ),
        ));
    }
    Ok(header_len)
}

/// The header JSON: planned tensors in order, then the tails, then `__metadata__`.
fn header_json(
    planned: &[PlannedTensor],
    tails: &[(String, usize)],
    metadata: &BTreeMap<String, String>,
) -> String {
    let mut s = String::from("{");
    let mut pos = 0usize;
    let mut entry = |s: &mut String, name: &str, dtype: StDtype, shape: &[usize], len: usize| {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        s.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}},",
            serde_json::to_string(name).expect("strings serialize"),
            dtype.name(),
            shape.join(","),
            pos,
            pos + len
        ));
        pos += len;
    };
    for p in planned {
        entry(&mut s, &p.name, p.dtype, &p.shape, p.nbytes());
    }
    for (name, len) in tails {
        entry(&mut s, name, StDtype::U8, &[*len], *len);
    }
    s.push_str("\"__metadata__\":");
    s.push_str(&serde_json::to_string(metadata).expect("strings serialize"));
    s.push('}');
    s
}

/// Writes a whole small safetensors file at once (tests, small outputs).
pub fn write_all(
    path: &Path,
    tensors: &[(PlannedTensor, Vec<u8>)],
    metadata: BTreeMap<String, String>,
) -> Result<u64> {
    let planned = tensors.iter().map(|t| t.0.clone()).collect();
    let mut w = StreamingWriter::create(path, planned, vec![], metadata)?;
    for (p, b) in tensors {
        w.write(&p.name, b)?;
    }
    w.finish(vec![])
}

/// Default `__metadata__` of a PyTorch checkpoint (what `save_pretrained` writes).
pub fn pt_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_string(), "pt".to_string())])
}
