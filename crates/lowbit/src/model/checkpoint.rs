//! A model's weights by name across its shards: plain float tensors and quantized groups (bitsandbytes 4-bit
//! and 8-bit, BitNet ternary) in the layouts `lowbit quantize` and transformers write.

use crate::io::layout::{self, Group};
use crate::io::model_dir::ModelInput;
use crate::io::safetensors_read::SafetensorsFile;
use crate::ops::{Quantized4bit, TernaryWeight};
use crate::tensor::{FloatVec, Tensor};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One stored weight, as the checkpoint holds it.
pub enum StoredWeight {
    /// A float weight in the checkpoint's own dtype (f32, f16 or bf16).
    Float(Tensor),
    FourBit(Quantized4bit),
    /// LLM.int8 rows `[rows, cols]` and their absmax (SCB).
    Int8 {
        weight: Vec<i8>,
        scb: Vec<f32>,
        rows: usize,
        cols: usize,
    },
    Ternary(TernaryWeight),
}

/// The open shards of a checkpoint and where each logical tensor lives.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Logical tensor name (a quantized group's weight name) -> (shard, group).
    groups: HashMap<String, (usize, Group)>,
}

impl Checkpoint {
    /// Opens a model directory (or one `.safetensors` file) and indexes its tensors.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let input = ModelInput::open(path)?;
        let files = input.open_shards()?;
        let mut groups = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for g in layout::groups(f)? {
                groups.insert(g.weight().to_string(), (i, g));
            }
        }
        Ok(Checkpoint {
            dir: input.dir.unwrap_or_else(|| path.to_path_buf()),
            files,
            groups,
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// Every logical tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    fn missing(&self, name: &str) -> Error {
        Error::Checkpoint {
            path: self.dir.clone(),
            detail: format!("tensor {name:?} is missing from the checkpoint"),
        }
    }

    /// A weight as stored (quantized groups loaded with every cross-check `dequantize` makes).
    pub fn weight(&self, name: &str) -> Result<StoredWeight> {
        let (i, group) = self.groups.get(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[*i];
        Ok(match group {
            Group::Plain(n) => StoredWeight::Float(self.stored_float(file, n)?),
            Group::FourBit { weight, .. } => {
                StoredWeight::FourBit(layout::load_fourbit(file, weight)?)
            }
            Group::Ternary { weight, .. } => {
                StoredWeight::Ternary(layout::load_ternary(file, weight)?)
            }
            Group::Int8 { weight, .. } => {
                let (weight, scb, [rows, cols]) = layout::load_int8(file, weight)?;
                StoredWeight::Int8 {
                    weight,
                    scb,
                    rows,
                    cols,
                }
            }
        })
    }

    /// A plain float tensor, widened to f32 (norms, biases: small tensors the kernels read as f32).
    pub fn float(&self, name: &str) -> Result<Tensor> {
        let (i, n) = self.plain(name)?;
        let file = &self.files[i];
        let entry = file.require(n)?;
        Tensor::from_floats(entry.shape.clone(), FloatVec::F32(file.widened_f32(entry)?))
    }

    /// A plain float tensor in its stored dtype (f32, f16 or bf16): weights the kernels read as they are.
    pub fn float_stored(&self, name: &str) -> Result<Tensor> {
        let (i, n) = self.plain(name)?;
        self.stored_float(&self.files[i], n)
    }

    /// The shard and stored name of a plain (unquantized) tensor.
    fn plain(&self, name: &str) -> Result<(usize, &str)> {
        match self.groups.get(name) {
            Some((i, Group::Plain(n))) => Ok((*i, n.as_str())),
            Some(_) => Err(Error::Checkpoint {
                path: self.dir.clone(),
                detail: format!("tensor {name:?} is quantized where a float tensor is expected"),
            }),
            None => Err(self.missing(name)),
        }
    }

    /// A float tensor of any float dtype, kept in that dtype.
    fn stored_float(&self, file: &SafetensorsFile, name: &str) -> Result<Tensor> {
        let entry = file.require(name)?;
        let t = file.tensor(entry)?;
        if !t.dtype().is_float() {
            return Err(Error::Checkpoint {
                path: self.dir.clone(),
                detail: format!(
                    "tensor {name:?} has dtype {} where a float tensor is expected",
                    t.dtype()
                ),
            });
        }
        Ok(t)
    }
}
