//! Quantizing a checkpoint: validate the inputs and options, plan every output header from the input
//! headers (before anything is written), run the streaming pipeline (`quantize_stream`), then write the
//! index and config.json, copy the other files and commit the output atomically.

use super::hf_config::quantization_config;
use super::layout::{self, QuantFormat, QuantSpec};
use super::model_dir::{self, CONFIG, ModelInput, Output};
use super::quantize_stream::{self, ShardJob, Written};
use super::safetensors_read::{SafetensorsFile, TensorEntry};
use super::safetensors_write::{PlannedTensor, StreamingWriter, TailTensor, check_header_size};
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
    /// Replace an existing output (only ever a previous lowbit output; see `model_dir::check_replaceable`).
    pub force: bool,
    /// Allow `--format ternary` on a model not trained for BitNet b1.58 (post-training ternarization,
    /// which ruins ordinary models; refused without this).
    pub allow_ptq_ternary: bool,
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
    /// Bytes of data the pipeline allowed in flight at once (see `quantize_stream`); the tensor-at-a-time
    /// path reports its largest tensor.
    pub memory_budget: u64,
    pub shards: usize,
    pub output: PathBuf,
    /// Other files of the model directory copied unchanged (tokenizer, generation config, ...).
    pub copied: Vec<String>,
    /// Entries of the model directory left out, with the reason (hidden, directory, broken link).
    pub skipped_files: Vec<(String, &'static str)>,
    /// The modules written to config.json as not quantized (`None`: transformers' defaults apply).
    pub skip_modules: Option<Vec<String>>,
    /// Warnings about the run (see [`QuantizeJob::warnings`]).
    pub warnings: Vec<String>,
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

/// Whether `config.json` describes a model trained for BitNet b1.58 (`model_type` or `architectures`
/// naming BitNet). Only such models survive ternarization.
fn is_bitnet_model(config: Option<&serde_json::Map<String, Value>>) -> bool {
    let Some(c) = config else { return false };
    let mentions = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.to_ascii_lowercase().contains("bitnet"))
    };
    c.get("model_type").is_some_and(mentions)
        || c.get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(mentions))
}

/// Mean and maximum of the per-tensor relative errors. A NaN anywhere makes both NaN (never hidden).
pub fn summarize_errors(errs: &[f64]) -> (f64, f64) {
    if errs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    let max = errs.iter().fold(0.0f64, |m, &e| {
        if m.is_nan() || e.is_nan() {
            f64::NAN
        } else {
            m.max(e)
        }
    });
    (mean, max)
}

/// The output layout of one shard, planned from its input header before anything is written.
struct ShardPlan {
    out_path_rel: Option<PathBuf>,
    planned: Vec<PlannedTensor>,
    tails: Vec<TailTensor>,
    metadata: BTreeMap<String, String>,
    selected: Vec<bool>,
}

/// A validated quantization run, ready to start (inputs opened, every output header planned and checked,
/// output reserved).
pub struct QuantizeJob {
    input: ModelInput,
    files: Vec<SafetensorsFile>,
    plans: Vec<ShardPlan>,
    output: Output,
    opts: QuantizeOptions,
    config: Option<serde_json::Map<String, Value>>,
    skip_modules: Option<Vec<String>>,
    warnings: Vec<String>,
}

