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

// The same quantizers in vector form, for n a multiple of 8 and 16-byte aligned input (the host checks):
// eight consecutive values per thread (one or two 16-byte loads), blocksize / 8 consecutive threads per
// quantization block (a power of two from 4 to 512; a thread block holds max(256, blocksize / 8) threads),
// the block's absmax by shuffles (and through shared memory across warps past 256 values), then the very
// same per-value operations: the bytes are the scalar kernels'. (One thread block per 32-value quantization
// block left most of each SM idle; now each value's code search is the limit, docs/PERFORMANCE.md.)
template <int DT> __device__ __forceinline__ void load8(const void* x, u64 g, float (&v)[8]) {
    if constexpr (DT == DT_F32) {
        const float4* p = (const float4*)x + 2 * g;
        float4 a = __ldg(p), b = __ldg(p + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        uint4 w = __ldg((const uint4*)x + g);
        u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int t = 0; t < 4; t++) {
            v[2 * t] = DT == DT_F16 ? h2f((u16)(ws[t] & 0xffffu)) : b2f((u16)(ws[t] & 0xffffu));
            v[2 * t + 1] = DT == DT_F16 ? h2f((u16)(ws[t] >> 16)) : b2f((u16)(ws[t] >> 16));
        }
    }
}

// The max of `m` over the `threads` consecutive threads of this thread's group (a power of two; groups
// aligned to it). `red` holds one float per warp. Every thread of the block calls it (barriers).
__device__ __forceinline__ float group_max(float m, u32 threads, float* red) {
    u32 lanes = threads < 32 ? threads : 32;
    for (u32 off = 1; off < lanes; off <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threads > 32) {
        // The group's warp maxima: each lane reads one (lane mod per), shuffles combine them, so a thread
        // reads shared memory once per round instead of once per warp of its group (up to 16).
        u32 warp = threadIdx.x >> 5, per = threads >> 5, w0 = warp / per * per;
        __syncthreads();  // the previous round's readers are done with `red`
        if ((threadIdx.x & 31) == 0) red[warp] = m;
        __syncthreads();
        m = red[w0 + (threadIdx.x & (per - 1))];
        for (u32 off = 1; off < per; off <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    }
    return m;
}

// Values 8g .. 8g + 7 into v (zeros past n8: they leave the max alone), and their quantization block's
// absmax over its `per` threads (group_max: every thread of the block calls this).
template <int DT>
__device__ __forceinline__ float load8_absmax(const void* x, u64 g, u64 n8, u32 per, float* red, float (&v)[8]) {
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] = 0.0f;
    if (g < n8) load8<DT>(x, g, v);
    float m = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++) m = fmaxf(m, fabsf(v[e]));
    return group_max(m, per, red);
}

// Thread g of the grid-stride loop takes values 8g .. 8g + 7; past n8 it takes zeros (they leave the max
// alone) and stores nothing. The loop bound is the block's first g, so every thread of a block runs the
// same trips (group_max's barriers).
#define FOR_EACH_8(n8)                                                                                        \
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g - threadIdx.x < (n8);                          \
         g += (u64)gridDim.x * blockDim.x)

// NF4 through a table of 32 cells of width 1/16 over [-1, 1]: the 15 thresholds are at least 0.08 apart,
// so a cell holds at most one, and the count of thresholds below s is the cell's count below its lower edge
// plus one compare with the threshold inside it (+inf if none). A value past +-1 (or infinite) lands in
// the end cell, NaN in cell 0 (code 0, as quantize_nibble). Each lane reads its own copy of the table, so
// lanes never wait on one another's bank. The same code as quantize_nibble for every float: checked over all
// 2^32 bit patterns on an H200, and near every threshold and cell edge by the conformance suite. (The
// select-tree search held the kernel to half the copy rate; a table read is one shared-memory load.)
#define NF4_CELLS 32
__device__ __forceinline__ void nf4_cell_table(const float* thr_g, float2* table) {
    for (u32 i = threadIdx.x; i < NF4_CELLS * 32; i += blockDim.x) {
        float lo = (float)(i >> 5) * (2.0f / NF4_CELLS) - 1.0f, hi = lo + 2.0f / NF4_CELLS;
        u32 below = 0;
        float inside = __int_as_float(0x7f800000);
        for (int t = 0; t < 15; t++) {
            float v = __ldg(thr_g + t);
            below += v < lo;
            if (v >= lo && v < hi) inside = v;
        }
        table[i] = make_float2(inside, __uint_as_float(below));
    }
}
__device__ __forceinline__ u32 nf4_code(float s, const float2* table, u32 lane) {
    int c = min(max(__float2int_rz(fmaf(s, NF4_CELLS / 2, NF4_CELLS / 2)), 0), NF4_CELLS - 1);
    float2 e = table[c * 32 + lane];
    return __float_as_uint(e.y) + (s > e.x ? 1u : 0u);
}

