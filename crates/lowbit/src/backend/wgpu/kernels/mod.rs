//! Host side of each kernel: upload, dispatch (in pieces where a tensor exceeds the adapter's largest storage
//! binding, e.g. lavapipe's 128 MiB), read back, and the final host-side steps that must be exact (f16/bf16
//! narrowing, BitNet's true division). Each kernel's dispatch is recorded by one `encode_*` function, shared by
//! the host-slice functions here and the resident ops of `tensor.rs`.
//!
//! One file per op family, as `backend/cpu/reference/`; the helpers every family uses live here.

mod blockwise;
mod dense;
mod fourbit;
mod int8;
mod norm;
mod ternary;

pub use blockwise::{dequantize, dequantize_with, quantize, quantize_with};
pub(crate) use blockwise::{dequantize_plan, encode_dequantize, quantize_plan};
pub use dense::matmul;
pub(crate) use dense::{encode_gemm, encode_linear_half_weight, gemm_grid, half_weight_kind};
pub(crate) use fourbit::{RowPiece, encode_gemv_4bit};
pub use fourbit::{gemv_4bit, matmul_4bit};
pub(crate) use int8::{
    Int8OutBuffers, RowSpec, encode_int8_linear_out, encode_row_quant, encode_row_scales,
};
pub use int8::{
    int8_linear_matmul, int8_mm_dequant, int8_mm_dequant_exact, int8_vectorwise_dequant,
    int8_vectorwise_quant,
};
pub(crate) use norm::encode_rows_float;
pub use norm::rows_float;
pub(crate) use ternary::{
    encode_ternary_act_quant, encode_ternary_matmul, encode_ternary_rescale, ternary_gemv_kernel,
};
pub use ternary::{ternary_act_quant, ternary_matmul, ternary_quantize, ternary_rescale};

use super::context::{Gpu, gpu_err, gpu_oom};
use super::shaders::GemvShape;
use crate::Result;
use crate::tensor::Floats;

/// Raw bytes of float data as the shaders read them (f32 bits or u16 bits).
pub(crate) fn float_bytes<'a>(x: &Floats<'a>) -> &'a [u8] {
    match *x {
        Floats::F32(s) => bytemuck::cast_slice(s),
        Floats::F16(s) => bytemuck::cast_slice(s),
        Floats::BF16(s) => bytemuck::cast_slice(s),
    }
}

pub(super) fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

pub(super) fn i8_bytes(v: &[i8]) -> &[u8] {
    bytemuck::cast_slice(v)
}

pub(crate) fn u32_len(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        gpu_err(format!(
            "{op}: {n} elements exceed the GPU kernels' 2^32 index range; split the tensor or use the CPU"
        ))
    })
}

pub(super) fn groups(n_items: usize, per_group: usize) -> (u32, u32, u32) {
    Gpu::grid(n_items.div_ceil(per_group) as u32)
}

pub(super) fn bias_buffer(gpu: &Gpu, bias: Option<Floats>) -> (wgpu::Buffer, u32) {
    match bias {
        Some(b) => (gpu.upload(f32_bytes(&b.to_f32_vec())), 1),
        None => (gpu.unused_binding().clone(), 0),
    }
}

pub(super) fn with_subgroups(gpu: &Gpu, mut shape: GemvShape) -> GemvShape {
    shape.subgroup = gpu.subgroups_fit(shape.tpr);
    shape
}

pub(crate) fn check_binding(gpu: &Gpu, op: &'static str, bytes: usize) -> Result<()> {
    if bytes as u64 > gpu.max_binding() {
        // An operand larger than one binding: reported as out-of-memory so the runtime splits the op.
        return Err(gpu_oom(op, bytes as u64, Some(gpu.max_binding())));
    }
    Ok(())
}

pub(super) fn read_i8(gpu: &Gpu, buf: &wgpu::Buffer, n: usize) -> Result<Vec<i8>> {
    Ok(gpu.read(buf, n)?.into_iter().map(|b| b as i8).collect())
}