impl QuantizeJob {
    /// Opens and validates `input`, checks the options, plans every output header (refusing one the
    /// safetensors readers could not read back), and reserves `output` (refusing an existing one without
    /// `force`). Nothing is written to `output`'s final name before [`run`](Self::run) succeeds.
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
        let mut warnings = Vec::new();
        if opts.spec.format == QuantFormat::Ternary && !is_bitnet_model(config.as_ref()) {
            let what = match config.as_ref().and_then(|c| c.get("model_type")) {
                Some(Value::String(t)) => format!("config.json says model_type {t:?}"),
                _ => "no config.json names a BitNet model".to_string(),
            };
            let why = format!(
                "--format ternary on a model not trained for BitNet b1.58 ({what}): post-training \
                 ternarization is not BitNet and destroys an ordinary model (perplexity rises by orders of \
                 magnitude)"
            );
            if !opts.allow_ptq_ternary {
                return Err(Error::invalid(
                    "quantize",
                    format!(
                        "{why}. Quantize a BitNet-trained checkpoint, use nf4/fp4/int8, or pass \
                         --allow-ptq-ternary to ternarize it anyway"
                    ),
                ));
            }
            tracing::warn!("{why}");
            warnings.push(why);
        }
        let files = input.open_shards()?;
        let spec = opts.spec;
        let mut plans = Vec::with_capacity(files.len());
        let mut skipped_linear = Vec::new();
        let mut quantized_modules = std::collections::HashSet::new();
        let mut differs_from_default = false;
        for (i, file) in files.iter().enumerate() {
            let (mut planned, mut tails, mut selected) = (Vec::new(), Vec::new(), Vec::new());
            for t in file.tensors() {
                let sel = selector.selected(t);
                differs_from_default |= sel != selector.default_selected(t);
                if sel {
                    quantized_modules.insert(layout::module_of(&t.name).to_string());
                    let dtype = t.dtype.to_dtype().expect("float dtypes map");
                    let (p, tail) = layout::plan(&spec, &t.name, dtype, &t.shape)
                        .map_err(|e| ck(file.path(), e.to_string()))?;
                    planned.extend(p);
                    tails.extend(tail);
                } else {
                    if Selector::is_linear_like(t) {
                        skipped_linear.push(layout::module_of(&t.name).to_string());
                    }
                    planned.push(PlannedTensor::new(&t.name, t.dtype, t.shape.clone()));
                }
                selected.push(sel);
            }
            let metadata = file
                .metadata()
                .cloned()
                .unwrap_or_else(super::safetensors_write::pt_metadata);
            let out_path_rel = input.dir.as_ref().map(|_| input.shards[i].clone());
            let shown = match &out_path_rel {
                Some(r) => output_path.join(r),
                None => output_path.to_path_buf(),
            };
            check_header_size(&shown, &planned, &tails, &metadata)?;
            plans.push(ShardPlan {
                out_path_rel,
                planned,
                tails,
                metadata,
                selected,
            });
        }
        if quantized_modules.is_empty() {
            let n: usize = files.iter().map(|f| f.tensors().len()).sum();
            return Err(Error::invalid(
                "quantize",
                format!(
                    "no tensor of the {n} in {} is selected for quantization (the defaults take 2-D float \
                     *.weight tensors except embeddings and lm_head; --include adds, --exclude removes), so the \
                     output would not be a quantized model; nothing was written. Check --include / --exclude",
                    input_path.display()
                ),
            ));
        }
        // transformers replaces every nn.Linear not named in the skip list, including a tied `lm_head` that
        // has no tensor of its own: name it whenever a list is written and it was not quantized.
        let skip_modules = differs_from_default.then(|| {
            if !quantized_modules.contains("lm_head") {
                skipped_linear.push("lm_head".to_string());
            }
            skipped_linear.sort();
            skipped_linear.dedup();
            skipped_linear
        });
        let output = Output::create(output_path, input_path, input.dir.is_some(), opts.force)?;
        Ok(QuantizeJob {
            input,
            files,
            plans,
            output,
            opts,
            config,
            skip_modules,
            warnings,
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

    /// Warnings about the run (also logged): e.g. post-training ternarization of a non-BitNet model.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Temporaries of earlier, dead runs that `prepare` removed (or found still in use) next to the output.
    pub fn stale_temporaries(&self) -> &super::temps::StaleTemps {
        &self.output.stale
    }

    /// Runs the streaming pipeline (`quantize_stream`: reading, quantizing, error statistics and writing
    /// overlap on every core, memory bounded by a budget); `progress` gets the number of input bytes
    /// processed. On error (or interrupt, see [`super::temps`]) nothing is left at the output path.
    pub fn run(self, dev: &Device, progress: &mut dyn FnMut(u64)) -> Result<QuantizeReport> {
        self.run_with(dev, progress, true)
    }

    /// The tensor-at-a-time reference path: each tensor read whole, encoded with `layout::encode` and
    /// written before the next. [`run`](Self::run) writes the same bytes; tests compare the two.
    pub fn run_tensor_by_tensor(
        self,
        dev: &Device,
        progress: &mut dyn FnMut(u64),
    ) -> Result<QuantizeReport> {
        self.run_with(dev, progress, false)
    }

    fn run_with(
        self,
        dev: &Device,
        progress: &mut dyn FnMut(u64),
        streaming: bool,
    ) -> Result<QuantizeReport> {
        let start = Instant::now();
        let spec = self.opts.spec;
        let target = self.output.target().to_path_buf();
        let mut weight_map = BTreeMap::new();
        let mut shards = Vec::with_capacity(self.plans.len());
        for (i, plan) in self.plans.into_iter().enumerate() {
            let path = match &plan.out_path_rel {
                Some(r) => self.output.path().join(r),
                None => self.output.path().to_path_buf(),
            };
            let shard_name = self.input.shards[i].to_string_lossy().to_string();
            for name in plan
                .planned
                .iter()
                .map(|p| &p.name)
                .chain(plan.tails.iter().map(|t| &t.name))
            {
                weight_map.insert(name.clone(), shard_name.clone());
            }
            shards.push(ShardJob {
                path,
                planned: plan.planned,
                tails: plan.tails,
                metadata: plan.metadata,
                selected: plan.selected,
            });
        }
        let written = if streaming {
            quantize_stream::run(dev, &spec, &self.files, shards, &target, progress)?
        } else {
            write_tensor_by_tensor(dev, &spec, &self.files, shards, &target, progress)?
        };
        let total_size = written.shard_sizes.iter().sum();
        let (mut copied, mut skipped_files) = (Vec::new(), Vec::new());
        if self.input.dir.is_some() {
            let out = self.output.path();
            if self.input.indexed {
                model_dir::write_index(out, total_size, &weight_map)?;
            }
            if let Some(mut config) = self.config.clone() {
                config.insert(
                    "quantization_config".into(),
                    quantization_config(&spec, self.opts.compute_dtype, self.skip_modules.clone()),
                );
                model_dir::write_json(&out.join(CONFIG), &Value::Object(config))?;
            }
            let other = self.input.other_files()?;
            copied = model_dir::copy_files(&other.copy, out)?;
            skipped_files = other.skipped;
        }
        super::temps::check_interrupt(&target)?;
        self.output.commit()?;
        let reports = written.reports;
        let errs: Vec<f64> = reports.iter().filter_map(|r| r.rel_error).collect();
        let (mean_rel_error, max_rel_error) = summarize_errors(&errs);
        let bytes_out = reports.iter().map(|r| r.bytes_out).sum();
        Ok(QuantizeReport {
            quantized: errs.len(),
            mean_rel_error,
            max_rel_error,
            tensors: reports,
            bytes_in: written.bytes_in,
            bytes_out,
            seconds: start.elapsed().as_secs_f64(),
            memory_budget: written.budget,
            shards: self.files.len(),
            output: target,
            copied,
            skipped_files,
            skip_modules: self.skip_modules,
            warnings: self.warnings,
        })
    }
}

/// The reference loop: one tensor at a time, whole, through `layout::encode`.
fn write_tensor_by_tensor(
    dev: &Device,
    spec: &QuantSpec,
    files: &[SafetensorsFile],
    shards: Vec<ShardJob>,
    target: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let mut reports = Vec::new();
    let mut shard_sizes = Vec::new();
    let mut bytes_in = 0u64;
    let mut largest = 0u64;
    for (file, shard) in files.iter().zip(shards) {
        let mut writer =
            StreamingWriter::create(&shard.path, shard.planned, shard.tails, shard.metadata)?;
        let mut tail_bytes = Vec::new();
        for (t, &sel) in file.tensors().iter().zip(&shard.selected) {
            super::temps::check_interrupt(target)?;
            largest = largest.max(t.nbytes() as u64);
            if sel {
                let w = file.tensor(t)?;
                let enc = layout::encode(dev, spec, &t.name, &w).map_err(|e| match e {
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
                writer.write(&t.name, &file.bytes(t)?)?;
                reports.push(TensorReport {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                    bytes_in: t.nbytes() as u64,
                    bytes_out: t.nbytes() as u64,
                    rel_error: None,
                });
            }
            bytes_in += t.nbytes() as u64;
            progress(bytes_in);
        }
        super::temps::check_interrupt(target)?;
        shard_sizes.push(writer.finish(tail_bytes)?);
    }
    Ok(Written {
        reports,
        shard_sizes,
        bytes_in,
        budget: largest,
    })
}

#[cfg(test)]
mod tests {
    use super::summarize_errors;

    #[test]
    fn error_summary_never_hides_nan() {
        let (mean, max) = summarize_errors(&[0.1, f64::NAN, 0.2]);
        assert!(mean.is_nan() && max.is_nan(), "{mean} {max}");
        let (mean, max) = summarize_errors(&[f64::NAN, 0.2]);
        assert!(mean.is_nan() && max.is_nan(), "{mean} {max}");
        assert_eq!(summarize_errors(&[0.1, 0.3]), (0.2, 0.3));
        assert_eq!(summarize_errors(&[]), (0.0, 0.0));
    }
}
