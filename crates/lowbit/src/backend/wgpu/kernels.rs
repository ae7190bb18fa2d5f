//! Host side of each kernel: upload, dispatch (in pieces where a tensor exceeds the adapter's largest storage
//! binding, e.g. lavapipe's 128 MiB), read back, and the final host-side steps that must be exact (f16/bf16
//! narrowing, BitNet's true division). Each kernel's dispatch is recorded by one `encode_*` function, shared by
//! the host-slice functions here and the resident ops of `tensor.rs`.

use super::context::{Gpu, gpu_err, gpu_oom};
use super::shaders::{DEQUANTIZE_VPT, Encoding, GemmKind, GemvShape, QUANTIZE_ROWS, Shader};
use crate::Result;
use crate::backend::{BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::format::Codebook8;
use crate::format::int8::mm_dequant_output;
use crate::format::ternary::{EPS, packed_rows, rescale};
use crate::tensor::{DType, Floats};
use half::f16;

/// Raw bytes of float data as the shaders read them (f32 bits or u16 bits).
pub(crate) fn float_bytes<'a>(x: &Floats<'a>) -> &'a [u8] {
    match *x {
        Floats::F32(s) => bytemuck::cast_slice(s),
        Floats::F16(s) => bytemuck::cast_slice(s),
        Floats::BF16(s) => bytemuck::cast_slice(s),
    }
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn i8_bytes(v: &[i8]) -> &[u8] {
    bytemuck::cast_slice(v)
}

pub(crate) fn u32_len(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        gpu_err(format!(
            "{op}: {n} elements exceed the GPU kernels' 2^32 index range; split the tensor or use the CPU"
        ))
    })
}

fn groups(n_items: usize, per_group: usize) -> (u32, u32, u32) {
    Gpu::grid(n_items.div_ceil(per_group) as u32)
}

/// Elements per piece: whole blocks, each piece's input and output within one binding.
fn piece_len(gpu: &Gpu, bytes_per_elem: usize, blocksize: usize) -> usize {
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
    enc: &mut wgpu::CommandEncoder,
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

fn bias_buffer(gpu: &Gpu, bias: Option<Floats>) -> (wgpu::Buffer, u32) {
    match bias {
        Some(b) => (gpu.upload(f32_bytes(&b.to_f32_vec())), 1),
        None => (gpu.output(4), 0),
    }
}

/// Rows `r0..r1` of a weight whose bound packed buffer starts at u32 word `first_word` of the whole weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowPiece {
    pub r0: usize,
    pub r1: usize,
    pub first_word: usize,
}

/// The 4-bit GEMV kernel for a weight of `cols` columns: the vectorised one when rows are whole 16-byte words
/// of one block (cols % 32 == 0, blocksize >= 32), else the general one.
pub(crate) fn gemv_4bit_shader(
    gpu: &Gpu,
    rows: usize,
    cols: usize,
    blocksize: usize,
    force: Option<GemvShape>,
) -> Shader {
    if cols.is_multiple_of(32) && blocksize >= 32 {
        Shader::Gemv4bitFast(force.unwrap_or_else(|| gemv_4bit_split(gpu, rows)))
    } else {
        Shader::Gemv4bit
    }
}

/// The NF4/FP4 GEMV work split for `rows` rows. The kernel is bound by its code-table reads from workgroup
/// memory (one per nibble), so more rows per thread (one read of x serves them all) pays while the grid still
/// fills the GPU: measured on an H100 (docs/PERFORMANCE.md), 64 threads x 8 rows is best from 8192 rows up and
/// 64 x 4 below. Subgroup reductions where the adapter's subgroups fit a row set.
pub(crate) fn gemv_4bit_split(gpu: &Gpu, rows: usize) -> GemvShape {
    let rpt = if rows >= 8192 { 8 } else { 4 };
    with_subgroups(gpu, GemvShape::new(64, rpt))
}

/// The ternary GEMV work split: its inner loop is a few integer dot products per 16 bytes, so it is bound by
/// memory; 128 threads x 2 packed rows was within a few percent of the best split at every measured shape.
pub(crate) fn ternary_gemv_split(gpu: &Gpu) -> GemvShape {
    with_subgroups(gpu, GemvShape::new(128, 2))
}

fn with_subgroups(gpu: &Gpu, mut shape: GemvShape) -> GemvShape {
    shape.subgroup = gpu.subgroups_fit(shape.tpr);
    shape
}