template <int DT>
__device__ void quantize_4bit_x8_impl(const void* x, u64 n8, u32 blocksize, int fp4, const float* thr_g,
                                      const u8* fp4_bits_g, u32* packed, float* absmax) {
    __shared__ float red[32];
    __shared__ u8 bits[8];
    __shared__ float2 cells[NF4_CELLS * 32];
    if (threadIdx.x < 8) bits[threadIdx.x] = fp4_bits_g[threadIdx.x];
    float thr[15];
#pragma unroll
    for (int t = 0; t < 15; t++) thr[t] = __ldg(thr_g + t);
    if (!fp4) nf4_cell_table(thr_g, cells);
    __syncthreads();
    u32 lane = threadIdx.x & 31, per = blocksize >> 3, shift = __ffs(per) - 1;
    FOR_EACH_8(n8) {
        float v[8];
        float m = load8_absmax<DT>(x, g, n8, per, red, v);
        float r = rcp_approx(m);
        if (g < n8) {
            u32 word = 0;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                float sh = mul_ftz(v[2 * b], r), sl = mul_ftz(v[2 * b + 1], r);
                u32 hi = fp4 ? quantize_nibble(sh, fp4, thr, bits) : nf4_code(sh, cells, lane);
                u32 lo = fp4 ? quantize_nibble(sl, fp4, thr, bits) : nf4_code(sl, cells, lane);
                word |= ((hi << 4) | lo) << (8 * b);
            }
            packed[g] = word;
            if ((threadIdx.x & (per - 1)) == 0) absmax[g >> shift] = m;
        }
    }
}

// The 8-bit code through a table of cells over s's bits: per sign, one cell per exponent from C8_EMIN up and
// top 6 mantissa bits (|s| in [2^-27, 2): 1/64 of an octave each), one cell below and one above. A cell
// holds at most one of bitsandbytes' dynamic-code midpoints (which are roughly log-spaced), so the count of
// midpoints below s is the cell's count below its first value plus one compare with the midpoint inside it.
// The tie rule (s on a midpoint goes to the even index) is folded into that compare: where the count below
// the cell is odd, the cell's threshold is the float just under the midpoint (s >= m instead of s > m).
// A cell of a code that puts two midpoints in it is marked (count + 256) and takes the binary search. The
// table is built per block from the midpoints (a binary search per cell), then every value costs one
// shared-memory read. Equal to `quantize_code8` for every float with both dynamic maps: checked over all
// 2^32 bit patterns on an H200. (The two-level search this replaces held the kernel to a quarter of the
// copy rate.)
#define C8_EMIN 100
#define C8_EXPS 28
#define C8_PER_SIGN (C8_EXPS * 64 + 2)
#define C8_CELLS (2 * C8_PER_SIGN)
__device__ __forceinline__ u32 code8_cell(float s) {
    u32 u = __float_as_uint(s);
    int t = (int)((u & 0x7fffffffu) >> 17) - (C8_EMIN << 6) + 1;
    t = min(max(t, 0), C8_PER_SIGN - 1);
    return (u32)(C8_PER_SIGN + (t ^ ((int)u >> 31)));  // negative s: cells below, in value order
}

