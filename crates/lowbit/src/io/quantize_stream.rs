//! The streaming quantization pipeline: a reader thread ([`stream_read`]), one encoder per core
//! ([`chunk_encode`]) and the calling thread writing results in order, so reading, converting, quantizing,
//! the error statistic and writing overlap and every core is busy.
//!
//! Memory: every buffer a unit needs is paid for from a [`ByteBudget`] before the reader allocates it and
//! given back once its output is written, so what is in flight stays under the budget whatever the model
//! size: a few chunks for nf4 / fp4 / int8 (tensors of any size stream through), and two largest tensors
//! for ternary (whose scale needs all of a tensor). Outputs are byte-identical to the tensor-at-a-time path
//! (`layout::encode`): chunks follow the format's independence (whole blocks, whole rows), double
//! quantization runs once on the whole tensor's block scales, and the ternary |W| sum keeps its order.

use super::byte_budget::ByteBudget;
use super::checkpoint_error as ck;
use super::chunk_encode::{EncodedUnit, Scan, encode_unit};
use super::layout::{self, QuantFormat, QuantSpec};
use super::quant_error::{self, BlockMoments, ErrorSums};
use super::quantize_model::TensorReport;
use super::safetensors_read::{SafetensorsFile, TensorEntry};
use super::safetensors_write::{PlannedTensor, StreamingWriter, TailTensor};
use super::stream_read::{self, BufferPool, CHUNK_BYTES, Payload, Unit};
use crate::format::{Absmax, QuantState};
use crate::runtime::Device;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

/// Budget for formats that stream within a tensor: enough chunks in flight to keep the reader ahead and
/// every encoder busy.
const STREAM_BUDGET: u64 = 24 * CHUNK_BYTES as u64;

/// One output file: where it goes, its planned layout, and which input tensors are quantized.
pub struct ShardJob {
    pub path: PathBuf,
    pub planned: Vec<PlannedTensor>,
    pub tails: Vec<TailTensor>,
    pub metadata: BTreeMap<String, String>,
    pub selected: Vec<bool>,
}

/// What the pipeline wrote.
pub struct Written {
    pub reports: Vec<TensorReport>,
    /// Data bytes of each shard (what an index's `total_size` sums).
    pub shard_sizes: Vec<u64>,
    pub bytes_in: u64,
    /// The memory budget the run used, in bytes.
    pub budget: u64,
}

/// The budget for `spec` on these inputs: see the module comment.
pub fn budget_for(spec: &QuantSpec, files: &[SafetensorsFile], shards: &[ShardJob]) -> u64 {
    if spec.format != QuantFormat::Ternary {
        return STREAM_BUDGET;
    }
    let largest = files
        .iter()
        .zip(shards)
        .flat_map(|(f, s)| f.tensors().iter().zip(&s.selected))
        .filter(|(_, sel)| **sel)
        .map(|(t, _)| stream_read::ternary_cost(t))
        .max()
        .unwrap_or(0);
    (2 * largest).max(STREAM_BUDGET)
}

/// Encoders to run: one per core (their kernels share rayon's pool, so more would only queue).
fn encoders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Quantizes `files` into `shards` (same order), calling `progress` with the input bytes done.
pub fn run(
    dev: &Device,
    spec: &QuantSpec,
    files: &[SafetensorsFile],
    shards: Vec<ShardJob>,
    target: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let budget = ByteBudget::new(budget_for(spec, files, &shards));
    let pool = BufferPool::default();
    let selected: Vec<Vec<bool>> = shards.iter().map(|s| s.selected.clone()).collect();
    let stop = AtomicBool::new(false);
    let workers = encoders();
    let (unit_tx, unit_rx) = mpsc::sync_channel::<Unit>(2 * workers);
    let unit_rx = Mutex::new(unit_rx);
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    std::thread::scope(|s| {
        let reader = {
            let (budget, selected, pool) = (&budget, &selected, &pool);
            s.spawn(move || {
                stream_read::read_all(files, selected, spec, budget, pool, target, unit_tx)
            })
        };
        for _ in 0..workers {
            let (done_tx, unit_rx, stop, pool) = (done_tx.clone(), &unit_rx, &stop, &pool);
            s.spawn(move || encode_loop(dev, spec, files, unit_rx, done_tx, stop, pool));
        }
        drop(done_tx);
        let result = Assembler::new(dev, spec, files, shards, target, budget.limit())
            .run(&done_rx, &budget, progress);
        // Whatever happened, let the other threads finish: no more budget, no more encoding.
        stop.store(true, Ordering::Relaxed);
        budget.close();
        drop(done_rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("quantize", "the reader thread panicked")));
        match result {
            // The reader's error (a short read, an interrupt) explains a missing unit better.
            Err(Missing) => Err(read.err().unwrap_or_else(|| {
                Error::invalid("quantize", "internal: the pipeline ended early")
            })),
            Ok(w) => Ok(w),
            Err(Failed(e)) => Err(e),
        }
    })
}

