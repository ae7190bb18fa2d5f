//! Host side of each kernel: upload, dispatch (in pieces where a tensor exceeds the adapter's largest storage
//! binding, e.g. lavapipe's 128 MiB), read back, and the final host-side steps that must be exact (f16/bf16
//! narrowing, BitNet's true division).

use super::context::{Gpu, gpu_err, gpu_oom};
use super::shaders::{DEQUANTIZE_VPT, Encoding, GemmKind, GemvShape, QUANTIZE_ROWS, Shader};
use crate::Result;
use crate::backend::{BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::format::Codebook8;
use crate::format::int8::MM_DEQUANT_SCALE;
use crate::format::ternary::{EPS, packed_rows};
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

fn u32_len(op: &'static str, n: usize) -> Result<u32> {
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
/// reductions' barriers and put more loads in flight per thread).
pub(crate) const QUANTIZE_ROWS_DEFAULT: u32 = 2;

/// Vec4 stores per dequantize thread.
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
        let bufs = [(1, &cbuf), (2, &abuf), (3, &tbuf), (4, &obuf)];
        let (shader, grid) = dequantize_plan(bits, vpt, len);
        gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, grid, None))?;
        out.extend(gpu.read_f32(&obuf, len)?);
    }
    Ok(out)
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
        Shader::Gemv4bitFast(force.unwrap_or_else(|| gemv_shape(gpu, rows, cols / 32)))
    } else {
        Shader::Gemv4bit
    }
}

/// The work split for a GEMV over `rows` rows of `chunks` 16-byte words each: enough threads per row to keep
/// the memory system busy at small widths, several rows per thread (one read of x serves them all) when rows
/// are long; subgroup reductions when the adapter's subgroups fit in a row set.
pub(crate) fn gemv_shape(gpu: &Gpu, rows: usize, chunks: usize) -> GemvShape {
    let _ = rows;
    let mut shape = if chunks <= 256 {
        GemvShape::new(64, 2)
    } else {
        GemvShape::new(128, 2)
    };
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

fn check_binding(gpu: &Gpu, op: &'static str, bytes: usize) -> Result<()> {
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
    let params = [
        batch as u32,
        rows as u32,
        cols as u32,
        has_bias,
        w.blocksize.trailing_zeros(),
        0,
        0,
        0,
    ];
    let bufs = [
        (1, &xbuf),
        (2, &pbuf),
        (3, &abuf),
        (4, &tbuf),
        (5, &bbuf),
        (6, &ybuf),
    ];
    let shader = Shader::Gemm(GemmKind::FourBit);
    gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, gemm_grid(batch, rows), None))?;
    gpu.read_f32(&ybuf, batch * rows)
}

pub fn matmul(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    bias: Option<Floats>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    u32_len("matmul", (m * k).max(n * k).max(m * n))?;
    check_binding(gpu, "matmul", (m * k).max(n * k).max(m * n) * 4)?;
    let xbuf = gpu.upload(f32_bytes(x));
    let wbuf = gpu.upload(f32_bytes(w));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((m * n * 4) as u64);
    let params = [m as u32, n as u32, k as u32, has_bias, 0, 0, 0, 0];
    let bufs = [(1, &xbuf), (2, &wbuf), (5, &bbuf), (6, &ybuf)];
    let shader = Shader::Gemm(GemmKind::DenseF32);
    gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, gemm_grid(m, n), None))?;
    gpu.read_f32(&ybuf, m * n)
}

/// Runs the row-scale kernel (absmax + scale per row) for LLM.int8() (mode 0) or BitNet (mode 1).
fn row_scales(
    gpu: &Gpu,
    xbuf: &wgpu::Buffer,
    dtype: DType,
    rows: usize,
    cols: usize,
    threshold: f32,
    mode: u32,
) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    let abuf = gpu.output((rows * 4) as u64);
    let sbuf = gpu.output((rows * 4) as u64);
    let params = [
        rows as u32,
        cols as u32,
        threshold.to_bits(),
        mode,
        EPS.to_bits(),
        0,
        0,
        0,
    ];
    let bufs = [(1, xbuf), (2, &abuf), (3, &sbuf), (9, gpu.rcp_delta())];
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &Shader::RowScale(dtype),
            params,
            &bufs,
            Gpu::grid(rows as u32),
            None,
        )
    })?;
    Ok((abuf, sbuf))
}

