//! The tiled GEMM every linear kernel family shares (`encode_gemm`), the dense float matmul, and the dense
//! linear layer on a weight kept in half precision.

use super::*;
use crate::Result;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::shaders::{GEMV_DENSE_SHAPE, GemmKind, Shader};
use crate::tensor::{DType, Floats};

pub(crate) fn gemm_grid(m: usize, n: usize) -> (u32, u32, u32) {
    (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1)
}

/// Records one GEMM `y[m, n] = a[m, k] @ w[n, k]^T (+ bias)`; `bufs` binds what `kind`'s loaders declare (a, w,
/// and for 4-bit absmax and table, bias, y). `extra` is the loaders' p4: log2(blocksize) for 4-bit weights, the
/// packed row count for ternary ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_gemm(
    gpu: &Gpu,
    enc: &mut Recorder,
    kind: GemmKind,
    m: usize,
    n: usize,
    k: usize,
    has_bias: u32,
    extra: u32,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
    let dense = matches!(
        kind,
        GemmKind::DenseF32 | GemmKind::DenseWeightF16 | GemmKind::DenseWeightBf16
    );
    if dense && m == 1 && k.is_multiple_of(4) {
        // One activation row (a decode step's head, a float model's projections): the GEMV streams the
        // weight once with contiguous loads, where the GEMM's tiles would compute 63 unused rows.
        let shape = with_subgroups(gpu, GEMV_DENSE_SHAPE);
        let params = [n as u32, (k / 4) as u32, has_bias, 0, 0, 0, 0, 0];
        let groups = groups(n, shape.rows_per_group());
        return gpu.encode(
            enc,
            &Shader::GemvDense(kind, shape),
            params,
            bufs,
            groups,
            None,
        );
    }
    let params = [m as u32, n as u32, k as u32, has_bias, extra, 0, 0, 0];
    gpu.encode(
        enc,
        &Shader::Gemm(kind),
        params,
        bufs,
        gemm_grid(m, n),
        None,
    )
}

/// Dense `y[m, n] = x[m, k] @ w[n, k]^T (+ bias)` in f32. f16 operands are read as f16 (half the upload), through
/// shader-f16 types where the adapter has them and `native_f16`, else widened exactly on integers; anything
/// else is widened to f32 on the host.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    x: Floats,
    w: Floats,
    bias: Option<Floats>,
    m: usize,
    n: usize,
    k: usize,
    native_f16: bool,
) -> Result<Vec<f32>> {
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    u32_len("matmul", (m * k).max(n * k).max(m * n))?;
    check_binding(gpu, "matmul", (m * k).max(n * k).max(m * n) * 4)?;
    let half = x.dtype() == DType::F16 && w.dtype() == DType::F16;
    let (xbuf, wbuf, kind) = if half {
        let kind = if native_f16 && gpu.features.contains(wgpu::Features::SHADER_F16) {
            GemmKind::DenseF16Native
        } else {
            GemmKind::DenseF16
        };
        (
            gpu.upload(float_bytes(&x)),
            gpu.upload(float_bytes(&w)),
            kind,
        )
    } else {
        (
            gpu.upload(f32_bytes(&x.to_f32_vec())),
            gpu.upload(f32_bytes(&w.to_f32_vec())),
            GemmKind::DenseF32,
        )
    };
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((m * n * 4) as u64);
    let bufs = [(1, &xbuf), (2, &wbuf), (5, &bbuf), (6, &ybuf)];
    gpu.run(|enc| encode_gemm(gpu, enc, kind, m, n, k, has_bias, 0, &bufs))?;
    gpu.read_f32(&ybuf, m * n)
}

/// The GEMM variant for f32 activations times a weight stored in `w_dtype` (f16 or bf16) and widened in the
/// shader; `None` for an f32 weight (the plain dense GEMM).
pub(crate) fn half_weight_kind(w_dtype: DType) -> Option<GemmKind> {
    match w_dtype {
        DType::F16 => Some(GemmKind::DenseWeightF16),
        DType::BF16 => Some(GemmKind::DenseWeightBf16),
        _ => None,
    }
}

/// Records `y[m, n] = x[m, k] @ w[n, k]^T (+ bias)` for f32 x, bias and y and a half-precision weight read
/// as it is stored (no widened copy): the same tiles and summation order as the f32 weight's GEMM, so the
/// same bits. `kind` comes from [`half_weight_kind`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_linear_half_weight(
    gpu: &Gpu,
    enc: &mut Recorder,
    kind: GemmKind,
    (m, n, k): (usize, usize, usize),
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "linear";
    u32_len(OP, (m * k).max(n * k).max(m * n))?;
    check_binding(gpu, OP, (m * k).max(m * n) * 4)?;
    check_binding(gpu, OP, n * k * 2)?;
    if m * n == 0 {
        return Ok(());
    }
    let (b, has_bias) = match bias {
        Some(b) => (b, 1),
        None => (gpu.unused_binding(), 0),
    };
    let bufs = [(1, x), (2, w), (5, b), (6, y)];
    encode_gemm(gpu, enc, kind, m, n, k, has_bias, 0, &bufs)
}