use AssembleError::{Failed, Missing};

enum AssembleError {
    /// The units stopped before the last one (the reader failed or was interrupted).
    Missing,
    Failed(Error),
}

impl From<Error> for AssembleError {
    fn from(e: Error) -> Self {
        Failed(e)
    }
}

/// An encoded unit on its way to the writer.
struct Done {
    seq: u64,
    shard: usize,
    tensor: usize,
    offset: usize,
    last: bool,
    cost: u64,
    bytes_in: u64,
    result: Result<EncodedUnit>,
}

fn encode_loop(
    dev: &Device,
    spec: &QuantSpec,
    files: &[SafetensorsFile],
    units: &Mutex<mpsc::Receiver<Unit>>,
    done: mpsc::Sender<Done>,
    stop: &AtomicBool,
    pool: &BufferPool,
) {
    loop {
        let unit = match units.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(u) = unit else { return };
        if stop.load(Ordering::Relaxed) {
            continue;
        }
        let t = &files[u.shard].tensors()[u.tensor];
        let bytes_in = match &u.payload {
            Payload::Raw(b) => b.len() as u64,
            Payload::Values { data, .. } => (data.len() * t.dtype.size()) as u64,
        };
        let result = encode_unit(dev, spec, &t.shape, u.offset, u.payload, &|v| pool.put(v))
            .map_err(|e| match e {
                Error::Checkpoint { .. } => e,
                other => ck(
                    files[u.shard].path(),
                    format!("tensor {:?}: {other}", t.name),
                ),
            });
        let d = Done {
            seq: u.seq,
            shard: u.shard,
            tensor: u.tensor,
            offset: u.offset,
            last: u.last,
            cost: u.cost,
            bytes_in,
            result,
        };
        if done.send(d).is_err() {
            return;
        }
    }
}

/// The per-tensor state gathered from its chunks until the last one arrives.
#[derive(Default)]
struct Gathered {
    absmax: Vec<f32>,
    moments: Vec<BlockMoments>,
    scb: Vec<f32>,
    err: ErrorSums,
    scan: Scan,
    bytes_out: u64,
}

/// The writing stage: takes encoded units in order, writes them, finishes tensors and shards.
struct Assembler<'a> {
    dev: &'a Device,
    spec: &'a QuantSpec,
    files: &'a [SafetensorsFile],
    shards: Vec<Option<ShardJob>>,
    target: &'a Path,
    budget: u64,
    selected: Vec<Vec<bool>>,
    /// The shard being written: its index, writer and quant_state tails so far.
    writer: Option<(usize, StreamingWriter, Vec<layout::NamedBytes>)>,
    /// Shards being finished (tails, header, fsync, rename) in the background while the next streams.
    finishing: Vec<(usize, std::thread::JoinHandle<Result<u64>>)>,
    next_shard: usize,
    gathered: Gathered,
    written: Written,
}

impl<'a> Assembler<'a> {
    fn new(
        dev: &'a Device,
        spec: &'a QuantSpec,
        files: &'a [SafetensorsFile],
        shards: Vec<ShardJob>,
        target: &'a Path,
        budget: u64,
    ) -> Self {
        let n = shards.len();
        let selected = shards.iter().map(|s| s.selected.clone()).collect();
        Assembler {
            selected,
            dev,
            spec,
            files,
            shards: shards.into_iter().map(Some).collect(),
            target,
            budget,
            writer: None,
            finishing: Vec::new(),
            next_shard: 0,
            gathered: Gathered::default(),
            written: Written {
                reports: Vec::new(),
                shard_sizes: vec![0; n],
                bytes_in: 0,
                budget,
            },
        }
    }

