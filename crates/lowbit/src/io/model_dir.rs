//! Hugging Face model directories: `config.json`, one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`, and other files (tokenizer, generation config) copied as they are.
//! Outputs are built under a temporary name and renamed into place only when complete.

use super::checkpoint_error as ck;
use super::safetensors_read::SafetensorsFile;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest config.json or index.json accepted.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// An input checkpoint: a single safetensors file, or a model directory.
#[derive(Debug)]
pub struct ModelInput {
    /// The directory, or None for a bare `.safetensors` file.
    pub dir: Option<PathBuf>,
    /// Shard file names (relative to `dir`) or the bare file's path, in order.
    pub shards: Vec<PathBuf>,
    /// True when the input had an index (the output keeps it).
    pub indexed: bool,
    /// The parsed `config.json`, if present.
    pub config: Option<Map<String, Value>>,
    weight_map: Option<BTreeMap<String, String>>,
}

/// Reads an untrusted JSON file with a size cap; must be an object.
pub fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_JSON_BYTES {
        return Err(ck(
            path,
            format!(
                "{} bytes; refusing JSON files over {MAX_JSON_BYTES} bytes",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json_object(path, &bytes)
}

pub fn parse_json_object(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ck(path, "JSON is not an object")),
        Err(e) => Err(ck(path, format!("invalid JSON: {e}"))),
    }
}

/// Parses an index's `weight_map`: tensor name -> shard file name (a plain file name, never a path).
pub fn parse_index(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let obj = parse_json_object(path, bytes)?;
    let wm = obj
        .get("weight_map")
        .and_then(|w| w.as_object())
        .ok_or_else(|| ck(path, "\"weight_map\" is missing or not an object"))?;
    let mut out = BTreeMap::new();
    for (tensor, file) in wm {
        let f = file.as_str().ok_or_else(|| {
            ck(
                path,
                format!("tensor {tensor:?}: shard name is not a string"),
            )
        })?;
        if !is_plain_file_name(f) || !f.ends_with(".safetensors") {
            return Err(ck(
                path,
                format!(
                    "tensor {tensor:?}: shard {f:?} is not a plain .safetensors file name in the model directory"
                ),
            ));
        }
        out.insert(tensor.clone(), f.to_string());
    }
    if out.is_empty() {
        return Err(ck(path, "\"weight_map\" is empty"));
    }
    Ok(out)
}

fn is_plain_file_name(f: &str) -> bool {
    !f.is_empty()
        && f != "."
        && f != ".."
        && !f.contains(['/', '\\', '\0'])
        && Path::new(f).file_name().is_some_and(|n| n == f)
}

impl ModelInput {
    pub fn open(path: &Path) -> Result<ModelInput> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_file() {
            return Ok(ModelInput {
                dir: None,
                shards: vec![path.to_path_buf()],
                indexed: false,
                config: None,
                weight_map: None,
            });
        }
        let config_path = path.join(CONFIG);
        let config = if config_path.is_file() {
            Some(read_json_object(&config_path)?)
        } else {
            None
        };
        let index_path = path.join(INDEX_FILE);
        if index_path.is_file() {
            let m = std::fs::metadata(&index_path).map_err(|e| Error::io(&index_path, e))?;
            if m.len() > MAX_JSON_BYTES {
                return Err(ck(
                    &index_path,
                    format!("{} bytes; refusing JSON over {MAX_JSON_BYTES}", m.len()),
                ));
            }
            let bytes = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let wm = parse_index(&index_path, &bytes)?;
            let mut shards: Vec<PathBuf> = wm.values().map(PathBuf::from).collect();
            shards.sort();
            shards.dedup();
            for s in &shards {
                if !path.join(s).is_file() {
                    return Err(ck(
                        &index_path,
                        format!("shard {s:?} listed in weight_map does not exist"),
                    ));
                }
            }
            return Ok(ModelInput {
                dir: Some(path.to_path_buf()),
                shards,
                indexed: true,
                config,
                weight_map: Some(wm),
            });
        }
        if path.join(SINGLE_FILE).is_file() {
            return Ok(ModelInput {
                dir: Some(path.to_path_buf()),
                shards: vec![PathBuf::from(SINGLE_FILE)],
                indexed: false,
                config,
                weight_map: None,
            });
        }
        Err(ck(
            path,
            format!(
                "no {SINGLE_FILE} or {INDEX_FILE} in this directory; pass a model directory or a .safetensors file"
            ),
        ))
    }

    /// Path of shard `i` on disk.
    pub fn shard_path(&self, i: usize) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(&self.shards[i]),
            None => self.shards[i].clone(),
        }
    }

    /// Opens every shard and checks the index against their headers: each listed tensor is in its shard,
    /// each tensor of a shard is listed for that shard, and no name appears twice.
    pub fn open_shards(&self) -> Result<Vec<SafetensorsFile>> {
        let files: Vec<SafetensorsFile> = (0..self.shards.len())
            .map(|i| SafetensorsFile::open(&self.shard_path(i)))
            .collect::<Result<_>>()?;
        let mut seen = std::collections::HashSet::new();
        for f in &files {
            for t in f.tensors() {
                if !seen.insert(t.name.clone()) {
                    return Err(ck(
                        f.path(),
                        format!("tensor {:?} appears in more than one shard", t.name),
                    ));
                }
            }
        }
        if let (Some(wm), Some(dir)) = (&self.weight_map, &self.dir) {
            let index_path = dir.join(INDEX_FILE);
            for (tensor, shard) in wm {
                let i = self
                    .shards
                    .iter()
                    .position(|s| s == Path::new(shard))
                    .expect("shards come from the map");
                if files[i].get(tensor).is_none() {
                    return Err(ck(
                        &index_path,
                        format!("tensor {tensor:?} is listed in {shard} but that file lacks it"),
                    ));
                }
            }
            for (f, shard) in files.iter().zip(&self.shards) {
                for t in f.tensors() {
                    if wm.get(&t.name).map(Path::new) != Some(shard.as_path()) {
                        return Err(ck(
                            &index_path,
                            format!(
                                "tensor {:?} of {} is not listed for that shard in weight_map",
                                t.name,
                                shard.display()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(files)
    }

    /// Regular files of the input directory other than weights, index and config (tokenizer and the like),
    /// to be copied unchanged. Hidden files and subdirectories are skipped.
    pub fn other_files(&self) -> Result<Vec<PathBuf>> {
        let Some(dir) = &self.dir else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            let is_file = e
                .file_type()
                .map_err(|err| Error::io(e.path(), err))?
                .is_file();
            let skip = !is_file
                || name.starts_with('.')
                || name == CONFIG
                || name == INDEX_FILE
                || name.ends_with(".safetensors");
            if !skip {
                out.push(e.path());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes `model.safetensors.index.json` as transformers does (`metadata.total_size`, sorted `weight_map`).
pub fn write_index(
    dir: &Path,
    total_size: u64,
    weight_map: &BTreeMap<String, String>,
) -> Result<()> {
    let v = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    write_json(
        &dir.join(INDEX_FILE),
        &Value::Object(v.as_object().expect("object").clone()),
    )
}

/// Writes JSON with two-space indentation and a final newline (transformers' layout; keys sorted).
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// An output being built: a directory `OUT.tmp-<pid>` renamed to `OUT` by [`commit`](Self::commit), or, for
/// a single-file output, the file itself (the safetensors writer renames its own temporary). Dropping it
/// uncommitted removes everything written.
#[derive(Debug)]
pub struct Output {
    target: PathBuf,
    build: PathBuf,
    is_dir: bool,
    force: bool,
    committed: bool,
}

impl Output {
    /// Refuses an existing `target` unless `force`, and the input itself as target.
    pub fn create(target: &Path, input: &Path, is_dir: bool, force: bool) -> Result<Output> {
        if let (Some(a), Ok(b)) = (absolute(target), input.canonicalize())
            && (a == b || a.starts_with(&b) && b.is_dir())
        {
            return Err(ck(
                target,
                "the output must not be the input or lie inside it",
            ));
        }
        if target.exists() && !force {
            return Err(ck(target, "already exists; pass --force to replace it"));
        }
        if target.as_os_str().is_empty() || target.file_name().is_none() {
            return Err(ck(target, "output path has no file name"));
        }
        let build = if is_dir {
            let b = sibling(target, &format!("tmp-{}", std::process::id()));
            if b.exists() {
                std::fs::remove_dir_all(&b).map_err(|e| Error::io(&b, e))?;
            }
            std::fs::create_dir_all(&b).map_err(|e| Error::io(&b, e))?;
            b
        } else {
            if target.is_dir() {
                return Err(ck(
                    target,
                    "is a directory; a single .safetensors input makes a single file",
                ));
            }
            target.to_path_buf()
        };
        Ok(Output {
            target: target.to_path_buf(),
            build,
            is_dir,
            force,
            committed: false,
        })
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where to write: the temporary directory, or the final file path.
    pub fn path(&self) -> &Path {
        &self.build
    }

    /// Moves the finished output into place (replacing an old one only if `force` was given).
    pub fn commit(mut self) -> Result<()> {
        if self.is_dir {
            let old = sibling(&self.target, &format!("old-{}", std::process::id()));
            let had_old = self.target.exists();
            if had_old {
                if !self.force {
                    return Err(ck(
                        &self.target,
                        "appeared while writing; pass --force to replace it",
                    ));
                }
                std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            }
            if let Err(e) = std::fs::rename(&self.build, &self.target) {
                if had_old {
                    let _ = std::fs::rename(&old, &self.target);
                }
                return Err(Error::io(&self.target, e));
            }
            if had_old {
                remove_any(&old);
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed && self.is_dir {
            let _ = std::fs::remove_dir_all(&self.build);
        }
    }
}

fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.{tag}"))
}

fn remove_any(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Copies `files` into `dir` (same file names).
pub fn copy_files(files: &[PathBuf], dir: &Path) -> Result<()> {
    for f in files {
        let to = dir.join(f.file_name().expect("listed files have names"));
        std::fs::copy(f, &to).map_err(|e| Error::io(f, e))?;
    }
    Ok(())
}

/// `p` with its parent directory resolved (the file itself need not exist yet).
fn absolute(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(x) if !x.as_os_str().is_empty() => x.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(p.file_name()?))
}
