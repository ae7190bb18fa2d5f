//! The reading stage of the streaming quantizer: every tensor of every shard, in file order, cut into units
//! of a few MiB that can be encoded independently, read with positioned reads into fresh buffers, each
//! paid for from the [`ByteBudget`] before it is allocated.
//!
//! How a tensor is cut depends on what its format's arithmetic needs together:
//! - nf4 / fp4: whole quantization blocks (the block scale is the only shared state; double quantization
//!   of the scales happens once per tensor, after its last chunk).
//! - int8 (LLM.int8() with threshold 0, what checkpoints use): whole rows (SCB is a per-row absmax).
//! - ternary: the whole tensor, since `weight_scale` is the mean |W| of all of it and every code depends on
//!   it. It is still read in parts, its |W| sum formed while reading (in the order of one sequential pass,
//!   so the bits match) and paid for part by part.
//! - tensors kept in full precision: byte ranges.

use super::StDtype;
use super::byte_budget::ByteBudget;
use super::layout::{QuantFormat, QuantSpec};
use super::safetensors_read::{SafetensorsFile, TensorEntry};
use crate::Result;
use crate::format::ternary::{TORCH_ORDER_MAX, abs_sum_f64};
use crate::tensor::{Float, FloatVec};
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};
use std::path::Path;
use std::sync::mpsc::SyncSender;

/// Input bytes per unit: large enough to amortise a kernel launch and a channel hop, small enough that a
/// unit and its temporaries stay in the last-level cache while it is encoded.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Budget bytes a value unit of `n` elements holds besides its input: the f32 copy the encoders widen to,
/// the int8 path's f16 copy and the codes (4 + 2 + 1 bytes), rounded up.
const WORK_BYTES_PER_VALUE: u64 = 8;

/// Chunk buffers handed back by the encoders once a chunk is quantized, so that the reader refills them
/// instead of allocating (and zeroing) a fresh buffer per chunk. Holds a few chunks at most.
#[derive(Default)]
pub struct BufferPool(std::sync::Mutex<Vec<FloatVec>>);

impl BufferPool {
    const MAX: usize = 6;

    pub fn put(&self, v: FloatVec) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < Self::MAX {
            p.push(v);
        }
    }

    fn take(&self, dtype: StDtype, n: usize) -> Option<FloatVec> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = p
            .iter()
            .position(|v| v.len() == n && StDtype::from_dtype(v.dtype()) == dtype)?;
        Some(p.swap_remove(i))
    }
}

/// Bytes of a tensor kept in full precision, or values of a tensor being quantized.
pub enum Payload {
    Raw(Vec<u8>),
    Values {
        data: FloatVec,
        /// Ternary tensors above [`TORCH_ORDER_MAX`] values: the float64 sum of |W| (whole tensor).
        abs_sum: Option<f64>,
    },
}

/// One piece of work, numbered in output order.
pub struct Unit {
    pub seq: u64,
    pub shard: usize,
    /// Index of the tensor in its shard's file order.
    pub tensor: usize,
    /// Where the unit starts in the tensor: elements for values, bytes for raw data.
    pub offset: usize,
    pub last: bool,
    /// Budget bytes this unit holds until its output is written.
    pub cost: u64,
    pub payload: Payload,
}

/// Elements per unit of a quantized tensor (all of it for ternary); a multiple of what the format needs
/// together.
pub fn values_per_unit(spec: &QuantSpec, t: &TensorEntry) -> usize {
    let n = t.numel();
    let per_chunk = (CHUNK_BYTES / t.dtype.size().max(1)).max(1);
    let align = match spec.format {
        QuantFormat::FourBit(_) => spec.blocksize,
        QuantFormat::Int8 => t.shape.get(1).copied().unwrap_or(n).max(1),
        QuantFormat::Ternary => return n.max(1),
    };
    (per_chunk / align).max(1) * align
}

/// What a whole-tensor ternary unit holds: its input and the packed output.
pub fn ternary_cost(t: &TensorEntry) -> u64 {
    t.nbytes() as u64 + (t.numel() as u64).div_ceil(4)
}

/// Sends every unit of `files` in order; stops early (`Ok`) when the budget closes or the receiver hangs
/// up (the run is ending for another reason).
pub fn read_all(
    files: &[SafetensorsFile],
    selected: &[Vec<bool>],
    spec: &QuantSpec,
    budget: &ByteBudget,
    pool: &BufferPool,
    target: &Path,
    tx: SyncSender<Unit>,
) -> Result<()> {
    let mut seq = 0u64;
    for (shard, (file, sel)) in files.iter().zip(selected).enumerate() {
        for (tensor, (t, &quantize)) in file.tensors().iter().zip(sel).enumerate() {
            super::temps::check_interrupt(target)?;
            let mut send = |offset: usize, last: bool, cost: u64, payload: Payload| {
                let unit = Unit {
                    seq,
                    shard,
                    tensor,
                    offset,
                    last,
                    cost,
                    payload,
                };
                seq += 1;
                tx.send(unit).is_ok()
            };
            let sent = if !quantize {
                read_raw(file, t, budget, &mut send)?
            } else if spec.format == QuantFormat::Ternary {
                read_whole(file, t, budget, &mut send)?
            } else {
                read_chunks(file, t, values_per_unit(spec, t), budget, pool, &mut send)?
            };
            if !sent {
                return Ok(());
            }
        }
    }
    Ok(())
}