#[allow(clippy::too_many_arguments)]
/// Records one dispatch of the 4-bit GEMV over `piece`; `bufs` binds packed (the piece), absmax, table, x, bias
/// and y at 1..=6.
pub(crate) fn encode_gemv_4bit(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    piece: RowPiece,
    cols: usize,
    blocksize: usize,
    has_bias: u32,
    bufs: &[(u32, &wgpu::Buffer)],
    force: Option<GemvShape>,
    timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
) -> Result<()> {
    let shader = gemv_4bit_shader(gpu, piece.r1 - piece.r0, cols, blocksize, force);
    let (first, per_group) = match shader {
        // The fast kernel indexes packed words 4 at a time; rows of 32 nibbles keep pieces 16-byte aligned.
        Shader::Gemv4bitFast(shape) => (piece.first_word / 4, shape.rows_per_group()),
        _ => (piece.first_word, 4),
    };
    let params = [
        piece.r1 as u32,
        cols as u32,
        blocksize.trailing_zeros(),
        has_bias,
        first as u32,
        piece.r0 as u32,
        0,
        0,
    ];
    gpu.encode(
        enc,
        &shader,
        params,
        bufs,
        groups(piece.r1 - piece.r0, per_group),
        timestamps,
    )
}

/// `y = W x (+ bias)`; `force` pins the work split of the vectorised kernel (tests and benchmarks).
pub fn gemv_4bit(
    gpu: &Gpu,
    x: &[f32],
    w: &Packed4bit,
    bias: Option<Floats>,
    force: Option<GemvShape>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 {
        return Ok(Vec::new());
    }
    u32_len("gemv_4bit", rows * cols + 8)?;
    let xbuf = gpu.upload(f32_bytes(x));
    let abuf = gpu.upload(f32_bytes(w.absmax));
    let tbuf = gpu.upload(f32_bytes(w.quant_type.dequant_table()));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((rows * 4) as u64);
    // Rows per piece so that a piece's packed bytes fit one binding.
    let max_words = (gpu.max_binding() as usize / 4).saturating_sub(2);
    let rows_per = (max_words * 8 / cols.max(1)).clamp(1, rows);
    let mut pieces = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let r1 = (r0 + rows_per).min(rows);
        let w0 = r0 * cols / 8;
        let w1 = (r1 * cols).div_ceil(8);
        let bytes = &w.packed[w0 * 4..(w1 * 4).min(w.packed.len())];
        pieces.push((r0, r1, w0, gpu.upload(bytes)));
    }
    gpu.run(|enc| {
        for (r0, r1, w0, pbuf) in &pieces {
            let bufs = [
                (1, pbuf),
                (2, &abuf),
                (3, &tbuf),
                (4, &xbuf),
                (5, &bbuf),
                (6, &ybuf),
            ];
            let piece = RowPiece {
                r0: *r0,
                r1: *r1,
                first_word: *w0,
            };
            encode_gemv_4bit(
                gpu,
                enc,
                piece,
                cols,
                w.blocksize,
                has_bias,
                &bufs,
                force,
                None,
            )?;
        }
        Ok(())
    })?;
    gpu.read_f32(&ybuf, rows)
}

pub(crate) fn gemm_grid(m: usize, n: usize) -> (u32, u32, u32) {
    (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1)
}

/// Records one GEMM `y[m, n] = a[m, k] @ w[n, k]^T (+ bias)`; `bufs` binds what `kind`'s loaders declare (a, w,
/// and for 4-bit absmax and table, bias, y). `extra` is the loaders' p4: log2(blocksize) for 4-bit weights, the
/// packed row count for ternary ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_gemm(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    kind: GemmKind,
    m: usize,
    n: usize,
    k: usize,
    has_bias: u32,
    extra: u32,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
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

pub(crate) fn check_binding(gpu: &Gpu, op: &'static str, bytes: usize) -> Result<()> {
    if bytes as u64 > gpu.max_binding() {
        // An operand larger than one binding: reported as out-of-memory so the runtime splits the op.
        return Err(gpu_oom(op, bytes as u64, Some(gpu.max_binding())));
    }
    Ok(())
}

