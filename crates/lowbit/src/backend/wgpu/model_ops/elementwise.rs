//! Element-wise kernels of one or two operands: SwiGLU's `silu(gate) * up`, GELU, residual add.

use super::*;
use crate::Result;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::kernels::float_bytes;
use crate::backend::wgpu::shaders::Shader;
use crate::format::activation::GeluKind;
use crate::tensor::{DType, Floats};

#[allow(clippy::too_many_arguments)]
fn encode_elementwise(
    gpu: &Gpu,
    enc: &mut Recorder,
    op_name: &'static str,
    op: u32,
    dtype: DType,
    n: usize,
    (a, a_at): Operand,
    (b, b_at): Operand,
    out: &wgpu::Buffer,
) -> Result<()> {
    float_dtype(op_name, dtype)?;
    check_buf(gpu, op_name, "a", a, a_at.saturating_add(n), dtype)?;
    check_buf(gpu, op_name, "b", b, b_at.saturating_add(n), dtype)?;
    check_buf(gpu, op_name, "output", out, n, DType::F32)?;
    if n == 0 {
        return Ok(());
    }
    let bufs = [(1, a), (2, b), (3, out)];
    let params = u32_params(&[n as u32, op, a_at as u32, b_at as u32]);
    gpu.encode(
        enc,
        &Shader::ModelElementwise(dtype),
        params,
        &bufs,
        elementwise_grid(n),
        None,
    )
}

/// `silu(gate) * up` over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_silu_mul(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    n: usize,
    gate: Operand,
    up: Operand,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "silu_mul", 0, dtype, n, gate, up, out)
}

/// `relu(gate)^2 * up` over `n` elements of `dtype` into f32 `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_relu2_mul(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    n: usize,
    gate: Operand,
    up: Operand,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "relu2_mul", 4, dtype, n, gate, up, out)
}

/// GELU over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_gelu(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    n: usize,
    kind: GeluKind,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let op = match kind {
        GeluKind::Tanh => 1,
        GeluKind::Erf => 2,
    };
    // The kernel declares a second input; GELU binds x there too (read-only, never loaded).
    encode_elementwise(gpu, enc, "gelu", op, dtype, n, (x, 0), (x, 0), out)
}

/// `a + b` over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_add(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    n: usize,
    a: Operand,
    b: Operand,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "add", 3, dtype, n, a, b, out)
}

fn binary(
    gpu: &Gpu,
    op: &'static str,
    a: Floats,
    b: Floats,
    encode: fn(&Gpu, &mut Recorder, DType, usize, Operand, Operand, &wgpu::Buffer) -> Result<()>,
) -> Result<Vec<f32>> {
    same_dtype(op, a.dtype(), b.dtype())?;
    same_len(op, "second input", b.len(), a.len())?;
    let abuf = gpu.upload(float_bytes(&a));
    let bbuf = gpu.upload(float_bytes(&b));
    run_f32(gpu, a.len(), |enc, out| {
        encode(gpu, enc, a.dtype(), a.len(), (&abuf, 0), (&bbuf, 0), out)
    })
}

/// `silu(gate) * up`, as f32.
pub fn silu_mul(gpu: &Gpu, gate: Floats, up: Floats) -> Result<Vec<f32>> {
    binary(gpu, "silu_mul", gate, up, encode_silu_mul)
}

/// `a + b`, as f32.
pub fn add(gpu: &Gpu, a: Floats, b: Floats) -> Result<Vec<f32>> {
    binary(gpu, "add", a, b, encode_add)
}

/// GELU of `x`, as f32.
pub fn gelu(gpu: &Gpu, x: Floats, kind: GeluKind) -> Result<Vec<f32>> {
    let xbuf = gpu.upload(float_bytes(&x));
    run_f32(gpu, x.len(), |enc, out| {
        encode_gelu(gpu, enc, x.dtype(), x.len(), kind, &xbuf, out)
    })
}
