//! Quantized weights resident on the GPU (4-bit codes with their absmax, ternary codes with their scale),
//! uploaded and checked once so that the kernels that read them can trust their sizes.

use super::WgpuBackend;
use super::kernels::{check_binding, u32_len};
use super::tensor::GpuTensor;
use crate::backend::{Packed4bit, PackedTernary};
use crate::format::BLOCKSIZES_4BIT;
use crate::format::ternary::packed_rows;
use crate::tensor::DType;
use crate::{Error, Result};

/// A packed NF4/FP4 weight resident on the GPU (codes, float32 absmax, its table). Its fields are checked
/// once at upload and read-only afterwards, so the kernels can trust them.
pub struct GpuPacked4bit {
    pub(super) packed: GpuTensor,
    pub(super) absmax: GpuTensor,
    pub(super) table: wgpu::Buffer,
    pub(super) blocksize: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl GpuPacked4bit {
    /// A weight from operands the op layer validated.
    pub(crate) fn from_parts(
        packed: GpuTensor,
        absmax: GpuTensor,
        table: wgpu::Buffer,
        blocksize: usize,
        rows: usize,
        cols: usize,
    ) -> GpuPacked4bit {
        GpuPacked4bit {
            packed,
            absmax,
            table,
            blocksize,
            rows,
            cols,
        }
    }
    pub fn packed(&self) -> &GpuTensor {
        &self.packed
    }
    pub fn absmax(&self) -> &GpuTensor {
        &self.absmax
    }
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// A ternary weight in transformers' 2-bit packing (`[ceil(rows/4), cols]` bytes) resident on the GPU.
pub struct GpuPackedTernary {
    pub(super) packed: GpuTensor,
    pub(super) weight_scale: f32,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl GpuPackedTernary {
    pub(crate) fn from_parts(
        packed: GpuTensor,
        weight_scale: f32,
        rows: usize,
        cols: usize,
    ) -> GpuPackedTernary {
        GpuPackedTernary {
            packed,
            weight_scale,
            rows,
            cols,
        }
    }
    pub fn packed(&self) -> &GpuTensor {
        &self.packed
    }
    pub fn weight_scale(&self) -> f32 {
        self.weight_scale
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl WgpuBackend {
    /// Uploads a packed 4-bit weight once, for repeated resident GEMV/matmul/dequantize calls. The packed bytes
    /// must fit one storage binding (else the host path's out-of-memory error).
    pub fn upload_4bit(&self, w: &Packed4bit) -> Result<GpuPacked4bit> {
        const OP: &str = "upload_4bit";
        if !BLOCKSIZES_4BIT.contains(&w.blocksize) {
            return Err(Error::BlockSize {
                op: OP,
                got: w.blocksize,
                allowed: BLOCKSIZES_4BIT,
            });
        }
        let n = w
            .rows
            .checked_mul(w.cols)
            .ok_or_else(|| Error::shape(OP, format!("{} x {} overflows", w.rows, w.cols)))?;
        if w.packed.len() < n.div_ceil(2) || w.absmax.len() < n.div_ceil(w.blocksize) {
            return Err(Error::shape(
                OP,
                format!(
                    "a {} x {} weight of blocksize {} needs {} packed bytes and {} absmax values, got {} and {}",
                    w.rows,
                    w.cols,
                    w.blocksize,
                    n.div_ceil(2),
                    n.div_ceil(w.blocksize),
                    w.packed.len(),
                    w.absmax.len()
                ),
            ));
        }
        // The kernels index elements with u32 (the GEMV reads up to 8 past the last one).
        u32_len(OP, n + 8)?;
        check_binding(self.gpu(), OP, w.packed.len().max(w.absmax.len() * 4))?;
        Ok(GpuPacked4bit {
            packed: self.upload_raw(w.packed, vec![w.packed.len()], DType::U8),
            absmax: self.upload_raw(
                bytemuck::cast_slice(w.absmax),
                vec![w.absmax.len()],
                DType::F32,
            ),
            table: self.gpu().table_4bit(w.quant_type).clone(),
            blocksize: w.blocksize,
            rows: w.rows,
            cols: w.cols,
        })
    }

    /// Uploads a packed ternary weight once, for repeated [`WgpuBackend::ternary_linear_resident`] calls.
    pub fn upload_ternary(&self, w: PackedTernary) -> Result<GpuPackedTernary> {
        const OP: &str = "upload_ternary";
        let want = packed_rows(w.rows).checked_mul(w.cols);
        if want != Some(w.packed.len()) {
            return Err(Error::shape(
                OP,
                format!(
                    "a {} x {} ternary weight packs into ceil({} / 4) x {} bytes, got {}",
                    w.rows,
                    w.cols,
                    w.rows,
                    w.cols,
                    w.packed.len()
                ),
            ));
        }
        u32_len(OP, w.packed.len().max(w.rows))?;
        check_binding(self.gpu(), OP, w.packed.len())?;
        Ok(GpuPackedTernary {
            packed: self.upload_raw(w.packed, vec![packed_rows(w.rows), w.cols], DType::U8),
            weight_scale: w.weight_scale,
            rows: w.rows,
            cols: w.cols,
        })
    }
}