pub fn matmul_4bit(
    gpu: &Gpu,
    x: &[f32],
    batch: usize,
    w: &Packed4bit,
    bias: Option<Floats>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 || batch == 0 {
        return Ok(vec![0.0; rows * batch]);
    }
    u32_len("matmul_4bit", (rows * cols).max(batch * cols) + 8)?;
    check_binding(
        gpu,
        "matmul_4bit",
        w.packed.len().max(x.len() * 4).max(batch * rows * 4),
    )?;
    let xbuf = gpu.upload(f32_bytes(x));
    let pbuf = gpu.upload(w.packed);
    let abuf = gpu.upload(f32_bytes(w.absmax));
    let tbuf = gpu.upload(f32_bytes(w.quant_type.dequant_table()));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((batch * rows * 4) as u64);
    let bufs = [
        (1, &xbuf),
        (2, &pbuf),
        (3, &abuf),
        (4, &tbuf),
        (5, &bbuf),
        (6, &ybuf),
    ];
    let log2_bs = w.blocksize.trailing_zeros();
    gpu.run(|enc| {
        encode_gemm(
            gpu,
            enc,
            GemmKind::FourBit,
            batch,
            rows,
            cols,
            has_bias,
            log2_bs,
            &bufs,
        )
    })?;
    gpu.read_f32(&ybuf, batch * rows)
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

/// What the row-scale and row-quant kernels compute: LLM.int8() (mode 0, with an outlier threshold) or BitNet
/// activations (mode 1, threshold 0), over `rows` rows of `cols` values of `dtype`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSpec {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub threshold: f32,
    pub mode: u32,
}

/// Records the row-scale kernel: absmax (as bits) and the quantization scale of each row.
pub(crate) fn encode_row_scales(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    spec: RowSpec,
    x: &wgpu::Buffer,
    absmax: &wgpu::Buffer,
    scale: &wgpu::Buffer,
) -> Result<()> {
    let params = [
        spec.rows as u32,
        spec.cols as u32,
        spec.threshold.to_bits(),
        spec.mode,
        EPS.to_bits(),
        0,
        0,
        0,
    ];
    let bufs = [(1, x), (2, absmax), (3, scale), (9, gpu.rcp_delta())];
    let shader = Shader::RowScale(spec.dtype);
    gpu.encode(
        enc,
        &shader,
        params,
        &bufs,
        Gpu::grid(spec.rows as u32),
        None,
    )
}

/// Records the row-quant kernel writing `rows * cols` int8 values into `q`; `flags` marks outlier columns
/// (read only with a threshold).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_row_quant(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    spec: RowSpec,
    x: &wgpu::Buffer,
    absmax: &wgpu::Buffer,
    scale: &wgpu::Buffer,
    flags: &wgpu::Buffer,
    q: &wgpu::Buffer,
) -> Result<()> {
    let n = spec.rows * spec.cols;
    let params = [
        spec.rows as u32,
        spec.cols as u32,
        spec.threshold.to_bits(),
        spec.mode,
        (spec.rows > 1) as u32,
        0,
        0,
        0,
    ];
    let bufs = [(1, x), (2, absmax), (3, scale), (4, flags), (5, q)];
    let shader = Shader::RowQuant(spec.dtype);
    gpu.encode(
        enc,
        &shader,
        params,
        &bufs,
        groups(n.div_ceil(4), 256),
        None,
    )
}

/// Records BitNet's activation quantization of `rows x cols` values of `dtype` in `x`: int8 values into `q`
/// (`rows * cols` bytes) and one float32 scale per row into `scale`, exactly as the CPU computes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_act_quant(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    rows: usize,
    cols: usize,
    x: &wgpu::Buffer,
    q: &wgpu::Buffer,
    scale: &wgpu::Buffer,
) -> Result<()> {
    let spec = RowSpec {
        dtype,
        rows,
        cols,
        threshold: 0.0,
        mode: 1,
    };
    // Kept alive by the command buffer once recorded.
    let absmax = gpu.output((rows * 4) as u64);
    let no_flags = gpu.output(4);
    encode_row_scales(gpu, enc, spec, x, &absmax, scale)?;
    encode_row_quant(gpu, enc, spec, x, &absmax, scale, &no_flags, q)
}

fn read_i8(gpu: &Gpu, buf: &wgpu::Buffer, n: usize) -> Result<Vec<i8>> {
    Ok(gpu.read(buf, n)?.into_iter().map(|b| b as i8).collect())
}

