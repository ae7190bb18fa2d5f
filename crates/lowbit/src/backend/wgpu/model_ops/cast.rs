//! dtype conversion: exact widening, round-to-nearest-even narrowing on bit patterns.

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::kernels::float_bytes;
use crate::backend::wgpu::shaders::Shader;
use crate::tensor::{DType, FloatVec, Floats};
use crate::{Error, Result};
use half::{bf16, f16};

/// Converts `n` elements from `from` to `to`: f32 -> f16/bf16 (round to nearest even, NaN/inf/subnormals as
/// `half::f16::from_f32` / `half::bf16::from_f32`, two halves per output word) or f16/bf16 -> f32 (exact,
/// NaNs quieted as `half` does).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_cast(
    gpu: &Gpu,
    enc: &mut Recorder,
    from: DType,
    to: DType,
    n: usize,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "cast";
    let (mode, threads) = match (from, to) {
        (DType::F32, DType::F16) => (0, n.div_ceil(2)),
        (DType::F32, DType::BF16) => (1, n.div_ceil(2)),
        (DType::F16, DType::F32) => (2, n),
        (DType::BF16, DType::F32) => (3, n),
        _ => {
            return Err(Error::invalid(
                OP,
                format!(
                    "{from} -> {to}; supported: f32 -> f16, f32 -> bf16, f16 -> f32, bf16 -> f32"
                ),
            ));
        }
    };
    check_buf(gpu, OP, "source", src, n, from)?;
    check_buf(gpu, OP, "destination", dst, n, to)?;
    if n == 0 {
        return Ok(());
    }
    let params = u32_params(&[n as u32, mode]);
    let bufs = [(1, src), (2, dst)];
    gpu.encode(
        enc,
        &Shader::Cast,
        params,
        &bufs,
        elementwise_grid(threads),
        None,
    )
}

/// `x` converted to `to` on the GPU (see [`encode_cast`] for the pairs and the rounding).
pub fn cast(gpu: &Gpu, x: Floats, to: DType) -> Result<FloatVec> {
    let n = x.len();
    let src = gpu.upload(float_bytes(&x));
    let dst = gpu.output(mul("cast", n, to.size_in_bytes())? as u64);
    gpu.run(|enc| encode_cast(gpu, enc, x.dtype(), to, n, &src, &dst))?;
    let bytes = gpu.read(&dst, n * to.size_in_bytes())?;
    Ok(match to {
        DType::F16 => FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)),
        DType::BF16 => FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)),
        _ => FloatVec::F32(bytemuck::pod_collect_to_vec(&bytes)),
    })
}
