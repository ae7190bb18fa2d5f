//! The float ops of a model: cast, elementwise, norms, embedding, RoPE, attention (kernels/model.cu).

use super::{Arg, Buf, Cuda, CudaStorage, THREADS, blocks, dt, p, u32_of};
use crate::Result;
use crate::format::activation::{FRAC_1_SQRT_2, GELU_TANH_BETA, GELU_TANH_KAPPA, GeluKind};
use crate::format::rope::RopeLayout;
use crate::tensor::DType;

/// Keys per block of the split attention (`ATT_CHUNK` in kernels/model.cu).
const ATT_CHUNK: usize = 16;
/// Query heads per block of the split attention (`ATT_HEADS`): a KV head's group, in sets of this many.
const ATT_HEADS: usize = 8;
/// Threads of the merge's block (`MERGE_WARPS` warps in kernels/model.cu).
const MERGE_THREADS: u32 = 256;
/// Query rows x heads below which attention is split across blocks of keys
/// (decode and short prefills); from there on one block per (row, head) already fills the GPU.
const ATT_SPLIT_MAX_ROWS: usize = 1024;
/// Query rows per block of the tiled prompt attention (`ATT_T_ROWS`) and the largest head size it takes
/// (`ATT_T_MAXD`); other head sizes run one block per (row, head).
const ATT_TILED_ROWS: usize = 32;
const ATT_TILED_MAX_HEAD_DIM: usize = 128;
/// Its dynamic shared memory: query, key and value tiles of 32 rows at a stride of 132 floats
/// (`ATT_T_STRIDE`), and 32 x 32 probabilities.
const ATT_TILED_SHARED_BYTES: u32 = (3 * 32 * 132 + 32 * 32) * 4;

impl Cuda {
    /// `n` values of `x` converted from `from` to `to` (exact widening, round-to-nearest-even narrowing).
    pub fn cast_dev(&self, x: &CudaStorage, from: DType, n: usize, to: DType) -> Result<Buf> {
        let y = self.alloc("cast", n * to.size_in_bytes())?;
        self.launch(
            "cast",
            (blocks(n), 1),
            THREADS,
            &[p(x), dt(from), Arg::U64(n as u64), p(&y), dt(to)],
        )?;
        Ok(y)
    }

    /// `x` as f32: itself, or widened by the cast kernel.
    pub fn as_f32(&self, x: &Buf, from: DType, n: usize) -> Result<Buf> {
        if from == DType::F32 {
            Ok(x.clone())
        } else {
            self.cast_dev(x, from, n, DType::F32)
        }
    }

