//! Blockwise quantize and dequantize (8-bit dynamic codes and packed 4-bit nibbles), in pieces of whole
//! blocks where a tensor exceeds the adapter's largest storage binding.

use super::*;
use crate::Result;
use crate::backend::BlockCodes;
use crate::backend::wgpu::context::{Gpu, Recorder, gpu_err};
use crate::backend::wgpu::shaders::{DEQUANTIZE_VPT, Encoding, QUANTIZE_ROWS, Shader};
use crate::format::Codebook8;
use crate::tensor::{DType, Floats};

/// Elements per piece: whole blocks, each piece's input and output within one binding.
pub(super) fn piece_len(gpu: &Gpu, bytes_per_elem: usize, blocksize: usize) -> usize {
    let max = (gpu.max_binding() as usize).min(1 << 30);
    (max / bytes_per_elem / blocksize).max(1) * blocksize
}

/// Rows of 256 items a quantize workgroup covers when blocks fit in one row (more rows amortize the
/// reductions' barriers and put more loads in flight per thread). H100, 256 MiB NF4: r1/r2/r4 = 63/71/70% of
/// copy bandwidth (docs/PERFORMANCE.md).
pub(crate) const QUANTIZE_ROWS_DEFAULT: u32 = 2;

/// Vec4 stores per dequantize thread. H100, 256 MiB NF4: v1/v2/v4 = 83/113/112% of copy bandwidth.
pub(crate) const DEQUANTIZE_VPT_DEFAULT: u32 = 2;

/// How a blockwise quantize dispatch covers `len` elements (the library path and the benchmarks share it).
#[derive(Clone, Debug)]
pub(crate) struct QuantizePlan {
    pub shader: Shader,
    /// Elements per output word (an item).
    epw: usize,
    rows: usize,
    /// log2 of the items per block.
    log2_ipb: u32,
}

/// The quantize kernel for `blocksize` (a power of two, at least one output word, at most 1024 words): `rows`
/// rows of 256 items per workgroup (None: the default), raised to what a block needs.
pub(crate) fn quantize_plan(
    dtype: DType,
    enc: Encoding,
    blocksize: usize,
    rows: Option<u32>,
) -> Result<QuantizePlan> {
    let epw = if enc == Encoding::Code8 { 4 } else { 8 };
    let max_rows = *QUANTIZE_ROWS.last().unwrap() as usize;
    if !blocksize.is_power_of_two() || blocksize < epw || blocksize / epw > 256 * max_rows {
        return Err(gpu_err(format!(
            "quantize: blocksize {blocksize} unsupported by the GPU kernel (powers of two {epw}..={})",
            256 * max_rows * epw
        )));
    }
    let ipb = blocksize / epw;
    let need = ipb.div_ceil(256) as u32;
    let rows = match rows {
        Some(r) if r < need || !QUANTIZE_ROWS.contains(&r) => {
            return Err(gpu_err(format!(
                "quantize: {r} rows per workgroup cannot hold a block of {blocksize}"
            )));
        }
        Some(r) => r,
        None => QUANTIZE_ROWS_DEFAULT.max(need),
    };
    Ok(QuantizePlan {
        shader: Shader::Quantize(dtype, enc, rows),
        epw,
        rows: rows as usize,
        log2_ipb: ipb.trailing_zeros(),
    })
}

impl QuantizePlan {
    pub fn params(&self, len: u32) -> [u32; 8] {
        let tpb = (1u32 << self.log2_ipb).min(256);
        [len, self.log2_ipb, tpb, 0, 0, 0, 0, 0]
    }

    pub fn grid(&self, len: usize) -> (u32, u32, u32) {
        groups(len.div_ceil(self.epw), 256 * self.rows)
    }
}

pub fn quantize(
    gpu: &Gpu,
    x: Floats,
    enc: Encoding,
    code: Option<&Codebook8>,
    blocksize: usize,
) -> Result<BlockCodes> {
    quantize_with(gpu, x, enc, code, blocksize, None)
}

