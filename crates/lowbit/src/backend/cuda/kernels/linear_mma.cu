// The tensor-core 4-bit linear kernel, part of the f16 and bf16 linear programs (context.rs appends this
// file to linear.cu for them; common.cuh comes first).

// 4-bit weights on tensor cores, for 2-32 activation rows of f16/bf16 (sm_80 and later; the host keeps one
// row on the word kernel, which measured faster there): the weight in
// bitsandbytes' own layout (nothing repacked), decoded straight into the A fragments of
// `mma.sync.m16n8k16` (weight rows as M, activation rows as N, f32 accumulators). A product sums over k in
// any order, so each lane reads whole bytes and the k positions of the fragments are assigned to match: lane
// (g = lane / 4, t = lane % 4) reads bytes 8t .. 8t + 7 of a 64-column chunk of weight rows g and g + 8
// (one 8-byte load each), and the same 16 columns 16t .. 16t + 15 of activation row g (two 16-byte loads);
// mma i of the chunk takes bytes 2i and 2i + 1 (columns 16t + 4i .. + 3) as the fragment's columns
// (2t, 2t + 1, 2t + 8, 2t + 9). A byte becomes both of its halves with one 4-byte load from a pair table
// in shared memory (high nibble in the low half), kept in 32 copies so that each lane reads its own bank.
// The 64 columns of a chunk lie in one quantization block (blocksize and k multiples of 64), so the four
// mmas of a chunk sum unscaled table values and the chunk's sum is scaled once: acc = fma(chunk, absmax,
// acc). The table is rounded to the activation dtype, as bitsandbytes rounds each dequantized weight to its
// compute dtype before its product.
// A later version read 16 bytes per lane per 128-column span (half the cache lines per weight byte) and
// scaled each weight by its absmax in x's dtype before the mma (three roundings per weight instead of one):
// 1-11% faster at 2 rows, 7-16% slower at 16 rows on an H200, so this one was kept (docs/PERFORMANCE.md).
// A block is 16 weight rows and MMA_WARPS = 8 warps (4-warp blocks measured 1.3-1.6x slower where 8-warp
// ones leave a small last wave); warp w takes chunk groups w, w + 8, ... (2 chunks per group, their 4 loads
// issued together, the next group's in flight while one is used), and the warps' sums are added in warp
// order through shared memory. Every output's summation order depends only on k: a batch split into parts
// gives the same bits.
#define MMA_WARPS 8
#define MMA_GROUP 2
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