pub fn int8_vectorwise_quant(
    gpu: &Gpu,
    a: Floats,
    rows: usize,
    cols: usize,
    threshold: f32,
) -> Result<Int8Rows> {
    let n = rows * cols;
    if n == 0 {
        return Ok(Int8Rows {
            q: Vec::new(),
            row_stats: vec![0.0; rows],
            outlier_cols: (threshold > 0.0).then(Vec::new),
        });
    }
    u32_len("int8_vectorwise_quant", n)?;
    check_binding(gpu, "int8_vectorwise_quant", n * 4)?;
    let spec = RowSpec {
        dtype: a.dtype(),
        rows,
        cols,
        threshold,
        mode: 0,
    };
    let xbuf = gpu.upload(float_bytes(&a));
    let flags = gpu.output((cols * 4) as u64);
    let abuf = gpu.output((rows * 4) as u64);
    let sbuf = gpu.output((rows * 4) as u64);
    let qbuf = gpu.output(n as u64);
    gpu.run(|enc| {
        if threshold > 0.0 {
            let params = [rows as u32, cols as u32, threshold.to_bits(), 0, 0, 0, 0, 0];
            let bufs = [(1, &xbuf), (2, &flags)];
            let shader = Shader::ColOutliers(spec.dtype);
            gpu.encode(enc, &shader, params, &bufs, groups(cols, 256), None)?;
        }
        encode_row_scales(gpu, enc, spec, &xbuf, &abuf, &sbuf)?;
        encode_row_quant(gpu, enc, spec, &xbuf, &abuf, &sbuf, &flags, &qbuf)
    })?;
    let q = read_i8(gpu, &qbuf, n)?;
    let row_stats = gpu.read_f32(&abuf, rows)?;
    let outlier_cols = if threshold > 0.0 {
        let f: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&flags, cols * 4)?);
        Some(
            f.iter()
                .enumerate()
                .filter(|(_, v)| **v != 0)
                .map(|(c, _)| c as i64)
                .collect(),
        )
    } else {
        None
    };
    Ok(Int8Rows {
        q,
        row_stats,
        outlier_cols,
    })
}

#[allow(clippy::too_many_arguments)]
fn elementwise(
    gpu: &Gpu,
    src: &[u8],
    n: usize,
    cols: usize,
    op: u32,
    k: f32,
    row_stats: &[f32],
    col_stats: &[f32],
) -> Result<Vec<f32>> {
    u32_len("elementwise", n)?;
    check_binding(gpu, "elementwise", n * 4)?;
    let sbuf = gpu.upload(src);
    let rbuf = gpu.upload(f32_bytes(row_stats));
    let cbuf = gpu.upload(f32_bytes(col_stats));
    let obuf = gpu.output((n * 4) as u64);
    let params = [n as u32, cols.max(1) as u32, op, k.to_bits(), 0, 0, 0, 0];
    let bufs = [(1, &sbuf), (2, &rbuf), (3, &cbuf), (5, &obuf)];
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &Shader::Elementwise,
            params,
            &bufs,
            groups(n, 256),
            None,
        )
    })?;
    gpu.read_f32(&obuf, n)
}

pub fn int8_vectorwise_dequant(
    gpu: &Gpu,
    q: &[i8],
    row_stats: &[f32],
    cols: usize,
) -> Result<Vec<f32>> {
    if q.is_empty() {
        return Ok(Vec::new());
    }
    const INV_127: f32 = 1.0 / 127.0;
    elementwise(
        gpu,
        i8_bytes(q),
        q.len(),
        cols,
        0,
        INV_127,
        row_stats,
        &[0.0],
    )
}

pub fn int8_linear_matmul(
    gpu: &Gpu,
    a: &[i8],
    b: &[i8],
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<i32>> {
    if m == 0 || n == 0 {
        return Ok(vec![0; m * n]);
    }
    u32_len("int8_linear_matmul", (m * k).max(n * k).max(m * n))?;
    check_binding(gpu, "int8_linear_matmul", (m * k).max(n * k).max(m * n * 4))?;
    let abuf = gpu.upload(i8_bytes(a));
    let bbuf = gpu.upload(i8_bytes(b));
    let ybuf = gpu.output((m * n * 4) as u64);
    let bufs = [(1, &abuf), (2, &bbuf), (6, &ybuf)];
    gpu.run(|enc| encode_gemm(gpu, enc, GemmKind::Int8, m, n, k, 0, 0, &bufs))?;
    Ok(bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, m * n * 4)?))
}