/// `quantize` with the rows per workgroup pinned (tests and benchmarks).
pub fn quantize_with(
    gpu: &Gpu,
    x: Floats,
    enc: Encoding,
    code: Option<&Codebook8>,
    blocksize: usize,
    rows: Option<u32>,
) -> Result<BlockCodes> {
    let n = x.len();
    let bits = if enc == Encoding::Code8 { 8 } else { 4 };
    let epw = 32 / bits;
    let esize = x.dtype().size_in_bytes();
    let mut codes = Vec::with_capacity(n * bits / 8 + 1);
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    if n == 0 {
        return Ok(BlockCodes { codes, absmax });
    }
    let plan = quantize_plan(x.dtype(), enc, blocksize, rows)?;
    let mids = code.map(|c| gpu.upload(f32_bytes(&c.midpoints)));
    let delta = gpu.rcp_delta();
    let step = piece_len(gpu, esize.max(4), blocksize);
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let xs = x.slice(start..start + len);
        let nb = len.div_ceil(blocksize);
        // The kernel reads x as 16-byte vectors (scalars at the tail, inside the padding).
        let xbuf = gpu.upload_aligned(float_bytes(&xs), 16);
        let cbuf = gpu.output((len.div_ceil(epw) * 4) as u64);
        let abuf = gpu.output((nb * 4) as u64);
        let mut bufs = vec![(1, &xbuf), (2, &cbuf), (3, &abuf), (9, delta)];
        if let Some(m) = &mids {
            bufs.push((5, m));
        }
        let params = plan.params(u32_len("quantize", len)?);
        gpu.run(|enc| gpu.encode(enc, &plan.shader, params, &bufs, plan.grid(len), None))?;
        codes.extend(gpu.read(&cbuf, if bits == 8 { len } else { len.div_ceil(2) })?);
        absmax.extend(gpu.read_f32(&abuf, nb)?);
    }
    Ok(BlockCodes { codes, absmax })
}

/// The dequantize kernel for `bits`-bit codes with `vpt` vec4 stores per thread (None: the default), and its
/// grid for `len` elements.
pub(crate) fn dequantize_plan(
    bits: usize,
    vpt: Option<u32>,
    len: usize,
) -> (Shader, (u32, u32, u32)) {
    let vpt = vpt.unwrap_or(DEQUANTIZE_VPT_DEFAULT);
    assert!(
        DEQUANTIZE_VPT.contains(&vpt),
        "no dequantize variant with {vpt} stores per thread"
    );
    let shader = Shader::Dequantize {
        bits: bits as u32,
        vpt,
    };
    (shader, groups(len.div_ceil(4), 256 * vpt as usize))
}

/// Dequantizes `n` codes (8-bit bytes or packed nibbles) to float32.
pub fn dequantize(
    gpu: &Gpu,
    codes: &[u8],
    absmax: &[f32],
    table: &[f32],
    bits: usize,
    blocksize: usize,
    n: usize,
) -> Result<Vec<f32>> {
    dequantize_with(gpu, codes, absmax, table, bits, blocksize, n, None)
}

/// `dequantize` with the vec4 stores per thread pinned (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn dequantize_with(
    gpu: &Gpu,
    codes: &[u8],
    absmax: &[f32],
    table: &[f32],
    bits: usize,
    blocksize: usize,
    n: usize,
    vpt: Option<u32>,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    // Whole vec4s lie in one block, and the kernel's shared table has 2^bits entries.
    if !blocksize.is_power_of_two() || blocksize < 4 || table.len() < 1 << bits {
        return Err(gpu_err(format!(
            "dequantize: blocksize {blocksize} / table of {} unsupported by the GPU kernel",
            table.len()
        )));
    }
    let tbuf = gpu.upload(f32_bytes(table));
    let step = piece_len(gpu, 4, blocksize);
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let cbytes = &codes[start * bits / 8..(start + len).div_ceil(8 / bits).min(codes.len())];
        let cbuf = gpu.upload(cbytes);
        let b0 = start / blocksize;
        let abuf = gpu.upload(f32_bytes(&absmax[b0..b0 + len.div_ceil(blocksize)]));
        // Whole vec4 stores: the output is ceil(len / 4) vec4s.
        let obuf = gpu.output((len.div_ceil(4) * 16) as u64);
        let bufs = [(1, &cbuf), (2, &abuf), (3, &tbuf), (4, &obuf)];
        gpu.run(|enc| encode_dequantize(gpu, enc, bits, len, blocksize, vpt, &bufs))?;
        out.extend(gpu.read_f32(&obuf, len)?);
    }
    Ok(out)
}

/// Records one dequantize dispatch over `len` codes of `bits` bits (blocksize a power of two, at least 4);
/// `bufs` binds codes, absmax, table and out at 1..=4, out holding ceil(len / 4) whole vec4 of floats. `vpt`
/// pins the stores per thread (benchmarks and tests).
pub(crate) fn encode_dequantize(
    gpu: &Gpu,
    enc: &mut Recorder,
    bits: usize,
    len: usize,
    blocksize: usize,
    vpt: Option<u32>,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
    let params = [
        u32_len("dequantize", len)?,
        blocksize.trailing_zeros(),
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let (shader, grid) = dequantize_plan(bits, vpt, len);
    gpu.encode(enc, &shader, params, bufs, grid, None)
}
