//! A window of columns of every row (the parts of a fused projection's output).

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::shaders::Shader;
use crate::{Error, Result};

/// Columns `start .. start + len` of every row of `src` (`rows` x `cols` elements of `dtype`) into `dst`,
/// moved as 32-bit words: for f16/bf16, `cols`, `start` and `len` must be even.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_narrow(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    (rows, cols): (usize, usize),
    start: usize,
    len: usize,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "narrow";
    let per_word = 4 / dtype.size_in_bytes();
    if [cols, start, len]
        .iter()
        .any(|v| !v.is_multiple_of(per_word))
    {
        return Err(Error::invalid(
            OP,
            format!(
                "{dtype} columns {start}..{start}+{len} of {cols}: the wgpu kernel moves whole 32-bit words"
            ),
        ));
    }
    if len == 0 || start + len > cols {
        return Err(Error::shape(
            OP,
            format!("columns {start}..{start}+{len} of {cols}"),
        ));
    }
    check_buf(gpu, OP, "source", src, mul(OP, rows, cols)?, dtype)?;
    let total = mul(OP, rows, len)?;
    check_buf(gpu, OP, "destination", dst, total, dtype)?;
    if total == 0 {
        return Ok(());
    }
    let words = total / per_word;
    let params = u32_params(&[
        words as u32,
        (len / per_word) as u32,
        (cols / per_word) as u32,
        (start / per_word) as u32,
    ]);
    gpu.encode(
        enc,
        &Shader::Narrow,
        params,
        &[(1, src), (2, dst)],
        elementwise_grid(words),
        None,
    )
}
