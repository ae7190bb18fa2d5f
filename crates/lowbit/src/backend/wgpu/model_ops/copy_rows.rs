//! KV-cache row writes in place.

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::kernels::float_bytes;
use crate::backend::wgpu::shaders::Shader;
use crate::tensor::{DType, FloatVec, Floats};
use crate::{Error, Result};
use half::{bf16, f16};

/// Copies `n_rows` rows of `row_len` elements of `dtype` from the start of `src` into `dst` at row `dst_row`
/// (a KV-cache append), as a dispatch of the word-moving kernel rather than a buffer copy, so that a decode
/// step's compute pass stays open (`Recorder`). Offsets and sizes must be multiples of 4 bytes (for
/// f16/bf16: an even number of elements per row, or rows written in even counts).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_copy_rows(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    row_len: usize,
    dst_row: usize,
    n_rows: usize,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "copy_rows";
    let row_bytes = mul(OP, row_len, dtype.size_in_bytes())?;
    let offset = mul(OP, dst_row, row_bytes)? as u64;
    let size = mul(OP, n_rows, row_bytes)? as u64;
    if !offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        || !size.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    {
        return Err(Error::invalid(
            OP,
            format!("byte offset {offset} and size {size} must be multiples of 4"),
        ));
    }
    if src.size() < size || offset.checked_add(size).is_none_or(|end| end > dst.size()) {
        return Err(Error::shape(
            OP,
            format!(
                "{size} bytes at offset {offset}: source has {} bytes, destination {}",
                src.size(),
                dst.size()
            ),
        ));
    }
    encode_copy_words(gpu, enc, (src, 0), dst, offset, size)
}

/// Records moving `size` bytes of `src` from byte `from` to `dst` at byte `offset` (all multiples of 4, in
/// bounds: checked by the callers) through the `Narrow` kernel: one row of every word.
pub(crate) fn encode_copy_words(
    gpu: &Gpu,
    enc: &mut Recorder,
    (src, from): (&wgpu::Buffer, u64),
    dst: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<()> {
    const OP: &str = "copy_rows";
    let words = size / 4;
    if words == 0 {
        return Ok(());
    }
    let limit = u64::from(u32::MAX);
    if words > limit || offset / 4 > limit || from / 4 > limit {
        return Err(Error::invalid(
            OP,
            format!(
                "{size} bytes from byte {from} to byte {offset}: past the kernel's 32-bit word indices"
            ),
        ));
    }
    let (words, first, src_first) = (words as u32, (offset / 4) as u32, (from / 4) as u32);
    gpu.encode(
        enc,
        &Shader::Narrow,
        u32_params(&[words, words, words, src_first, first]),
        &[(1, src), (2, dst)],
        elementwise_grid(words as usize),
        None,
    )
}

/// `dst` (a cache of rows of `row_len`) with `src`'s rows written from row `dst_row` on, through a GPU
/// dispatch.
pub fn copy_rows(
    gpu: &Gpu,
    dst: Floats,
    row_len: usize,
    dst_row: usize,
    src: Floats,
) -> Result<FloatVec> {
    const OP: &str = "copy_rows";
    same_dtype(OP, dst.dtype(), src.dtype())?;
    if row_len == 0 || !src.len().is_multiple_of(row_len) {
        return Err(Error::shape(
            OP,
            format!(
                "source of {} elements is not whole rows of {row_len}",
                src.len()
            ),
        ));
    }
    let dt = dst.dtype();
    let dbuf = gpu.upload(float_bytes(&dst));
    let sbuf = gpu.upload(float_bytes(&src));
    let rows_end = dst_row
        .checked_add(src.len() / row_len)
        .ok_or_else(|| Error::shape(OP, "dst_row + rows overflows"))?;
    let end = mul(OP, rows_end, row_len)?;
    if end > dst.len() {
        return Err(Error::shape(
            OP,
            format!(
                "rows end at element {end}, the destination has {}",
                dst.len()
            ),
        ));
    }
    gpu.run(|enc| {
        encode_copy_rows(
            gpu,
            enc,
            dt,
            row_len,
            dst_row,
            src.len() / row_len,
            &sbuf,
            &dbuf,
        )
    })?;
    let bytes = gpu.read(&dbuf, dst.len() * dt.size_in_bytes())?;
    Ok(match dt {
        DType::F16 => FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)),
        DType::BF16 => FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)),
        _ => FloatVec::F32(bytemuck::pod_collect_to_vec(&bytes)),
    })
}
