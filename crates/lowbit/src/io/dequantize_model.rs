//! The reverse pipeline: a bitsandbytes / BitNet checkpoint (written by lowbit or by transformers) back to
//! plain float tensors, streaming one weight at a time. config.json loses its `quantization_config`.

use super::StDtype;
use super::layout::{self, Group};
use super::model_dir::{self, CONFIG, ModelInput, Output};
use super::safetensors_read::SafetensorsFile;
use super::safetensors_write::{PlannedTensor, StreamingWriter};
use crate::Result;
use crate::runtime::Device;
use crate::tensor::{DType, TensorData};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Totals of a dequantization run.
#[derive(Clone, Debug)]
pub struct DequantizeReport {
    pub tensors: usize,
    pub dequantized: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds: f64,
    pub output: PathBuf,
}

/// A validated dequantization run.
pub struct DequantizeJob {
    input: ModelInput,
    files: Vec<SafetensorsFile>,
    groups: Vec<Vec<Group>>,
    output: Output,
    dtype: Option<DType>,
}

impl DequantizeJob {
    /// `dtype`: output dtype of dequantized weights (default: each weight's original dtype; f16 for int8).
    pub fn prepare(
        input_path: &Path,
        output_path: &Path,
        dtype: Option<DType>,
        force: bool,
    ) -> Result<DequantizeJob> {
        let input = ModelInput::open(input_path)?;
        let files = input.open_shards()?;
        let groups = files
            .iter()
            .map(layout::groups)
            .collect::<Result<Vec<_>>>()?;
        let output = Output::create(output_path, input_path, input.dir.is_some(), force)?;
        Ok(DequantizeJob {
            input,
            files,
            groups,
            output,
            dtype,
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors())
            .map(|t| t.nbytes() as u64)
            .sum()
    }

    pub fn run(self, dev: &Device, progress: &mut dyn FnMut(u64)) -> Result<DequantizeReport> {
        let start = Instant::now();
        let mut weight_map = BTreeMap::new();
        let (mut total, mut bytes_in, mut count, mut deq) = (0u64, 0u64, 0usize, 0usize);
        for (i, (file, groups)) in self.files.iter().zip(&self.groups).enumerate() {
            let shard_name = self.input.shards[i].to_string_lossy().to_string();
            let out_path = match &self.input.dir {
                Some(_) => self.output.path().join(&self.input.shards[i]),
                None => self.output.path().to_path_buf(),
            };
            let mut planned = Vec::new();
            for g in groups {
                let (shape, orig) = layout::original_shape_dtype(file, g)?;
                let dtype = match (g, self.dtype) {
                    (Group::Plain(_), _) | (_, None) => orig,
                    (_, Some(d)) => StDtype::from_dtype(d),
                };
                planned.push(PlannedTensor::new(g.weight(), dtype, shape));
                weight_map.insert(g.weight().to_string(), shard_name.clone());
            }
            let metadata = file
                .metadata()
                .cloned()
                .unwrap_or_else(super::safetensors_write::pt_metadata);
            let mut writer = StreamingWriter::create(&out_path, planned, vec![], metadata)?;
            for g in groups {
                super::temps::check_interrupt(self.output.target())?;
                if let Group::Plain(name) = g {
                    let t = file.require(name)?;
                    writer.write(name, &file.bytes(t)?)?;
                } else {
                    let t = layout::decode(dev, file, g, self.dtype)?;
                    let bytes = match t.data() {
                        TensorData::Float(f) => f.to_le_bytes(),
                        _ => unreachable!("decode returns floats for quantized groups"),
                    };
                    writer.write(g.weight(), &bytes)?;
                    deq += 1;
                }
                count += 1;
                for k in g.keys() {
                    bytes_in += file.require(&k)?.nbytes() as u64;
                }
                progress(bytes_in);
            }
            total += writer.finish(vec![])?;
        }
        if self.input.dir.is_some() {
            let out = self.output.path();
            if self.input.indexed {
                model_dir::write_index(out, total, &weight_map)?;
            }
            if let Some(mut config) = self.input.config.clone() {
                config.remove("quantization_config");
                model_dir::write_json(&out.join(CONFIG), &Value::Object(config))?;
            }
            model_dir::copy_files(&self.input.other_files()?.copy, out)?;
        }
        let target = self.output.target().to_path_buf();
        super::temps::check_interrupt(&target)?;
        self.output.commit()?;
        Ok(DequantizeReport {
            tensors: count,
            dequantized: deq,
            bytes_in,
            bytes_out: total,
            seconds: start.elapsed().as_secs_f64(),
            output: target,
        })
    }
}
