// Blockwise quantization (FORMATS.md §2-3): one thread block per quantization block. absmax is an exact max
// of |x| (fmaxf skips NaN, as CUDA's), the scale the hardware reciprocal, every scaled value one FTZ
// multiply; then the nearest 8-bit code (binary search over the code's midpoints, ties to the even index)
// or the NF4/FP4 nibble. Grid: one thread block per quantization block along x (2^31 - 1 blocks at most).

__device__ __forceinline__ u64 grid_block() { return (u64)blockIdx.x; }

template <int DT>
__device__ float block_absmax(const void* x, u64 start, u64 end) {
    float m = 0.0f;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) m = fmaxf(m, fabsf(ldf<DT>(x, i)));
    return block_max(m, 0.0f);
}

__device__ __forceinline__ u8 quantize_code8(float s, const float* mids) {
    if (isnan(s)) return 0;
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (mids[mid] < s) lo = mid + 1; else hi = mid;
    }
    if (lo < 255 && mids[lo] == s && (lo & 1)) lo += 1;
    return (u8)lo;
}

// NF4: thresholds strictly below s (15 of them); FP4: sign iff s < 0, magnitude rank by strict `>` over 7
// thresholds mapped through `fp4_bits`. NaN gives 0 for both.
__device__ __forceinline__ u8 quantize_nibble(float s, int fp4, const float* thr, const u8* fp4_bits) {
    if (isnan(s)) return 0;
    if (!fp4) {
        u8 q = 0;
#pragma unroll
        for (int t = 0; t < 15; t++) q += thr[t] < s;
        return q;
    }
    float a = fabsf(s);
    int r = 0;
#pragma unroll
    for (int t = 0; t < 7; t++) r += a > thr[t];
    return fp4_bits[r] | (s < 0.0f ? 8 : 0);
}

template <int DT>
__device__ void quantize_blockwise_impl(const void* x, u64 n, u32 blocksize, const float* mids_g, u8* codes,
                                        float* absmax) {
    __shared__ float mids[255];
    for (int i = threadIdx.x; i < 255; i += blockDim.x) mids[i] = mids_g[i];
    u64 b = grid_block();
    u64 start = b * blocksize, end = min(start + blocksize, n);
    float m = block_absmax<DT>(x, start, end);
    float r = rcp_approx(m);
    __syncthreads();
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) codes[i] = quantize_code8(mul_ftz(ldf<DT>(x, i), r), mids);
    if (threadIdx.x == 0) absmax[b] = m;
}

template <int DT>
__device__ void quantize_4bit_impl(const void* x, u64 n, u32 blocksize, int fp4, const float* thr_g,
                                   const u8* fp4_bits_g, u8* packed, float* absmax) {
    __shared__ float thr[15];
    __shared__ u8 bits[8];
    if (threadIdx.x < 15) thr[threadIdx.x] = thr_g[threadIdx.x];
    if (threadIdx.x < 8) bits[threadIdx.x] = fp4_bits_g[threadIdx.x];
    u64 b = grid_block();
    u64 start = b * blocksize, end = min(start + blocksize, n);
    float m = block_absmax<DT>(x, start, end);
    float r = rcp_approx(m);
    __syncthreads();
    // Byte k holds element 2k (high nibble) and 2k + 1 (low); past the end a padding 0.0 is quantized.
    for (u64 i = start + 2 * threadIdx.x; i < end; i += 2 * blockDim.x) {
        float lo_v = i + 1 < end ? ldf<DT>(x, i + 1) : 0.0f;
        u8 hi = quantize_nibble(mul_ftz(ldf<DT>(x, i), r), fp4, thr, bits);
        u8 lo = quantize_nibble(mul_ftz(lo_v, r), fp4, thr, bits);
        packed[i >> 1] = (u8)((hi << 4) | lo);
    }
    if (threadIdx.x == 0) absmax[b] = m;
}

#define QUANT_KERNELS(SUFFIX, DT)                                                                              \
    extern "C" __global__ void quantize_blockwise_##SUFFIX(const void* x, u64 n, u32 blocksize,              \
                                                           const float* mids, u8* codes, float* absmax) {     \
        quantize_blockwise_impl<DT>(x, n, blocksize, mids, codes, absmax);                                   \
    }                                                                                                         \
    extern "C" __global__ void quantize_4bit_##SUFFIX(const void* x, u64 n, u32 blocksize, int fp4,          \
                                                      const float* thr, const u8* fp4_bits, u8* packed,       \
                                                      float* absmax) {                                        \
        quantize_4bit_impl<DT>(x, n, blocksize, fp4, thr, fp4_bits, packed, absmax);                         \
    }
QUANT_KERNELS(f32, DT_F32)
QUANT_KERNELS(f16, DT_F16)
QUANT_KERNELS(bf16, DT_BF16)

// out[i] = ftz(table[code_i] * absmax[i / blocksize]), written in `odt`; `bits` 8 (one code per byte) or 4
// (nibbles, element 2k the high nibble of byte k).
extern "C" __global__ void dequantize(const u8* q, const float* absmax, const float* table, u32 bits, u64 n,
                                      u32 blocksize, void* out, int odt) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 c = bits == 8 ? q[i] : ((i & 1) ? (q[i >> 1] & 15u) : (q[i >> 1] >> 4));
        st_dt(out, i, odt, ftz(__fmul_rn(table[c], absmax[i / blocksize])));
    }
}

// The 4-bit dequantizer for n % 8 == 0 (every 4-bit block size is a multiple of 8, so eight consecutive
// values share one absmax): a thread turns 4 packed bytes into 8 values and writes them with 16-byte stores
// (two in f32), the bandwidth-bound form of `dequantize` that the batched linear layers stream through.
extern "C" __global__ void dequantize_4bit_x8(const u32* q, const float* absmax, const float* table_g, u64 n8,
                                              u32 blocksize, void* out, int odt) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    __syncthreads();
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < n8; g += (u64)gridDim.x * blockDim.x) {
        u32 w = __ldg(q + g);
        float a = __ldg(absmax + (g * 8) / blocksize);
        float v[8];
#pragma unroll
        for (int b = 0; b < 4; b++) {
            u32 byte = (w >> (8 * b)) & 255u;
            v[2 * b] = ftz(__fmul_rn(table[byte >> 4], a));
            v[2 * b + 1] = ftz(__fmul_rn(table[byte & 15u], a));
        }
        if (odt == DT_F32) {
            float4* o = (float4*)out + 2 * g;
            o[0] = make_float4(v[0], v[1], v[2], v[3]);
            o[1] = make_float4(v[4], v[5], v[6], v[7]);
        } else {
            u32 h[4];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                u16 lo = odt == DT_F16 ? f2h(v[2 * t]) : f2b(v[2 * t]);
                u16 hi = odt == DT_F16 ? f2h(v[2 * t + 1]) : f2b(v[2 * t + 1]);
                h[t] = (u32)lo | ((u32)hi << 16);
            }
            ((uint4*)out)[g] = make_uint4(h[0], h[1], h[2], h[3]);
        }
    }
}