// The number of midpoints strictly below v.
__device__ __forceinline__ u32 mids_below(float v, const float* mids) {
    u32 lo = 0, hi = 255;
    while (lo < hi) {
        u32 mid = (lo + hi) >> 1;
        if (__ldg(mids + mid) < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

__device__ void code8_cell_table(const float* mids, float2* table) {
    for (u32 i = threadIdx.x; i < C8_CELLS; i += blockDim.x) {
        bool neg = i < C8_PER_SIGN;
        u32 t = neg ? C8_PER_SIGN - 1 - i : i - C8_PER_SIGN;
        // The cell's magnitudes as float bits [alo, ahi); the last one reaches infinity.
        u32 alo = t == 0 ? 0u : t == C8_PER_SIGN - 1 ? (u32)(C8_EMIN + C8_EXPS) << 23 : (t - 1 + (C8_EMIN << 6)) << 17;
        u32 ahi = t == 0 ? (u32)C8_EMIN << 23 : t == C8_PER_SIGN - 1 ? 0x7f800001u : alo + (1u << 17);
        float lo = neg ? -__uint_as_float(ahi - 1) : __uint_as_float(alo);
        float hi = neg ? -__uint_as_float(alo) : __uint_as_float(ahi - 1);
        u32 below = mids_below(lo, mids);
        float thr = __int_as_float(0x7f800000);
        if (below < 255 && __ldg(mids + below) <= hi) {
            float m = __ldg(mids + below);
            if (below + 1 < 255 && __ldg(mids + below + 1) <= hi) below |= 256u;
            // s >= m where the tie goes up (odd count below), s > m otherwise.
            thr = (below & 1) ? __uint_as_float(__float_as_uint(m) + (m > 0.0f ? -1 : 1)) : m;
            if ((below & 1) && m == 0.0f) thr = -__uint_as_float(1u);
        }
        table[i] = make_float2(thr, __uint_as_float(below));
    }
}

__device__ __forceinline__ u32 code8(float s, const float2* table, const float* mids) {
    float2 e = table[code8_cell(s)];
    u32 q = __float_as_uint(e.y) + (s > e.x ? 1u : 0u);
    if (q > 255u) q = quantize_code8(s, mids);  // a cell with two midpoints
    return isnan(s) ? 0u : q;
}

template <int DT>
__device__ void quantize_blockwise_x8_impl(const void* x, u64 n8, u32 blocksize, const float* mids,
                                           uint2* codes, float* absmax) {
    __shared__ float red[32];
    __shared__ float2 cells[C8_CELLS];
    code8_cell_table(mids, cells);
    __syncthreads();
    u32 per = blocksize >> 3, shift = __ffs(per) - 1;
    FOR_EACH_8(n8) {
        float v[8];
        float m = load8_absmax<DT>(x, g, n8, per, red, v);
        float r = rcp_approx(m);
        if (g < n8) {
            u32 w[2] = {0, 0};
#pragma unroll
            for (int e = 0; e < 8; e++) w[e >> 2] |= code8(mul_ftz(v[e], r), cells, mids) << (8 * (e & 3));
            codes[g] = make_uint2(w[0], w[1]);
            if ((threadIdx.x & (per - 1)) == 0) absmax[g >> shift] = m;
        }
    }
}


// Every quantizer for each input dtype: the scalar kernels and the vector forms.
#define QUANT_KERNELS(SUFFIX, DT)                                                                              \
    extern "C" __global__ void quantize_blockwise_##SUFFIX(const void* x, u64 n, u32 blocksize,              \
                                                           const float* mids, u8* codes, float* absmax) { pdl_entry(); \
        quantize_blockwise_impl<DT>(x, n, blocksize, mids, codes, absmax);                                   \
    }                                                                                                         \
    extern "C" __global__ void quantize_4bit_##SUFFIX(const void* x, u64 n, u32 blocksize, int fp4,          \
                                                      const float* thr, const u8* fp4_bits, u8* packed,       \
                                                      float* absmax) { pdl_entry();                           \
        quantize_4bit_impl<DT>(x, n, blocksize, fp4, thr, fp4_bits, packed, absmax);                         \
    }                                                                                                         \
    extern "C" __global__ void quantize_blockwise_x8_##SUFFIX(const void* x, u64 n8, u32 blocksize,          \
                                                              const float* mids, uint2* codes,                \
                                                              float* absmax) { pdl_entry();                   \
        quantize_blockwise_x8_impl<DT>(x, n8, blocksize, mids, codes, absmax);                               \
    }                                                                                                         \
    extern "C" __global__ void quantize_4bit_x8_##SUFFIX(const void* x, u64 n8, u32 blocksize, int fp4,      \
                                                         const float* thr, const u8* fp4_bits, u32* packed,   \
                                                         float* absmax) { pdl_entry();                        \
        quantize_4bit_x8_impl<DT>(x, n8, blocksize, fp4, thr, fp4_bits, packed, absmax);                     \
    }
