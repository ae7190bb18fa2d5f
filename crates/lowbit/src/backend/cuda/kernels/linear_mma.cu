// The tensor-core 4-bit linear kernel, part of the f16 and bf16 linear programs (context.rs appends this
// file to linear.cu for them; common.cuh comes first).

// 4-bit weights on tensor cores, for 2-32 activation rows of f16/bf16 (sm_80 and later; the host keeps one
// row on the word kernel, which measured as fast or faster): the weight in
// bitsandbytes' own layout (nothing repacked), decoded straight into the A fragments of
// `mma.sync.m16n8k16` (weight rows as M, activation rows as N, f32 accumulators). A product sums over k in
// any order, so each lane reads whole bytes and the k positions of the fragments are assigned to match:
// in a span of 128 columns (64 bytes of a row), lane (g = lane / 4, t = lane % 4) reads bytes 16t .. 16t + 15
// of weight rows g and g + 8 (one 16-byte load each: a warp's load covers 8 rows' 64 bytes) and columns
// 32t .. 32t + 31 of activation row g; mma i of the span takes bytes 2i and 2i + 1 (columns 32t + 4i .. + 3)
// as the fragment's columns (2t, 2t + 1, 2t + 8, 2t + 9).
// A byte becomes both of its halves with one 4-byte load from a pair table in shared memory (high nibble in
// the low half), kept in 32 copies so that each lane reads its own bank, times the absmax of the lane's
// quantization block (a lane's 16 bytes lie in one block: blocksize >= 64), in x's dtype: the table value,
// the absmax and their product are each rounded to it (bitsandbytes rounds each dequantized weight to its
// compute dtype before its product). The absmax values of a group of two spans (at most four blocks per
// row) are read once per row, one per lane, and passed to the lanes that need them by shuffles.
// The previous version (commit 4f52c3d) read 8 bytes per lane per 64-column chunk and scaled each chunk's
// f32 sum by the exact absmax (one rounding per weight instead of three): twice the cache lines per weight
// byte, 1-5% slower at 2 rows but 1-17% faster at 8-16 (docs/PERFORMANCE.md). Either way the L1's load pipe
// is the limit.
// A block is 16 weight rows and 8 warps; warp w takes groups w, w + 8, ... (the next group's loads in flight
// while one is used), then the odd span if any; the warps' sums are added in warp order through shared
// memory. Every output's summation order depends only on k: a batch split into parts gives the same bits.
#define MMA_WARPS 8
#define MMA_SPANS 2
#define MMA_TABLE_BYTES (256 * 32 * 4)

template <int DT>
__device__ __forceinline__ void mma_16816(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    if constexpr (DT == DT_F16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
#else
    __trap();  // the host picks this kernel on sm_80 and later only
#endif
}

// Both halves of `a` times both halves of `s`, rounded to nearest in DT (bf16: an fma with -0, exact
// for the product's sign and available from sm_80, where `mul.bf16x2` needs sm_90).
template <int DT> __device__ __forceinline__ u32 mul2(u32 a, u32 s) {
    u32 r;
#if __CUDA_ARCH__ >= 800
    if constexpr (DT == DT_F16) {
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(s));
    } else {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(s), "r"(0x80008000u));
    }
#else
    r = a;
#endif
    return r;
}

// Sixteen bytes the L1 does not keep (each weight byte is read once; the L1 holds the activations). Not
// volatile: the compiler may schedule it like any load (the weights do not change during a kernel).
__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// One group's weight words of rows g and g + 8 and this lane's absmax of each row.
struct MmaLoad {
    uint4 wa[MMA_SPANS], wb[MMA_SPANS];
    float sa, sb;
};

