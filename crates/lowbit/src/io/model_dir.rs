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
        let bins: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"))
            .collect();
        if let Some(bin) = bins.iter().min() {
            return Err(ck(
                path,
                format!(
                    "no {SINGLE_FILE} or {INDEX_FILE}, only PyTorch pickle weights ({bin}); {bin} is not \
                     supported (pickles can run code): convert it to safetensors first, e.g. \
                     `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`"
                ),
            ));
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

    /// Files of the input directory other than weights, index and config (tokenizer and the like), to be
    /// copied unchanged. Symbolic links to files are followed (the Hugging Face hub cache links every file of
    /// `snapshots/<hash>/` into `blobs/`). Hidden files, subdirectories and broken links are skipped and
    /// listed with the reason.
    pub fn other_files(&self) -> Result<OtherFiles> {
        let mut out = OtherFiles::default();
        let Some(dir) = &self.dir else {
            return Ok(out);
        };
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name == CONFIG || name == INDEX_FILE || name.ends_with(".safetensors") {
                continue;
            }
            let path = e.path();
            let reason = if name.starts_with('.') {
                Some("hidden")
            } else {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => None,
                    Ok(m) if m.is_dir() => Some("a directory"),
                    Ok(_) => Some("not a regular file"),
                    Err(_) => Some("a broken symbolic link"),
                }
            };
            match reason {
                None => out.copy.push(path),
                Some(r) => out.skipped.push((name, r)),
            }
        }
        out.copy.sort();
        out.skipped.sort();
        Ok(out)
    }
}

/// What [`ModelInput::other_files`] found.
#[derive(Clone, Debug, Default)]
pub struct OtherFiles {
    /// Files to copy (symbolic links resolved when copying).
    pub copy: Vec<PathBuf>,
    /// Entries left out, with the reason.
    pub skipped: Vec<(String, &'static str)>,
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

/// An output being built: a directory `OUT.tmp-<pid>-<n>` renamed to `OUT` by [`commit`](Self::commit), or,
/// for a single-file output, the file itself (the safetensors writer renames its own temporary). Dropping it
/// uncommitted removes everything written, including parent directories it created.
#[derive(Debug)]
pub struct Output {
    target: PathBuf,
    build: PathBuf,
    is_dir: bool,
    force: bool,
    committed: bool,
    /// Missing ancestors of `target` that `create` made, deepest last.
    created_parents: Vec<PathBuf>,
    /// Temporaries of dead processes removed (or found) next to the target.
    pub stale: super::temps::StaleTemps,
}

/// How many times [`Output::commit`] retries when another process keeps replacing the target.
const COMMIT_ATTEMPTS: usize = 64;

impl Output {
    /// Refuses an existing `target` unless `force`; refuses the input itself as target, a target inside the
    /// input, a target that contains the input, and (even with `force`) an existing target that is not a
    /// previous lowbit output.
    pub fn create(target: &Path, input: &Path, is_dir: bool, force: bool) -> Result<Output> {
        if target.as_os_str().is_empty() || target.file_name().is_none() {
            return Err(ck(target, "output path has no file name"));
        }
        if let (Some(a), Ok(b)) = (absolute(target), input.canonicalize()) {
            if a == b || a.starts_with(&b) && b.is_dir() {
                return Err(ck(
                    target,
                    "the output must not be the input or lie inside it",
                ));
            }
            if b.starts_with(&a) {
                return Err(ck(
                    target,
                    format!(
                        "the input {} lies inside the output; writing (or --force replacing) the output would \
                         delete the input. Choose an output path outside the input",
                        input.display()
                    ),
                ));
            }
        }
        if std::fs::symlink_metadata(target).is_ok() {
            if !force {
                return Err(ck(target, "already exists; pass --force to replace it"));
            }
            check_replaceable(target, is_dir)?;
        }
        let stale = super::temps::remove_stale(target);
        let mut created_parents = Vec::new();
        let build = if is_dir {
            if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                let mut p = Some(parent);
                while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                    created_parents.push(d.to_path_buf());
                    p = d.parent();
                }
                created_parents.reverse();
                if let Err(e) = std::fs::create_dir_all(parent) {
                    remove_empty_dirs(&created_parents);
                    return Err(Error::io(parent, e));
                }
            }
            let b = sibling(target, &format!("tmp-{}", super::temps::unique_tag()));
            let made = super::temps::create_registered(&b, || {
                std::fs::create_dir(&b).map_err(|e| Error::io(&b, e))
            });
            if let Err(e) = made {
                remove_empty_dirs(&created_parents);
                return Err(e);
            }
            b
        } else {
            target.to_path_buf()
        };
        Ok(Output {
            target: target.to_path_buf(),
            build,
            is_dir,
            force,
            committed: false,
            created_parents,
            stale,
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

    /// Moves the finished output into place (replacing an old one only if `force` was given). When other
    /// processes write the same target at the same time, each either lands its complete output or says that
    /// another process replaced the target; the target always holds one complete output.
    pub fn commit(mut self) -> Result<()> {
        if !self.is_dir {
            self.committed = true;
            return Ok(());
        }
        let mut olds = Vec::new();
        let result = self.commit_dir(&mut olds);
        for old in &olds {
            super::temps::remove_path(old);
            super::temps::unregister(old);
        }
        result?;
        super::temps::unregister(&self.build);
        self.committed = true;
        Ok(())
    }

    fn commit_dir(&self, olds: &mut Vec<PathBuf>) -> Result<()> {
        for _ in 0..COMMIT_ATTEMPTS {
            super::temps::check_interrupt(&self.target)?;
            let exists = std::fs::symlink_metadata(&self.target).is_ok();
            if exists {
                if !self.force {
                    return Err(ck(
                        &self.target,
                        "appeared while this run was writing (another process?); pass --force to replace it",
                    ));
                }
                check_replaceable(&self.target, true)?;
                let old = sibling(&self.target, &format!("old-{}", super::temps::unique_tag()));
                super::temps::register(&old);
                match std::fs::rename(&self.target, &old) {
                    Ok(()) => olds.push(old),
                    Err(e) => {
                        super::temps::unregister(&old);
                        // Another process moved it away first: try again.
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(Error::io(&self.target, e));
                        }
                    }
                }
            }
            match std::fs::rename(&self.build, &self.target) {
                Ok(()) => return Ok(()),
                // Another process put its output there in between: replace it in the next round.
                Err(e) if target_taken(&e) => continue,
                Err(e) => return Err(Error::io(&self.target, e)),
            }
        }
        Err(ck(
            &self.target,
            format!(
                "another process replaced it {COMMIT_ATTEMPTS} times while this run was moving its output into \
                 place; it holds that process's complete output, and this run's output was discarded"
            ),
        ))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            if self.is_dir {
                super::temps::remove_path(&self.build);
                super::temps::unregister(&self.build);
            }
            remove_empty_dirs(&self.created_parents);
        }
    }
}

/// Whether a failed `rename(build, target)` means that something now occupies `target`.
fn target_taken(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::DirectoryNotEmpty | K::AlreadyExists)
        || cfg!(windows) && e.kind() == K::PermissionDenied
}