type Send<'a> = dyn FnMut(usize, bool, u64, Payload) -> bool + 'a;

fn read_raw(
    file: &SafetensorsFile,
    t: &TensorEntry,
    budget: &ByteBudget,
    send: &mut Send,
) -> Result<bool> {
    let n = t.nbytes();
    let mut off = 0;
    loop {
        let len = CHUNK_BYTES.min(n - off);
        if !budget.acquire(len as u64) {
            return Ok(false);
        }
        let mut buf = vec![0u8; len];
        file.read_part_into(t, off, &mut buf)?;
        let last = off + len == n;
        if !send(off, last, len as u64, Payload::Raw(buf)) {
            return Ok(false);
        }
        off += len;
        if last {
            return Ok(true);
        }
    }
}

fn read_chunks(
    file: &SafetensorsFile,
    t: &TensorEntry,
    per_unit: usize,
    budget: &ByteBudget,
    pool: &BufferPool,
    send: &mut Send,
) -> Result<bool> {
    let n = t.numel();
    let mut start = 0;
    while start < n {
        let len = per_unit.min(n - start);
        let cost = (len * t.dtype.size()) as u64 + WORK_BYTES_PER_VALUE * len as u64;
        if !budget.acquire(cost) {
            return Ok(false);
        }
        let mut data = match pool.take(t.dtype, len) {
            Some(v) => v,
            None => zeroed(t.dtype, len, file.path())?,
        };
        read_values(file, t, start, &mut data)?;
        let last = start + len == n;
        let payload = Payload::Values {
            data,
            abs_sum: None,
        };
        if !send(start, last, cost, payload) {
            return Ok(false);
        }
        start += len;
    }
    Ok(true)
}

/// The whole tensor, read part by part into one buffer (untouched pages cost nothing until read, so the
/// budget is taken as the parts arrive), with its |W| sum formed on the way.
fn read_whole(
    file: &SafetensorsFile,
    t: &TensorEntry,
    budget: &ByteBudget,
    send: &mut Send,
) -> Result<bool> {
    let n = t.numel();
    let mut data = zeroed(t.dtype, n, file.path())?;
    let per_part = (CHUNK_BYTES / t.dtype.size()).max(1);
    let mut abs_sum = 0.0f64;
    let mut start = 0;
    while start < n {
        let len = per_part.min(n - start);
        if !budget.acquire((len * t.dtype.size()) as u64) {
            return Ok(false);
        }
        let part = slice_mut(&mut data, start..start + len);
        file.read_part_into(t, start * t.dtype.size(), part.bytes)?;
        if n > TORCH_ORDER_MAX {
            abs_sum = part.abs_sum(abs_sum);
        }
        start += len;
    }
    let out = ternary_cost(t) - t.nbytes() as u64;
    if !budget.acquire(out) {
        return Ok(false);
    }
    let payload = Payload::Values {
        data,
        abs_sum: (n > TORCH_ORDER_MAX).then_some(abs_sum),
    };
    Ok(send(0, true, ternary_cost(t), payload))
}

/// `n` zero values of `dtype`, from zeroed memory (pages are touched only when read into).
fn zeroed(dtype: StDtype, n: usize, path: &Path) -> Result<FloatVec> {
    Ok(match dtype {
        StDtype::F32 => FloatVec::F32(vec![0.0f32; n]),
        StDtype::F16 => FloatVec::F16(vec![0u16; n].reinterpret_into::<f16>()),
        StDtype::BF16 => FloatVec::BF16(vec![0u16; n].reinterpret_into::<bf16>()),
        other => {
            return Err(super::checkpoint_error(
                path,
                format!("internal: dtype {other} is not quantized"),
            ));
        }
    })
}

fn read_values(
    file: &SafetensorsFile,
    t: &TensorEntry,
    start: usize,
    data: &mut FloatVec,
) -> Result<()> {
    let len = data.len();
    let part = slice_mut(data, 0..len);
    file.read_part_into(t, start * t.dtype.size(), part.bytes)
}

/// A range of a float buffer as bytes to read into, and a way to sum it.
struct PartMut<'a> {
    bytes: &'a mut [u8],
    dtype: crate::tensor::DType,
}

impl PartMut<'_> {
    fn abs_sum(&self, acc: f64) -> f64 {
        fn sum<T: Float + bytemuck::Pod>(b: &[u8], acc: f64) -> f64 {
            abs_sum_f64(
                acc,
                bytemuck::cast_slice::<u8, T>(b).iter().map(|v| v.to_f32()),
            )
        }
        match self.dtype {
            crate::tensor::DType::F16 => sum::<f16>(self.bytes, acc),
            crate::tensor::DType::BF16 => sum::<bf16>(self.bytes, acc),
            _ => sum::<f32>(self.bytes, acc),
        }
    }
}

fn slice_mut(data: &mut FloatVec, r: std::ops::Range<usize>) -> PartMut<'_> {
    let dtype = data.dtype();
    let bytes: &mut [u8] = match data {
        FloatVec::F32(v) => bytemuck::cast_slice_mut(&mut v[r]),
        FloatVec::F16(v) => bytemuck::cast_slice_mut(&mut v[r]),
        FloatVec::BF16(v) => bytemuck::cast_slice_mut(&mut v[r]),
    };
    PartMut { bytes, dtype }
}