template <int DT, int NB>
__device__ void linear_4bit_mma_impl(const void* x, u64 m, const u8* packed, const float* absmax,
                                     const float* table_g, u32 n, u32 k, u32 blocksize, const float* bias,
                                     void* y, int odt) {
    extern __shared__ u32 mma_shared[];
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    u64 row0 = (u64)blockIdx.x * 16;
    u64 m0 = (u64)blockIdx.y * 8 * NB;
    u32 ra = (u32)(row0 + g < n ? row0 + g : n - 1), rb = (u32)(row0 + g + 8 < n ? row0 + g + 8 : n - 1);
    u32 spans = k >> 7;
    // 16-byte pieces (32 weights): piece p = r * (k / 32) + 4 * span + t; its block p >> shift. The host
    // checks that blocksize is a power of two >= 64 and that piece indices fit 32 bits.
    u32 pa = ra * (k >> 5) + t, pb = rb * (k >> 5) + t;
    u32 shift = __ffs(blocksize >> 5) - 1;
    u32 last_block = (u32)(((u64)n * k - 1) / blocksize);
    const uint4* wq = (const uint4*)packed;
    // Group q = spans 2q, 2q + 1 (pieces 8q .. 8q + 7 of a row): lane t reads the absmax of the row's
    // block base + t (base: the group's first block), clamped to the last block.
    auto fetch = [&](u32 q, int nspans, MmaLoad& l) {
#pragma unroll
        for (int s = 0; s < MMA_SPANS; s++) {
            if (s < nspans) {
                l.wa[s] = ld_stream16(wq + pa + 8 * q + 4 * s);
                l.wb[s] = ld_stream16(wq + pb + 8 * q + 4 * s);
            }
        }
        u32 ba = ((pa - t + 8 * q) >> shift) + t, bb = ((pb - t + 8 * q) >> shift) + t;
        l.sa = __ldg(absmax + (ba < last_block ? ba : last_block));
        l.sb = __ldg(absmax + (bb < last_block ? bb : last_block));
    };
    u32 full = spans / MMA_SPANS;
    MmaLoad cur, nxt;
    u32 q0 = warp;
    if (q0 < full) fetch(q0, MMA_SPANS, cur);
    // Entry byte * 32 + copy: (table[byte >> 4], table[byte & 15]) in x's dtype. Thread i writes bytes
    // (i >> 5) + 8j, copy i & 31: its low nibbles take two values, its high nibbles j >> 1.
    {
        u32 b0 = threadIdx.x >> 5;
        u32 lo[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float v = __ldg(table_g + ((b0 + 8 * e) & 15));
            lo[e] = f2dt<DT>(v);
        }
#pragma unroll
        for (int h = 0; h < 16; h++) {
            float v = __ldg(table_g + h);
            u32 hi = f2dt<DT>(v);
#pragma unroll
            for (int e = 0; e < 2; e++)
                mma_shared[(b0 + 8 * (2 * h + e)) * 32 + (threadIdx.x & 31)] = hi | (lo[e] << 16);
        }
    }
    __syncthreads();
    // This lane's table copy, lane * 4 bytes in (from %laneid, so that it merges into the LOP3 that masks
    // each byte offset).
    u32 copy;
    asm("{\n\t.reg .u32 t;\n\tmov.u32 t, %%laneid;\n\tshl.b32 %0, t, 2;\n\t}" : "=r"(copy));
    const char* lut = (const char*)mma_shared;
    // Activation row of tile j for this lane. A lane past m reads row m0 instead: column g of the product
    // depends on column g of the activations only, and the columns past m are not stored.
    const uint4* xr[NB];
#pragma unroll
    for (int j = 0; j < NB; j++) {
        u64 b = m0 + 8 * j + g;
        xr[j] = (const uint4*)((const u16*)x + (b < m ? b : m0) * k + 32 * t);
    }
    // Two accumulators per tile (even and odd mmas), added at the end: two dependency chains.
    float acc[NB][2][4];
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[j][h][e] = 0.0f;
    // Span `sp` (group-relative s) against every tile.
    auto span = [&](u32 sp, u32 s, const MmaLoad& l) {
        // The block of this lane's piece, relative to the group's first block, picks the lane whose absmax
        // it is.
        u32 q8 = (sp >> 1) * 8;
        u32 da = ((pa + q8 + 4 * s) >> shift) - ((pa - t + q8) >> shift);
        u32 db = ((pb + q8 + 4 * s) >> shift) - ((pb - t + q8) >> shift);
        float fa = __shfl_sync(0xffffffffu, l.sa, (lane & ~3u) | da);
        float fb = __shfl_sync(0xffffffffu, l.sb, (lane & ~3u) | db);
        u32 ha = f2dt<DT>(fa), hb = f2dt<DT>(fb);
        u32 sa2 = ha | (ha << 16), sb2 = hb | (hb << 16);
        uint4 wa = l.wa[s], wb = l.wb[s];
        u32 wav[4] = {wa.x, wa.y, wa.z, wa.w}, wbv[4] = {wb.x, wb.y, wb.z, wb.w};
        uint4 xv[NB][4];
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int v = 0; v < 4; v++) xv[j][v] = __ldg(xr[j] + sp * 16 + v);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            // Bytes 2i and 2i + 1 of each row: word i / 2, bytes 2 (i & 1) and 2 (i & 1) + 1.
            u32 fr[4];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                u32 b = 2 * (i & 1) + h;
                u32 va = wav[i >> 1], vb = wbv[i >> 1];
                // Byte b of the word times 128 (its entry), plus the lane's copy: one shift and one LOP3.
                u32 oa = ((b == 0 ? va << 7 : va >> (8 * b - 7)) & 0x7f80u) | copy;
                u32 ob = ((b == 0 ? vb << 7 : vb >> (8 * b - 7)) & 0x7f80u) | copy;
                fr[2 * h] = mul2<DT>(*(const u32*)(lut + oa), sa2);
                fr[2 * h + 1] = mul2<DT>(*(const u32*)(lut + ob), sb2);
            }