    fn run(
        mut self,
        done: &mpsc::Receiver<Done>,
        budget: &ByteBudget,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<Written, AssembleError> {
        let result = self.assemble(done, budget, progress);
        // Wait for every shard being finished, also after an error: the output is removed only afterwards.
        let mut first_err = None;
        for (i, h) in std::mem::take(&mut self.finishing) {
            match h.join() {
                Ok(Ok(size)) => self.written.shard_sizes[i] = size,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::invalid("quantize", "a shard writer panicked"));
                }
            }
        }
        result?;
        if let Some(e) = first_err {
            return Err(Failed(e));
        }
        super::temps::check_interrupt(self.target)?;
        self.written.budget = self.budget;
        Ok(self.written)
    }

    fn assemble(
        &mut self,
        done: &mpsc::Receiver<Done>,
        budget: &ByteBudget,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<(), AssembleError> {
        let mut waiting: HashMap<u64, Done> = HashMap::new();
        let mut next = 0u64;
        loop {
            let d = match waiting.remove(&next) {
                Some(d) => d,
                None => match done.recv() {
                    Ok(d) if d.seq == next => d,
                    Ok(d) => {
                        waiting.insert(d.seq, d);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            next += 1;
            super::temps::check_interrupt(self.target)?;
            let cost = d.cost;
            self.write_unit(d)?;
            budget.release(cost);
            progress(self.written.bytes_in);
        }
        // The units stopped early (the reader failed or was interrupted) when a shard is still open or one
        // with tensors was never reached; only shards without tensors are left to write.
        let unreached = self
            .shards
            .iter()
            .zip(self.files)
            .any(|(job, f)| job.is_some() && !f.tensors().is_empty());
        if self.writer.is_some() || unreached {
            return Err(Missing);
        }
        self.open_shard(self.shards.len())?;
        Ok(())
    }

    /// Finishes every shard before `shard` (creating those without tensors) and opens `shard`.
    fn open_shard(&mut self, shard: usize) -> Result<()> {
        if self.writer.as_ref().is_some_and(|w| w.0 == shard) {
            return Ok(());
        }
        while self.next_shard <= shard.min(self.shards.len().saturating_sub(1)) {
            let i = self.next_shard;
            let has_tensors = !self.files[i].tensors().is_empty();
            let job = self.shards[i].take();
            if let Some(job) = job {
                let w = StreamingWriter::create(&job.path, job.planned, job.tails, job.metadata)?;
                if i == shard && has_tensors {
                    self.writer = Some((i, w, Vec::new()));
                    self.next_shard += 1;
                    return Ok(());
                }
                // A shard without tensors, or one the units skipped: nothing to wait for.
                if has_tensors {
                    return Err(ck(&job.path, "internal: a shard's tensors were skipped"));
                }
                self.written.shard_sizes[i] = w.finish(Vec::new())?;
            }
            self.next_shard += 1;
        }
        Ok(())
    }

    fn write_unit(&mut self, d: Done) -> std::result::Result<(), AssembleError> {
        if self.writer.as_ref().is_none_or(|w| w.0 != d.shard) {
            self.open_shard(d.shard)?;
        }
        let file = &self.files[d.shard];
        let t = &file.tensors()[d.tensor];
        let enc = d.result?;
        if d.offset == 0 {
            self.gathered = Gathered::default();
        }
        let (_, writer, tails) = self.writer.as_mut().expect("opened above");
        let g = &mut self.gathered;
        let mut ternary = None;
        let mut part = |bytes: &[u8]| -> Result<()> {
            g.bytes_out += bytes.len() as u64;
            writer.write_part(&t.name, bytes)
        };
        match enc {
            EncodedUnit::Raw(b) => part(&b)?,
            EncodedUnit::FourBit {
                packed,
                absmax,
                moments,
                scan,
            } => {
                part(&packed)?;
                g.absmax.extend(absmax);
                g.moments.extend(moments);
                g.scan = g.scan.then(scan);
            }
            EncodedUnit::Int8 { q, scb, err, scan } => {
                part(bytemuck::cast_slice(&q))?;
                g.scb.extend(scb);
                g.err = g.err.add(err);
                g.scan = g.scan.then(scan);
            }
            EncodedUnit::Ternary {
                packed,
                weight_scale,
                err,
                scan,
            } => {
                g.err = err;
                g.scan = scan;
                ternary = Some((packed, weight_scale));
            }
        }
        self.written.bytes_in += d.bytes_in;
        if !d.last {
            return Ok(());
        }
        let g = std::mem::take(&mut self.gathered);
        let mut bytes_out = g.bytes_out;
        let rel_error = if self.selected[d.shard][d.tensor] {
            let fin = finish_tensor(self.dev, self.spec, t, g, ternary).map_err(|e| match e {
                Error::Checkpoint { .. } => e,
                other => ck(file.path(), format!("tensor {:?}: {other}", t.name)),
            })?;
            for (name, bytes) in &fin.tensors {
                writer.write(name, bytes)?;
                bytes_out += bytes.len() as u64;
            }
            if let Some(tail) = fin.tail {
                bytes_out += tail.1.len() as u64;
                tails.push(tail);
            }
            Some(fin.rel_error)
        } else {
            None
        };
        self.written.reports.push(TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
            bytes_in: t.nbytes() as u64,
            bytes_out,
            rel_error,
        });
        if d.tensor + 1 == file.tensors().len() {
            let (i, w, tails) = self.writer.take().expect("open");
            // The fsync can take seconds on a slow disk; the next shard need not wait for it.
            let h = std::thread::Builder::new()
                .name(format!("lowbit-finish-{i}"))
                .spawn(move || w.finish(tails))
                .map_err(|e| {
                    Error::invalid("quantize", format!("cannot start a writer thread: {e}"))
                })?;
            self.finishing.push((i, h));
        }
        Ok(())
    }
}

/// The rest of a quantized tensor once all its chunks are in: the checks (in the reference path's order:
/// non-finite values, then the format's range check), the block scales (double-quantized over the whole
/// tensor), the state tensors in planned order, the quant_state tail, and the relative error.
fn finish_tensor(
    dev: &Device,
    spec: &QuantSpec,
    t: &TensorEntry,
    g: Gathered,
    ternary: Option<(Vec<u8>, f32)>,
) -> Result<layout::Encoded> {
    let name = t.name.as_str();
    if let Some((first, count)) = g.scan.non_finite {
        let e = Error::NonFinite {
            op: "quantize",
            count,
            first,
        };
        return Err(Error::invalid("quantize", format!("{name}: {e}")));
    }
    let dtype = t.dtype.to_dtype().filter(|d| d.is_float()).ok_or_else(|| {
        Error::invalid(
            "quantize",
            format!("{name}: dtype {} is not a float", t.dtype),
        )
    })?;
    Ok(match spec.format {
        QuantFormat::FourBit(quant_type) => {
            if spec.double_quant {
                layout::check_double_quant_absmax(name, &g.absmax)?;
            }
            let absmax = if spec.double_quant {
                dev.double_quantize(g.absmax)?
            } else {
                Absmax::Plain(g.absmax)
            };
            let state = QuantState {
                quant_type,
                blocksize: spec.blocksize,
                dtype,
                shape: t.shape.clone(),
                absmax,
            };
            let err = quant_error::fourbit_error(&g.moments, &state.absmax.to_f32());
            let (tensors, tail) = layout::fourbit_state_tensors(name, &state);
            layout::Encoded {
                tensors,
                tail: Some(tail),
                rel_error: err.rel_error(),
            }
        }
        QuantFormat::Int8 => {
            if let Some((i, v)) = g.scan.f16_overflow {
                let cols = t.shape.get(1).copied().unwrap_or(1).max(1);
                return Err(layout::f16_range_error(name, i, v, cols));
            }
            layout::Encoded {
                tensors: layout::int8_state_tensors(name, &g.scb),
                tail: None,
                rel_error: g.err.rel_error(),
            }
        }
        QuantFormat::Ternary => {
            let (packed, scale) = ternary.ok_or_else(|| {
                Error::invalid("quantize", "internal: ternary tensor without codes")
            })?;
            let (scale_tensor, _) = layout::ternary_scale_tensor(name, scale, dtype);
            layout::Encoded {
                tensors: vec![(name.to_string(), packed), scale_tensor],
                tail: None,
                rel_error: g.err.rel_error(),
            }
        }
    })
}
