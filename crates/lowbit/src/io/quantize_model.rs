//! The streaming quantization pipeline: for each shard, plan the output header from the input header, then
//! read, quantize and write one tensor at a time (input pages released after use), so peak memory is a
//! small multiple of the largest tensor whatever the model size.

use super::hf_config::quantization_config;
use super::layout::{self, QuantSpec};
use super::model_dir::{self, CONFIG, ModelInput, Output};
use super::safetensors_read::{SafetensorsFile, TensorEntry};
use super::safetensors_write::{PlannedTensor, StreamingWriter};
use super::{StDtype, checkpoint_error as ck};
use crate::runtime::Device;
use crate::tensor::DType;
use crate::{Error, Result};
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Module names transformers never quantizes by default: embeddings and the output head
/// (`get_keys_to_not_convert` keeps the last module, `lm_head`, and tied embeddings in full precision).
const DEFAULT_SKIP: &str = r"(?i)embed|(^|\.)(lm_head|wte|wpe|shared|embed_out)$";

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub spec: QuantSpec,
    /// `bnb_4bit_compute_dtype` written to config.json (transformers' default float32).
    pub compute_dtype: DType,
    /// Also quantize 2-D float tensors whose name matches (even if the defaults skip them).
    pub include: Option<String>,
    /// Never quantize tensors whose name matches.
    pub exclude: Option<String>,
    /// Replace an existing output.
    pub force: bool,
}

/// One tensor's outcome.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: StDtype,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `Some` for quantized tensors: `||W - dequant(Q(W))|| / ||W||`.
    pub rel_error: Option<f64>,
}

/// Totals of a run.
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    pub tensors: Vec<TensorReport>,
    pub quantized: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub mean_rel_error: f64,
    pub max_rel_error: f64,
    pub seconds: f64,
    pub shards: usize,
    pub output: PathBuf,
}

/// Tensor selection: transformers' defaults adjusted by `--include` / `--exclude`.
#[derive(Debug)]
pub struct Selector {
    default_skip: Regex,
    include: Option<Regex>,
    exclude: Option<Regex>,
}

impl Selector {
    pub fn new(include: Option<&str>, exclude: Option<&str>) -> Result<Selector> {
        let compile = |r: &str, what: &'static str| {
            Regex::new(r)
                .map_err(|e| Error::invalid(what, format!("bad regular expression {r:?}: {e}")))
        };
        Ok(Selector {
            default_skip: Regex::new(DEFAULT_SKIP).expect("valid constant regex"),
            include: include.map(|r| compile(r, "--include")).transpose()?,
            exclude: exclude.map(|r| compile(r, "--exclude")).transpose()?,
        })
    }

    /// A 2-D float `*.weight` (what an `nn.Linear` weight looks like in a state dict).
    pub fn is_linear_like(t: &TensorEntry) -> bool {
        t.name.ends_with(".weight") && t.shape.len() == 2 && t.dtype.is_float()
    }

    /// Whether transformers would quantize it by default.
    pub fn default_selected(&self, t: &TensorEntry) -> bool {
        Self::is_linear_like(t) && !self.default_skip.is_match(layout::module_of(&t.name))
    }

    pub fn selected(&self, t: &TensorEntry) -> bool {
        if self.exclude.as_ref().is_some_and(|r| r.is_match(&t.name)) {
            return false;
        }
        let included = self.include.as_ref().is_some_and(|r| r.is_match(&t.name));
        self.default_selected(t) || (included && t.shape.len() == 2 && t.dtype.is_float())
    }
}

/// A validated quantization run, ready to start (inputs opened, output reserved).
pub struct QuantizeJob {
    input: ModelInput,
    files: Vec<SafetensorsFile>,
    output: Output,
    opts: QuantizeOptions,
    selector: Selector,
    config: Option<serde_json::Map<String, Value>>,
}

impl QuantizeJob {
    /// Opens and validates `input`, checks the options, and reserves `output` (refusing an existing one
    /// without `force`). Nothing is written to `output`'s final name before [`run`](Self::run) succeeds.
    pub fn prepare(
        input_path: &Path,
        output_path: &Path,
        opts: QuantizeOptions,
    ) -> Result<QuantizeJob> {
        opts.spec.validate()?;
        if !opts.compute_dtype.is_float() {
            return Err(Error::invalid(
                "quantize",
                format!("compute dtype {} is not a float type", opts.compute_dtype),
            ));
        }
        let selector = Selector::new(opts.include.as_deref(), opts.exclude.as_deref())?;
        let input = ModelInput::open(input_path)?;
        let config = input.config.clone();
        if let Some(c) = &config
            && c.contains_key("quantization_config")
        {
            return Err(ck(
                &input_path.join(CONFIG),
                "the model is already quantized (config.json has quantization_config); dequantize it first",
            ));
        }
        let files = input.open_shards()?;
        let output = Output::create(output_path, input_path, input.dir.is_some(), opts.force)?;
        Ok(QuantizeJob {
            input,
            files,
            output,
            opts,
            selector,
            config,
        })
    }