#pragma unroll
            for (int j = 0; j < NB; j++) {
                u32 xw[4] = {xv[j][i >> 1].x, xv[j][i >> 1].y, xv[j][i >> 1].z, xv[j][i >> 1].w};
                mma_16816<DT>(acc[j][i & 1], fr[0], fr[1], fr[2], fr[3], xw[2 * (i & 1)], xw[2 * (i & 1) + 1]);
            }
        }
    };
    for (; q0 < full; q0 += 2 * MMA_WARPS) {
        if (q0 + MMA_WARPS < full) fetch(q0 + MMA_WARPS, MMA_SPANS, nxt);
#pragma unroll
        for (int s = 0; s < MMA_SPANS; s++) span(q0 * MMA_SPANS + s, s, cur);
        if (q0 + MMA_WARPS >= full) break;
        if (q0 + 2 * MMA_WARPS < full) fetch(q0 + 2 * MMA_WARPS, MMA_SPANS, cur);
#pragma unroll
        for (int s = 0; s < MMA_SPANS; s++) span((q0 + MMA_WARPS) * MMA_SPANS + s, s, nxt);
    }
    // An odd span: the last warp's.
    if (spans % MMA_SPANS != 0 && warp == MMA_WARPS - 1) {
        MmaLoad l;
        fetch(full, 1, l);
        span(full * MMA_SPANS, 0, l);
    }
    // The warps' sums in warp order (the table's memory is reused: every warp is past its last lookup).
    __syncthreads();
    float* red = (float*)mma_shared;
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) red[((warp * NB + j) * 4 + e) * 32 + lane] = acc[j][0][e] + acc[j][1][e];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = 0.0f;
            for (int w = 0; w < MMA_WARPS; w++) v += red[((w * NB + j) * 4 + e) * 32 + lane];
            // Accumulator e: weight row g (e < 2) or g + 8, activation row 2t + (e & 1) of tile j.
            u64 row = row0 + g + (e < 2 ? 0 : 8), b = m0 + 8 * j + 2 * t + (e & 1);
            if (row < n && b < m) st_dt(y, b * n + row, odt, v + (bias ? bias[row] : 0.0f));
        }
}

#define MMA_KERNEL(SUFFIX, DT, NB)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS, (NB) == 1 ? 3 : 2)                          \
        linear_4bit_mma_##SUFFIX##_b##NB(const void* x, u64 m, const u8* packed, const float* absmax,          \
                                         const float* table, u32 n, u32 k, u32 blocksize, const float* bias,   \
                                         void* y, int odt) {                                                   \
        linear_4bit_mma_impl<DT, NB>(x, m, packed, absmax, table, n, k, blocksize, bias, y, odt);              \
    }
#define MMA_KERNELS(SUFFIX, DT) MMA_KERNEL(SUFFIX, DT, 1) MMA_KERNEL(SUFFIX, DT, 2) MMA_KERNEL(SUFFIX, DT, 4)

#if defined(LOWBIT_LINEAR_F16)
MMA_KERNELS(f16, DT_F16)
#elif defined(LOWBIT_LINEAR_BF16)
MMA_KERNELS(bf16, DT_BF16)
#endif