QUANT_KERNELS(f32, DT_F32)
QUANT_KERNELS(f16, DT_F16)
QUANT_KERNELS(bf16, DT_BF16)

// out[i] = ftz(table[code_i] * absmax[i / blocksize]), written in `odt`; `bits` 8 (one code per byte) or 4
// (nibbles, element 2k the high nibble of byte k).
extern "C" __global__ void dequantize(const u8* q, const float* absmax, const float* table, u32 bits, u64 n,
                                      u32 blocksize, void* out, int odt) {
    pdl_entry();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 c = bits == 8 ? q[i] : ((i & 1) ? (q[i >> 1] & 15u) : (q[i >> 1] >> 4));
        st_dt(out, i, odt, ftz(__fmul_rn(table[c], absmax[i / blocksize])));
    }
}

// Eight values in `odt` at out[8g ..]: 16-byte stores (two in f32).
__device__ __forceinline__ void store8(void* out, u64 g, int odt, const float (&v)[8]) {
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

// The 4-bit dequantizer for n % 8 == 0 (every 4-bit block size is a multiple of 8, so eight consecutive
// values share one absmax): a thread turns 4 packed bytes into 8 values and writes them with 16-byte stores
// (two in f32), the bandwidth-bound form of `dequantize` that the batched linear layers stream through.
extern "C" __global__ void dequantize_4bit_x8(const u32* q, const float* absmax, const float* table_g, u64 n8,
                                              u32 blocksize, void* out, int odt) {
    pdl_entry();
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    __syncthreads();
    // A power-of-two blocksize (every 4-bit one) indexes absmax by a shift, not a 64-bit division.
    bool pow2 = (blocksize & (blocksize - 1)) == 0;
    u32 shift = __ffs(blocksize) - 1;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < n8; g += (u64)gridDim.x * blockDim.x) {
        u32 w = __ldg(q + g);
        float a = __ldg(absmax + (pow2 ? (g * 8) >> shift : (g * 8) / blocksize));
        float v[8];
#pragma unroll
        for (int b = 0; b < 4; b++) {
            u32 byte = (w >> (8 * b)) & 255u;
            v[2 * b] = ftz(__fmul_rn(table[byte >> 4], a));
            v[2 * b + 1] = ftz(__fmul_rn(table[byte & 15u], a));
        }
        store8(out, g, odt, v);
    }
}

// The 8-bit dequantizer for n % 8 == 0 and a power-of-two blocksize (8-bit blocks hold at least 64 values):
// a thread turns 8 codes (one 8-byte load) into 8 values with one absmax (index g >> shift, shift =
// log2(blocksize / 8)), the table in shared memory, 16-byte stores.
extern "C" __global__ void dequantize_8bit_x8(const uint2* q, const float* absmax, const float* table_g, u64 n8,
                                              u32 shift, void* out, int odt) {
    pdl_entry();
    __shared__ float table[256];
    for (u32 i = threadIdx.x; i < 256; i += blockDim.x) table[i] = table_g[i];
    __syncthreads();
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < n8; g += (u64)gridDim.x * blockDim.x) {
        uint2 w = __ldg(q + g);
        float a = __ldg(absmax + (g >> shift));
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            u32 byte = ((e < 4 ? w.x : w.y) >> (8 * (e & 3))) & 255u;
            v[e] = ftz(__fmul_rn(table[byte], a));
        }
        store8(out, g, odt, v);
    }
}