    /// Bytes of tensor data that [`run`](Self::run) reads (for progress bars).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors())
            .map(|t| t.nbytes() as u64)
            .sum()
    }

    /// Runs the pipeline; `progress` gets the number of input bytes processed after each tensor. On error
    /// nothing is left at the output path.
    pub fn run(self, dev: &Device, progress: &mut dyn FnMut(u64)) -> Result<QuantizeReport> {
        let start = Instant::now();
        let spec = self.opts.spec;
        let mut reports = Vec::new();
        let mut weight_map = BTreeMap::new();
        let mut total_size = 0u64;
        let mut bytes_in = 0u64;
        let mut skipped_linear = Vec::new();
        let mut differs_from_default = false;
        for (i, file) in self.files.iter().enumerate() {
            let out_path = match &self.input.dir {
                Some(_) => self.output.path().join(&self.input.shards[i]),
                None => self.output.path().to_path_buf(),
            };
            let mut planned = Vec::new();
            let mut tails = Vec::new();
            for t in file.tensors() {
                let sel = self.selector.selected(t);
                differs_from_default |= sel != self.selector.default_selected(t);
                if Selector::is_linear_like(t) && !sel {
                    skipped_linear.push(layout::module_of(&t.name).to_string());
                }
                if sel {
                    let dtype = t.dtype.to_dtype().expect("float dtypes map");
                    let (p, tail) = layout::plan(&spec, &t.name, dtype, &t.shape)
                        .map_err(|e| ck(file.path(), e.to_string()))?;
                    planned.extend(p);
                    tails.extend(tail);
                } else {
                    planned.push(PlannedTensor::new(&t.name, t.dtype, t.shape.clone()));
                }
            }
            for p in &planned {
                weight_map.insert(
                    p.name.clone(),
                    self.input.shards[i].to_string_lossy().to_string(),
                );
            }
            for t in &tails {
                weight_map.insert(
                    t.name.clone(),
                    self.input.shards[i].to_string_lossy().to_string(),
                );
            }
            let metadata = file
                .metadata()
                .cloned()
                .unwrap_or_else(super::safetensors_write::pt_metadata);
            let mut writer = StreamingWriter::create(&out_path, planned, tails, metadata)?;
            let mut tail_bytes = Vec::new();
            for t in file.tensors() {
                let before = bytes_in;
                if self.selector.selected(t) {
                    let w = file.tensor(t)?;
                    let enc = layout::encode(dev, &spec, &t.name, &w).map_err(|e| match e {
                        Error::Checkpoint { .. } => e,
                        other => ck(file.path(), format!("tensor {:?}: {other}", t.name)),
                    })?;
                    drop(w);
                    let mut out_bytes = 0u64;
                    for (name, bytes) in &enc.tensors {
                        writer.write(name, bytes)?;
                        out_bytes += bytes.len() as u64;
                    }
                    if let Some(tail) = enc.tail {
                        out_bytes += tail.1.len() as u64;
                        tail_bytes.push(tail);
                    }
                    reports.push(TensorReport {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        dtype: t.dtype,
                        bytes_in: t.nbytes() as u64,
                        bytes_out: out_bytes,
                        rel_error: Some(enc.rel_error),
                    });
                } else {
                    writer.write(&t.name, file.bytes(t))?;
                    reports.push(TensorReport {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        dtype: t.dtype,
                        bytes_in: t.nbytes() as u64,
                        bytes_out: t.nbytes() as u64,
                        rel_error: None,
                    });
                }
                file.release(t);
                bytes_in = before + t.nbytes() as u64;
                progress(bytes_in);
            }
            total_size += writer.finish(tail_bytes)?;
        }
        if self.input.dir.is_some() {
            let out = self.output.path();
            if self.input.indexed {
                model_dir::write_index(out, total_size, &weight_map)?;
            }
            if let Some(mut config) = self.config.clone() {
                skipped_linear.sort();
                let skip = differs_from_default.then_some(skipped_linear);
                config.insert(
                    "quantization_config".into(),
                    quantization_config(&spec, self.opts.compute_dtype, skip),
                );
                model_dir::write_json(&out.join(CONFIG), &Value::Object(config))?;
            }
            model_dir::copy_files(&self.input.other_files()?, out)?;
        }
        let target = self.output.target().to_path_buf();
        self.output.commit()?;
        let errs: Vec<f64> = reports.iter().filter_map(|r| r.rel_error).collect();
        let bytes_out = reports.iter().map(|r| r.bytes_out).sum();
        Ok(QuantizeReport {
            quantized: errs.len(),
            mean_rel_error: if errs.is_empty() {
                0.0
            } else {
                errs.iter().sum::<f64>() / errs.len() as f64
            },
            max_rel_error: errs.iter().cloned().fold(0.0, f64::max),
            tensors: reports,
            bytes_in,
            bytes_out,
            seconds: start.elapsed().as_secs_f64(),
            shards: self.files.len(),
            output: target,
        })
    }
}