// Eight bytes the L1 does not keep (each weight byte is read once; the L1 holds the activations).
__device__ __forceinline__ uint2 ld_stream8(const uint2* p) {
    uint2 v;
    // Not volatile: the compiler may schedule it like any load (the weights do not change during a kernel).
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

// One group's weight bytes and absmax values for this lane (rows g and g + 8).
template <int N> struct MmaLoad {
    uint2 wa[N], wb[N];
    float sa[N], sb[N];
};

template <int DT, int NB>
__device__ void linear_4bit_mma_impl(const void* x, u64 m, const u8* packed, const float* absmax,
                                     const float* table_g, u32 n, u32 k, u32 blocksize, const float* bias,
                                     void* y, int odt) {
    extern __shared__ u32 mma_shared[];
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    u64 row0 = (u64)blockIdx.x * 16;
    u64 m0 = (u64)blockIdx.y * 8 * NB;
    u64 ra = row0 + g < n ? row0 + g : (u64)n - 1, rb = row0 + g + 8 < n ? row0 + g + 8 : (u64)n - 1;
    u32 chunks = k >> 6;
    // 8-byte words: chunk c of row r at word (r * chunks + c) * 4 + t. Its absmax: (r * chunks + c) >> shift
    // (blocksize / 64 is a power of two; the host checks that and that r * chunks + c fits 32 bits).
    u32 ca = (u32)ra * chunks, cb = (u32)rb * chunks;
    const uint2* wpa = (const uint2*)packed + (u64)ca * 4 + t;
    const uint2* wpb = (const uint2*)packed + (u64)cb * 4 + t;
    u32 shift = __ffs(blocksize >> 6) - 1;
    auto fetch = [&](u32 c, uint2& wa, uint2& wb, float& sa, float& sb) {
        wa = ld_stream8(wpa + c * 4);
        wb = ld_stream8(wpb + c * 4);
        sa = __ldg(absmax + ((ca + c) >> shift));
        sb = __ldg(absmax + ((cb + c) >> shift));
    };
    // Warp w takes the full groups w, w + 8, ... of MMA_GROUP chunks; the last chunks % MMA_GROUP chunks
    // go one per warp afterwards. The first group loads before the table is built, each next group while
    // the current one is used.
    u32 full = chunks / MMA_GROUP * MMA_GROUP;
    constexpr u32 STRIDE = MMA_WARPS * MMA_GROUP;
    MmaLoad<MMA_GROUP> cur, nxt;
    u32 c0 = warp * MMA_GROUP;
    if (c0 < full) {
#pragma unroll
        for (int u = 0; u < MMA_GROUP; u++) fetch(c0 + u, cur.wa[u], cur.wb[u], cur.sa[u], cur.sb[u]);
    }
    // Entry byte * 32 + copy: (table[byte >> 4], table[byte & 15]) in x's dtype; thread i writes copy i & 31
    // of bytes i / 32, i / 32 + MMA_WARPS, ...
    for (u32 byte = threadIdx.x >> 5; byte < 256; byte += MMA_WARPS) {
        u32 hi = f2dt<DT>(__ldg(table_g + (byte >> 4))), lo = f2dt<DT>(__ldg(table_g + (byte & 15)));
        mma_shared[byte * 32 + (threadIdx.x & 31)] = hi | (lo << 16);
    }
    __syncthreads();
    // This lane's table copy, lane * 4 bytes in (from %laneid, so that it merges into the LOP3 that masks
    // each byte offset).
    u32 copy;
    asm("{\n\t.reg .u32 t;\n\tmov.u32 t, %%laneid;\n\tshl.b32 %0, t, 2;\n\t}" : "=r"(copy));
    const char* lut = (const char*)mma_shared;
    // Activation row of tile j for this lane. A lane past m reads row m0 instead: column g of the product
    // depends on column g of the activations only, and the columns past m are not stored.
    const u16* xr[NB];
#pragma unroll
    for (int j = 0; j < NB; j++) {
        u64 b = m0 + 8 * j + g;
        xr[j] = (const u16*)x + (b < m ? b : m0) * k + 16 * t;
    }
    float acc[NB][4];
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    // Chunk c against every tile: A fragments of mma i are rows g and g + 8, bytes 2i and 2i + 1.
    auto chunk = [&](u32 c, uint2 wa, uint2 wb, float sa, float sb) {
        u32 fa[4][4];
#pragma unroll
        for (int q = 0; q < 8; q++) {
            u32 va = q < 4 ? wa.x : wa.y, vb = q < 4 ? wb.x : wb.y;
            // Byte q & 3 of the word times 128 (its entry), plus the lane's copy: one shift and one LOP3.
            u32 b = q & 3;
            u32 oa = ((b == 0 ? va << 7 : va >> (8 * b - 7)) & 0x7f80u) | copy;
            u32 ob = ((b == 0 ? vb << 7 : vb >> (8 * b - 7)) & 0x7f80u) | copy;
            fa[q >> 1][(q & 1) * 2] = *(const u32*)(lut + oa);
            fa[q >> 1][(q & 1) * 2 + 1] = *(const u32*)(lut + ob);
        }
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const uint4* xp = (const uint4*)xr[j] + c * 8;
            uint4 x0 = __ldg(xp), x1 = __ldg(xp + 1);
            u32 xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int i = 0; i < 4; i++)
                mma_16816<DT>(s, fa[i][0], fa[i][1], fa[i][2], fa[i][3], xb[2 * i], xb[2 * i + 1]);
            acc[j][0] = fmaf(s[0], sa, acc[j][0]);
            acc[j][1] = fmaf(s[1], sa, acc[j][1]);
            acc[j][2] = fmaf(s[2], sb, acc[j][2]);
            acc[j][3] = fmaf(s[3], sb, acc[j][3]);
        }
    };
    // Two groups per trip, alternating buffers (no register copies between trips).
    auto step = [&](u32 c, MmaLoad<MMA_GROUP>& use, MmaLoad<MMA_GROUP>& load) {
        if (c + STRIDE < full) {
#pragma unroll
            for (int u = 0; u < MMA_GROUP; u++)
                fetch(c + STRIDE + u, load.wa[u], load.wb[u], load.sa[u], load.sb[u]);
        }
#pragma unroll
        for (int u = 0; u < MMA_GROUP; u++) chunk(c + u, use.wa[u], use.wb[u], use.sa[u], use.sb[u]);
    };
    for (; c0 < full; c0 += 2 * STRIDE) {
        step(c0, cur, nxt);
        if (c0 + STRIDE < full) step(c0 + STRIDE, nxt, cur);
    }
    if (full + warp < chunks) {
        uint2 wa, wb;
        float sa, sb;
        fetch(full + warp, wa, wb, sa, sb);
        chunk(full + warp, wa, wb, sa, sb);
    }
    // The warps' sums in warp order (the table's memory is reused: every warp is past its last lookup).
    __syncthreads();
    float* red = (float*)mma_shared;
#pragma unroll
    for (int j = 0; j < NB; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) red[((warp * NB + j) * 4 + e) * 32 + lane] = acc[j][e];
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
                                         void* y, int odt) { pdl_entry();                                      \
        linear_4bit_mma_impl<DT, NB>(x, m, packed, absmax, table, n, k, blocksize, bias, y, odt);              \
    }
#define MMA_KERNELS(SUFFIX, DT) MMA_KERNEL(SUFFIX, DT, 1) MMA_KERNEL(SUFFIX, DT, 2) MMA_KERNEL(SUFFIX, DT, 4)

#if defined(LOWBIT_LINEAR_F16)
MMA_KERNELS(f16, DT_F16)
#elif defined(LOWBIT_LINEAR_BF16)
MMA_KERNELS(bf16, DT_BF16)
#endif