pub fn int8_mm_dequant(
    gpu: &Gpu,
    c: &[i32],
    row_stats: &[f32],
    col_stats: &[f32],
    bias: Option<Floats>,
) -> Result<Vec<f16>> {
    if c.is_empty() {
        return Ok(Vec::new());
    }
    let n = col_stats.len().max(1);
    let t = elementwise(
        gpu,
        bytemuck::cast_slice(c),
        c.len(),
        n,
        1,
        0.0,
        row_stats,
        col_stats,
    )?;
    // CUDA's single-rounding fmaf, then RNE to f16, on the host: a Vulkan shader's fma may round twice.
    Ok(t.iter()
        .enumerate()
        .map(|(i, &t)| {
            let b = bias.map_or(0.0, |b| b.get_f32(i % n));
            mm_dequant_output(t, b)
        })
        .collect())
}

pub fn ternary_quantize(
    gpu: &Gpu,
    w: Floats,
    rows: usize,
    cols: usize,
    weight_scale: f32,
) -> Result<Vec<u8>> {
    let r_rows = packed_rows(rows);
    let nbytes = r_rows * cols;
    if nbytes == 0 {
        return Ok(Vec::new());
    }
    u32_len("ternary_quantize", rows * cols)?;
    check_binding(gpu, "ternary_quantize", w.len() * w.dtype().size_in_bytes())?;
    let xbuf = gpu.upload(float_bytes(&w));
    let pbuf = gpu.output(nbytes as u64);
    let params = [
        rows as u32,
        cols as u32,
        r_rows as u32,
        weight_scale.to_bits(),
        0,
        0,
        0,
        0,
    ];
    let bufs = [(1, &xbuf), (2, &pbuf)];
    let shader = Shader::TernaryQuantize(w.dtype());
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &shader,
            params,
            &bufs,
            groups(nbytes.div_ceil(4), 256),
            None,
        )
    })?;
    gpu.read(&pbuf, nbytes)
}

pub fn ternary_act_quant(
    gpu: &Gpu,
    x: Floats,
    rows: usize,
    cols: usize,
) -> Result<(Vec<i8>, Vec<f32>)> {
    if rows * cols == 0 {
        let s = vec![crate::format::ternary::activation_scale(0.0); rows];
        return Ok((Vec::new(), s));
    }
    u32_len("ternary_act_quant", rows * cols)?;
    check_binding(gpu, "ternary_act_quant", rows * cols * 4)?;
    let xbuf = gpu.upload(float_bytes(&x));
    let qbuf = gpu.output((rows * cols) as u64);
    let sbuf = gpu.output((rows * 4) as u64);
    gpu.run(|enc| encode_ternary_act_quant(gpu, enc, x.dtype(), rows, cols, &xbuf, &qbuf, &sbuf))?;
    Ok((
        read_i8(gpu, &qbuf, rows * cols)?,
        gpu.read_f32(&sbuf, rows)?,
    ))
}

/// The ternary GEMV kernel and grid for `r_rows` packed rows of `cols` bytes (cols % 4 == 0): the vectorised
/// one when rows are whole 16-byte words.
pub(crate) fn ternary_gemv_kernel(
    gpu: &Gpu,
    r_rows: usize,
    cols: usize,
    force: Option<GemvShape>,
) -> (Shader, (u32, u32, u32)) {
    if cols.is_multiple_of(16) {
        let shape = force.unwrap_or_else(|| ternary_gemv_split(gpu));
        (
            Shader::TernaryGemvFast(shape),
            groups(r_rows, shape.rows_per_group()),
        )
    } else {
        (Shader::TernaryGemv, Gpu::grid(r_rows as u32))
    }
}

/// Records BitNet's exact integer product `acc[b, o] = sum_k xq[b, k] * w[o, k]` (`[batch, rows]` i32): the GEMV
/// kernels at batch 1 when cols % 4 == 0 (`force` pins the vectorised one's work split), else the ternary GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_matmul(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    batch: usize,
    rows: usize,
    cols: usize,
    xq: &wgpu::Buffer,
    w: &wgpu::Buffer,
    acc: &wgpu::Buffer,
    force: Option<GemvShape>,
) -> Result<()> {
    let r_rows = packed_rows(rows);
    if batch == 1 && cols.is_multiple_of(4) {
        let params = [rows as u32, cols as u32, r_rows as u32, 0, 0, 0, 0, 0];
        let bufs = [(1, xq), (2, w), (3, acc)];
        let (shader, grid) = ternary_gemv_kernel(gpu, r_rows, cols, force);
        gpu.encode(enc, &shader, params, &bufs, grid, None)
    } else {
        let bufs = [(1, xq), (2, w), (6, acc)];
        let kind = GemmKind::Ternary;
        encode_gemm(gpu, enc, kind, batch, rows, cols, 0, r_rows as u32, &bufs)
    }
}

