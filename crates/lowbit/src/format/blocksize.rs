//! Block sizes bitsandbytes' CUDA kernels accept (FORMATS.md §8).

/// `quantize_blockwise` / `dequantize_blockwise` (8-bit). 32 is rejected by the CUDA build.
pub const BLOCKSIZES_8BIT: &[usize] = &[64, 128, 256, 512, 1024, 2048, 4096];
/// `quantize_4bit` / `dequantize_4bit` (NF4, FP4).
pub const BLOCKSIZES_4BIT: &[usize] = &[32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Double quantization always quantizes the absmax vector with this block size.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Number of blocks covering `n` values (the last one may be partial).
pub fn num_blocks(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}