#[allow(clippy::too_many_arguments)]
fn row_quant(
    gpu: &Gpu,
    xbuf: &wgpu::Buffer,
    dtype: DType,
    abuf: &wgpu::Buffer,
    sbuf: &wgpu::Buffer,
    flags: &wgpu::Buffer,
    rows: usize,
    cols: usize,
    threshold: f32,
    mode: u32,
) -> Result<Vec<i8>> {
    let n = rows * cols;
    let qbuf = gpu.output(n as u64);
    let params = [
        rows as u32,
        cols as u32,
        threshold.to_bits(),
        mode,
        (rows > 1) as u32,
        0,
        0,
        0,
    ];
    let bufs = [(1, xbuf), (2, abuf), (3, sbuf), (4, flags), (5, &qbuf)];
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &Shader::RowQuant(dtype),
            params,
            &bufs,
            groups(n.div_ceil(4), 256),
            None,
        )
    })?;
    Ok(gpu.read(&qbuf, n)?.into_iter().map(|b| b as i8).collect())
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
    let dtype = a.dtype();
    let xbuf = gpu.upload(float_bytes(&a));
    let flags = gpu.output((cols * 4) as u64);
    if threshold > 0.0 {
        let params = [rows as u32, cols as u32, threshold.to_bits(), 0, 0, 0, 0, 0];
        let bufs = [(1, &xbuf), (2, &flags)];
        gpu.run(|enc| {
            gpu.encode(
                enc,
                &Shader::ColOutliers(dtype),
                params,
                &bufs,
                groups(cols, 256),
                None,
            )
        })?;
    }
    let (abuf, sbuf) = row_scales(gpu, &xbuf, dtype, rows, cols, threshold, 0)?;
    let q = row_quant(
        gpu, &xbuf, dtype, &abuf, &sbuf, &flags, rows, cols, threshold, 0,
    )?;
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
    bias: Option<Floats>,
) -> Result<Vec<f32>> {
    u32_len("elementwise", n)?;
    check_binding(gpu, "elementwise", n * 4)?;
    let sbuf = gpu.upload(src);
    let rbuf = gpu.upload(f32_bytes(row_stats));
    let cbuf = gpu.upload(f32_bytes(col_stats));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let obuf = gpu.output((n * 4) as u64);
    let params = [
        n as u32,
        cols.max(1) as u32,
        op,
        k.to_bits(),
        has_bias,
        0,
        0,
        0,
    ];
    let bufs = [(1, &sbuf), (2, &rbuf), (3, &cbuf), (4, &bbuf), (5, &obuf)];
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
        None,
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
    let params = [m as u32, n as u32, k as u32, 0, 0, 0, 0, 0];
    let bufs = [(1, &abuf), (2, &bbuf), (6, &ybuf)];
    let shader = Shader::Gemm(GemmKind::Int8);
    gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, gemm_grid(m, n), None))?;
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
    let y = elementwise(
        gpu,
        bytemuck::cast_slice(c),
        c.len(),
        col_stats.len(),
        1,
        MM_DEQUANT_SCALE,
        row_stats,
        col_stats,
        bias,
    )?;
    Ok(y.into_iter().map(f16::from_f32).collect())
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
    let dtype = x.dtype();
    let xbuf = gpu.upload(float_bytes(&x));
    let (abuf, sbuf) = row_scales(gpu, &xbuf, dtype, rows, cols, 0.0, 1)?;
    let flags = gpu.output(4);
    let q = row_quant(gpu, &xbuf, dtype, &abuf, &sbuf, &flags, rows, cols, 0.0, 1)?;
    Ok((q, gpu.read_f32(&sbuf, rows)?))
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
        let shape = force.unwrap_or_else(|| gemv_shape(gpu, r_rows, cols / 16));
        (
            Shader::TernaryGemvFast(shape),
            groups(r_rows, shape.rows_per_group()),
        )
    } else {
        (Shader::TernaryGemv, Gpu::grid(r_rows as u32))
    }
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
    let params = [
        batch as u32,
        rows as u32,
        cols as u32,
        0,
        packed_rows(rows) as u32,
        0,
        0,
        0,
    ];
    if batch == 1 && cols % 4 == 0 {
        let r_rows = packed_rows(rows);
        let params = [rows as u32, cols as u32, r_rows as u32, 0, 0, 0, 0, 0];
        let bufs = [(1, &abuf), (2, &wbuf), (3, &ybuf)];
        let (shader, grid) = ternary_gemv_kernel(gpu, r_rows, cols, force);
        gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, grid, None))?;
    } else {
        let bufs = [(1, &abuf), (2, &wbuf), (6, &ybuf)];
        let shader = Shader::Gemm(GemmKind::Ternary);
        gpu.run(|enc| gpu.encode(enc, &shader, params, &bufs, gemm_grid(batch, rows), None))?;
    }
    let acc: Vec<i32> = bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, batch * rows * 4)?);
    // The true float32 division stays on the host: WGSL's division is not correctly rounded.
    Ok(acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let (b, o) = (i / rows, i % rows);
            a as f32 / (x_scale[b] * w.weight_scale) + bias.map_or(0.0, |bb| bb.get_f32(o))
        })
        .collect())
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
    let op = weight.is_some() as u32;
    let params = [rows as u32, cols as u32, op, eps.to_bits(), 0, 0, 0, 0];
    let bufs = [(1, &xbuf), (2, &wbuf), (3, &ybuf)];
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &Shader::RowsFloat,
            params,
            &bufs,
            Gpu::grid(rows as u32),
            None,
        )
    })?;
    gpu.read_f32(&ybuf, x.len())
}