/// Records BitNet's final scaling `y[b, o] = f32(acc[b, o]) / (x_scale[b] * weight_scale)` (`[batch, rows]`),
/// bit-exact with the CPU: conversion, product and quotient are correctly rounded on integer bit patterns
/// (`ternary_rescale.wgsl`), since WGSL's own division is not. NaN results are a canonical quiet NaN.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_rescale(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    batch: usize,
    rows: usize,
    weight_scale: f32,
    acc: &wgpu::Buffer,
    x_scale: &wgpu::Buffer,
    y: &wgpu::Buffer,
) -> Result<()> {
    let n = u32_len("ternary_rescale", batch * rows)?;
    let params = [n, rows as u32, weight_scale.to_bits(), 0, 0, 0, 0, 0];
    let bufs = [(1, acc), (2, x_scale), (3, y)];
    let grid = groups(batch * rows, 256);
    gpu.encode(enc, &Shader::TernaryRescale, params, &bufs, grid, None)
}

/// The GPU's exact BitNet scaling on host data (tests compare it with the CPU's division on any bit patterns).
pub fn ternary_rescale(
    gpu: &Gpu,
    acc: &[i32],
    x_scale: &[f32],
    weight_scale: f32,
    rows: usize,
) -> Result<Vec<f32>> {
    let batch = x_scale.len();
    if acc.len() != batch * rows {
        return Err(crate::Error::shape(
            "ternary_rescale",
            format!(
                "{} accumulators for {batch} scales x {rows} rows",
                acc.len()
            ),
        ));
    }
    if acc.is_empty() {
        return Ok(Vec::new());
    }
    check_binding(gpu, "ternary_rescale", acc.len() * 4)?;
    let abuf = gpu.upload(bytemuck::cast_slice(acc));
    let sbuf = gpu.upload(f32_bytes(x_scale));
    let ybuf = gpu.output((acc.len() * 4) as u64);
    gpu.run(|enc| {
        encode_ternary_rescale(gpu, enc, batch, rows, weight_scale, &abuf, &sbuf, &ybuf)
    })?;
    gpu.read_f32(&ybuf, acc.len())
}

/// `force` pins the work split of the vectorised batch-1 kernel (tests and benchmarks).
pub fn ternary_matmul(
    gpu: &Gpu,
    xq: &[i8],
    x_scale: &[f32],
    batch: usize,
    w: &PackedTernary,
    bias: Option<Floats>,
    force: Option<GemvShape>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 || batch == 0 {
        return Ok(vec![0.0; rows * batch]);
    }
    u32_len(
        "ternary_matmul",
        (batch * cols).max(w.packed.len()).max(batch * rows),
    )?;
    check_binding(gpu, "ternary_matmul", w.packed.len().max(batch * rows * 4))?;
    let abuf = gpu.upload(i8_bytes(xq));
    let wbuf = gpu.upload(w.packed);
    let ybuf = gpu.output((batch * rows * 4) as u64);
    gpu.run(|enc| encode_ternary_matmul(gpu, enc, batch, rows, cols, &abuf, &wbuf, &ybuf, force))?;
    let acc: Vec<i32> = bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, batch * rows * 4)?);
    // The true float32 division of host callers stays on the host, where it is exact for free (the resident
    // path uses `encode_ternary_rescale` instead).
    Ok(acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let (b, o) = (i / rows, i % rows);
            rescale(a, x_scale[b], w.weight_scale) + bias.map_or(0.0, |bb| bb.get_f32(o))
        })
        .collect())
}

/// Records softmax (`rms` false) or RMSNorm (weight, `eps`) over `rows` rows of `cols`; `bufs` binds x, weight
/// (a placeholder for softmax) and y at 1..=3.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_rows_float(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    rows: usize,
    cols: usize,
    rms: bool,
    eps: f32,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
    let params = [
        rows as u32,
        cols as u32,
        rms as u32,
        eps.to_bits(),
        0,
        0,
        0,
        0,
    ];
    gpu.encode(
        enc,
        &Shader::RowsFloat,
        params,
        bufs,
        Gpu::grid(rows as u32),
        None,
    )
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
        None => gpu.output(4),
    };
    let ybuf = gpu.output((x.len() * 4) as u64);
    let bufs = [(1, &xbuf), (2, &wbuf), (3, &ybuf)];
    gpu.run(|enc| encode_rows_float(gpu, enc, rows, cols, weight.is_some(), eps, &bufs))?;
    gpu.read_f32(&ybuf, x.len())
}