/// Removes the directories in `dirs` (outermost first) that are empty, deepest first.
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// `--force` replaces only what lowbit itself writes: a safetensors file for a file output, a model
/// directory (only files, with `model.safetensors` or an index) or an empty directory for a directory output.
pub fn check_replaceable(target: &Path, is_dir: bool) -> Result<()> {
    let refuse = |why: String| {
        Err(ck(
            target,
            format!(
                "{why}, so it is not a previous lowbit output; --force only replaces those. Remove it yourself \
                 or choose another output path"
            ),
        ))
    };
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    // Gone meanwhile (another run moved it away): nothing left to protect.
    let meta = match std::fs::symlink_metadata(target) {
        Err(e) if gone(&e) => return Ok(()),
        r => r.map_err(|e| Error::io(target, e))?,
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link".into());
    }
    if !is_dir {
        if meta.is_dir() {
            return refuse(
                "is a directory (a single .safetensors input makes a single file)".into(),
            );
        }
        if super::SafetensorsFile::open(target).is_err() {
            return refuse("is not a readable safetensors file".into());
        }
        return Ok(());
    }
    if !meta.is_dir() {
        return refuse("is a file, not a model directory".into());
    }
    let mut empty = true;
    let mut has_weights = false;
    let entries = match std::fs::read_dir(target) {
        Err(e) if gone(&e) => return Ok(()),
        r => r.map_err(|e| Error::io(target, e))?,
    };
    for e in entries {
        let e = match e {
            Err(e) if gone(&e) => return Ok(()),
            r => r.map_err(|e| Error::io(target, e))?,
        };
        empty = false;
        let name = e.file_name().to_string_lossy().to_string();
        let ft = match e.file_type() {
            Err(err) if gone(&err) => continue,
            r => r.map_err(|err| Error::io(e.path(), err))?,
        };
        if ft.is_dir() {
            return refuse(format!("holds a subdirectory {name:?}"));
        }
        has_weights |= name == SINGLE_FILE || name == INDEX_FILE;
    }
    if !empty && !has_weights {
        return refuse(format!("holds files but no {SINGLE_FILE} or {INDEX_FILE}"));
    }
    Ok(())
}

fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.{tag}"))
}

/// Copies `files` into `dir` (same file names; symbolic links are followed) and returns the names copied.
/// Errors name the file that failed: the source when reading, the destination when writing.
pub fn copy_files(files: &[PathBuf], dir: &Path) -> Result<Vec<String>> {
    use std::io::{Read, Write};
    let mut names = Vec::new();
    for f in files {
        let name = f.file_name().expect("listed files have names");
        let to = dir.join(name);
        let mut src = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        let mut dst = std::fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(f, e)),
            };
            dst.write_all(&buf[..n]).map_err(|e| Error::io(&to, e))?;
        }
        dst.sync_all().map_err(|e| Error::io(&to, e))?;
        names.push(name.to_string_lossy().to_string());
    }
    Ok(names)
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