    /// Columns `start .. start + len` of every row of `x [rows, cols]` (elements of `dtype`): a view of x's
    /// memory for one row, a copy otherwise.
    pub fn narrow_dev(
        &self,
        x: &Buf,
        dtype: DType,
        (rows, cols): (usize, usize),
        start: usize,
        len: usize,
    ) -> Result<Buf> {
        let es = dtype.size_in_bytes();
        if rows == 1
            && let Some(v) = CudaStorage::view(x, start * es, len * es)
        {
            return Ok(v);
        }
        let n = rows * len;
        let y = self.alloc("narrow", n * es)?;
        self.launch(
            "narrow_cols",
            (blocks(n), 1),
            THREADS,
            &[
                p(x),
                Arg::U64(rows as u64),
                Arg::U64(cols as u64),
                Arg::U64(start as u64),
                Arg::U64(len as u64),
                Arg::I32(es as i32),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    /// op 0: a + b, 1: silu(a) * b, 2: relu(a)^2 * b.
    pub fn binary_dev(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        dtype: DType,
        n: usize,
        op: i32,
    ) -> Result<Buf> {
        let y = self.alloc("elementwise", n * dtype.size_in_bytes())?;
        self.launch(
            "binary",
            (blocks(n), 1),
            THREADS,
            &[
                p(a),
                p(b),
                dt(dtype),
                Arg::U64(n as u64),
                Arg::I32(op),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    pub fn gelu_dev(&self, x: &CudaStorage, dtype: DType, n: usize, kind: GeluKind) -> Result<Buf> {
        let y = self.alloc("gelu", n * dtype.size_in_bytes())?;
        let k = match kind {
            GeluKind::Tanh => 0,
            GeluKind::Erf => 1,
        };
        self.launch(
            "gelu",
            (blocks(n), 1),
            THREADS,
            &[
                p(x),
                dt(dtype),
                Arg::U64(n as u64),
                Arg::I32(k),
                Arg::F32(GELU_TANH_BETA),
                Arg::F32(GELU_TANH_KAPPA),
                Arg::F32(FRAC_1_SQRT_2),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    /// `out_dtype` = x's dtype for the model ops; f32 for the host API.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        w: &CudaStorage,
        wdtype: DType,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Buf> {
        const OP: &str = "rms_norm";
        let y = self.alloc(OP, rows * cols * dtype.size_in_bytes())?;
        // About 4 columns per thread (whole warps, at most 1024): a 4096-wide row took 12 us with 256.
        let threads = cols.div_ceil(4).next_multiple_of(32).clamp(32, 1024) as u32;
        self.launch(
            "rms_norm",
            (u32_of(OP, rows)?, 1),
            threads,
            &[
                p(x),
                dt(dtype),
                p(w),
                dt(wdtype),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(eps),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    pub fn softmax_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<Buf> {
        const OP: &str = "softmax";
        let y = self.alloc(OP, rows * cols * dtype.size_in_bytes())?;
        self.launch(
            "softmax",
            (u32_of(OP, rows)?, 1),
            THREADS,
            &[p(x), dt(dtype), Arg::U32(u32_of(OP, cols)?), p(&y)],
        )?;
        Ok(y)
    }

    pub fn embedding_dev(
        &self,
        table: &CudaStorage,
        ids: &CudaStorage,
        n: usize,
        row_bytes: usize,
    ) -> Result<Buf> {
        const OP: &str = "embedding";
        let y = self.alloc(OP, n * row_bytes)?;
        self.launch(
            "embedding",
            (blocks(n * row_bytes), 1),
            THREADS,
            &[
                p(table),
                p(ids),
                Arg::U32(u32_of(OP, n)?),
                Arg::U64(row_bytes as u64),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        dims: [usize; 5],
        layout: RopeLayout,
        (cos, sin, positions): (&CudaStorage, &CudaStorage, usize),
    ) -> Result<Buf> {
        const OP: &str = "rope";
        let [tokens, heads, head_dim, rot, pos_start] = dims;
        // In a recorded step the kernel adds the step's position (read on the device) to 0.
        let step = self.step_position(OP, pos_start, positions)?;
        let pos_start = if step.is_some() { 0 } else { pos_start };
        let n = tokens * heads * head_dim;
        let y = self.alloc(OP, n * dtype.size_in_bytes())?;
        let interleaved = matches!(layout, RopeLayout::Interleaved) as i32;
        self.launch(
            "rope",
            (blocks(n), 1),
            THREADS,
            &[
                p(x),
                dt(dtype),
                Arg::U32(u32_of(OP, tokens)?),
                Arg::U32(u32_of(OP, heads)?),
                Arg::U32(u32_of(OP, head_dim)?),
                Arg::U32(u32_of(OP, rot)?),
                Arg::U32(u32_of(OP, pos_start)?),
                Arg::I32(interleaved),
                p(cos),
                p(sin),
                p(&y),
                Arg::Ptr(step.unwrap_or(0)),
            ],
        )?;
        Ok(y)
    }

    /// dims: nq, n_heads, n_kv_heads, head_dim, kv_len, pos_start, capacity (the caches' rows).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_dev(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dtype: DType,
        dims: [usize; 7],
        scale: f32,
    ) -> Result<Buf> {
        const OP: &str = "attention";
        let [
            nq,
            n_heads,
            n_kv_heads,
            head_dim,
            kv_len,
            pos_start,
            capacity,
        ] = dims;
        let rows = nq * n_heads;
        // In a recorded step the split kernel adds the step's position to kv_len and pos_start, and its
        // grid covers the whole cache.
        let step = self.step_position(OP, pos_start, capacity)?;
        if step.is_some()
            && !(rows < ATT_SPLIT_MAX_ROWS && head_dim <= 256 && kv_len == pos_start + nq)
        {
            return Err(self.not_recordable(
                OP,
                format!(
                    "{rows} query rows of head size {head_dim} take the one-block-per-row kernel"
                ),
            ));
        }
        let y = self.alloc(OP, rows * head_dim * dtype.size_in_bytes())?;
        let (kv_len, pos_start, chunks) = match step {
            Some(_) => (nq, 0, capacity.div_ceil(ATT_CHUNK)),
            None => (kv_len, pos_start, kv_len.div_ceil(ATT_CHUNK)),
        };
        // The query, caches and shape, as both attention kernels take them; then their own outputs.
        let common = [
            p(q),
            p(k),
            p(v),
            dt(dtype),
            Arg::U32(u32_of(OP, n_heads)?),
            Arg::U32(u32_of(OP, n_kv_heads)?),
            Arg::U32(u32_of(OP, head_dim)?),
            Arg::U32(u32_of(OP, kv_len)?),
            Arg::U32(u32_of(OP, pos_start)?),
            Arg::F32(scale),
        ];
        let grid_rows = u32_of(OP, rows)?;
        if step.is_some() || (rows < ATT_SPLIT_MAX_ROWS && head_dim <= 256) {
            // Decode: one block per head would leave most of the GPU idle over a long cache. Short caches
            // take this route too, so a recorded step (always split) gives the bits of an unrecorded one.
            let part = self.alloc(OP, rows * chunks * (head_dim + 2) * 4)?;
            let n_chunks = u32_of(OP, chunks)?;
            let sets = (n_heads / n_kv_heads).div_ceil(ATT_HEADS);
            let split_rows = u32_of(OP, nq * n_kv_heads * sets)?;
            let args = [&common[..], &[p(&part), Arg::Ptr(step.unwrap_or(0))]].concat();
            self.launch("attention_split", (split_rows, n_chunks), 128, &args)?;
            let merge = [
                p(&part),
                Arg::U32(n_chunks),
                Arg::U32(u32_of(OP, head_dim)?),
                dt(dtype),
                p(&y),
            ];
            self.launch("attention_merge", (grid_rows, 1), MERGE_THREADS, &merge)?;
            return Ok(y);
        }
        // The tiled kernel reads four elements at a time.
        let aligned = [q.addr(), k.addr(), v.addr()]
            .iter()
            .all(|a| a.is_multiple_of(4 * dtype.size_in_bytes() as u64));
        if aligned && head_dim.is_multiple_of(4) && head_dim <= ATT_TILED_MAX_HEAD_DIM {
            let args = [&common[..], &[Arg::U32(u32_of(OP, nq)?), p(&y)]].concat();
            let tiles = u32_of(OP, nq.div_ceil(ATT_TILED_ROWS))?;
            let name = if head_dim <= 64 {
                "attention_tiled_d64"
            } else {
                "attention_tiled_d128"
            };
            let grid = (tiles, u32_of(OP, n_heads)?);
            self.launch_shared(name, grid, 128, ATT_TILED_SHARED_BYTES, &args)?;
            return Ok(y);
        }
        let scratch = self.alloc(OP, rows * kv_len.max(1) * 4)?;
        let args = [&common[..], &[p(&scratch), p(&y)]].concat();
        self.launch("attention", (grid_rows, 1), 128, &args)?;
        Ok(y)
    }
}
