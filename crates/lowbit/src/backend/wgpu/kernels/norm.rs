//! Row-wise float kernels: softmax and RMSNorm.

use super::*;
use crate::Result;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::shaders::Shader;

/// Records softmax (`rms` false) or RMSNorm (weight, `eps`) over `rows` rows of `cols`; `bufs` binds x, weight
/// (a placeholder for softmax) and y at 1..=3.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_rows_float(
    gpu: &Gpu,
    enc: &mut Recorder,
    rows: usize,
    cols: usize,
    rms: bool,
    eps: f32,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
    // Rows of whole vec4s take the vectorized RMSNorm (its params count vec4s).
    let (shader, width) = if rms && cols.is_multiple_of(4) {
        (Shader::RmsNormVec4, cols / 4)
    } else {
        (Shader::RowsFloat, cols)
    };
    let params = [
        rows as u32,
        width as u32,
        rms as u32,
        eps.to_bits(),
        0,
        0,
        0,
        0,
    ];
    gpu.encode(enc, &shader, params, bufs, Gpu::grid(rows as u32), None)
}

/// Softmax (`weight` None) or RMSNorm over rows of `cols`.
pub fn rows_float(
    gpu: &Gpu,
    x: &[f32],
    weight: Option<&[f32]>,
    cols: usize,
    eps: f32,
) -> Result<Vec<f32>> {
    if x.is_empty() || cols == 0 {
        return Ok(x.to_vec());
    }
    let rows = x.len() / cols;
    u32_len("rows", x.len())?;
    check_binding(gpu, "rows", x.len() * 4)?;
    let xbuf = gpu.upload(f32_bytes(x));
    let wbuf = match weight {
        Some(w) => gpu.upload(f32_bytes(w)),
        None => gpu.unused_binding().clone(),
    };
    let ybuf = gpu.output((x.len() * 4) as u64);
    let bufs = [(1, &xbuf), (2, &wbuf), (3, &ybuf)];
    gpu.run(|enc| encode_rows_float(gpu, enc, rows, cols, weight.is_some(), eps, &bufs))?;
    gpu.read_f32(&ybuf, x.len())
}
