// The tensor-core 4-bit linear kernel, part of the f16 and bf16 linear programs (context.rs appends this
// file to linear.cu for them; common.cuh comes first).

// 4-bit weights on tensor cores, for 1-32 activation rows of f16/bf16 (sm_80 and later): the weight in
// bitsandbytes' own layout (nothing repacked), decoded straight into the A fragments of
// `mma.sync.m16n8k16` (weight rows as M, activation rows as N, f32 accumulators). A product sums over k in
// any order, so each lane reads whole bytes and the k positions of the fragments are assigned to match: lane
// (g = lane / 4, t = lane % 4) takes bytes 8t .. 8t + 7 of a 64-column chunk of weight rows g and g + 8,
// and the same 16 columns 16t .. 16t + 15 of activation row g; mma i of the chunk takes bytes 2i and 2i + 1
// (columns 16t + 4i .. + 3) as the fragment's columns (2t, 2t + 1, 2t + 8, 2t + 9). A byte becomes both of
// its halves with one 4-byte load from a pair table in shared memory (high nibble in the low half), kept in
// 32 copies so that each lane reads its own bank. The 64 columns of a chunk lie in one quantization block
// (blocksize and k multiples of 64), so the four mmas of a chunk sum unscaled table values and the chunk's
// sum is scaled once: acc = fma(chunk, absmax, acc). The table is rounded to the activation dtype, as
// bitsandbytes rounds each dequantized weight to its compute dtype before its product.
// (An earlier version, each warp loading its chunks straight into registers, one chunk group ahead, took
// 10.8 / 27.5 / 24.7 / 74.7 us for 2 rows at 4096x4096 / 4096x14336 / 14336x4096 / 8192x28672 on an H200
// where this one takes 8.2 / 17.7 / 19.6 / 67.2, and one row stayed on the word kernel: docs/PERFORMANCE.md.)
#define MMA_WARPS 8
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

// The copy pipeline (`linear_4bit_pipe_*`). A block is 16 weight rows and MMA_WARPS = 8 warps. Blocks
// are persistent (the host launches about two per multiprocessor) and take 16-row tiles blockIdx.x,
// blockIdx.x + gridDim.x, ...; each warp owns the same contiguous slab of every tile's chunks (chunks
// w * per .. (w + 1) * per, per = chunks / 8 rounded up) and streams it, tile after tile, through a ring of
// PIPE_STAGES stages of 4 chunks in its own part of shared memory with `cp.async`: 16 bytes per lane, a
// stage being 16 rows x 128 contiguous bytes (one 128-byte line per row and instruction), the stage's
// absmax values beside it, and for a single activation row (`_x1`) its 256 activations too. The copies
// hold no registers while in flight, so two stages per warp stream while a third is used, and the next
// tile's first stages are already on their way while a tile's sums are added. Lane (g, t) reads its 8
// bytes of rows g and g + 8 from the stage (16-byte units swizzled by row, so that each half-warp's 8-byte
// reads cover the 32 banks once) and decodes them as above. Without `_x1` the activations
// of the next chunk load into registers while a chunk is used. Summation: per warp its chunks in order
// (a chunk's four mmas, scaled once by the exact absmax), then the warps in order: it depends on k only, so
// every batch size and every split of a batch gives the same bits.
#define PIPE_STAGES 3
#define PIPE_W_BYTES (16 * 128)
#define PIPE_ABS_BYTES (16 * 4 * 4)
// Dynamic shared memory: the pair table, each warp's ring, then the warps' sums of NB tiles (NB * 4 * 32
// floats per warp); the host's `pipe_shared_bytes` (ops/linear.rs) sizes it.
#define PIPE_STAGE_BYTES(X1) (PIPE_W_BYTES + PIPE_ABS_BYTES + ((X1) ? 512 : 0))

__device__ __forceinline__ u32 shared_addr(const void* p) {
    u32 a;
    asm("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
#endif
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until at most N of this thread's copy groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
// Byte offset of 16-byte unit u (0-7) of stage row r: units XOR 2 * (r & 3), so the half-warp reading units
// 2q and 2q + 1 of rows g = 0-3 (or 4-7) touches eight distinct units.
__device__ __forceinline__ u32 pipe_unit(u32 r, u32 u) { return r * 128 + ((u ^ ((r & 3) << 1)) << 4); }

template <int DT, int NB, bool X1, bool XSTAGE>
__device__ void linear_4bit_pipe_impl(const void* x, u64 m, const u8* packed, const float* absmax,
                                      const float* table_g, u32 n, u32 k, u32 blocksize, const void* bias, int bdt,
                                      void* y, int odt) {
    extern __shared__ uint4 pipe_shared[];
    constexpr u32 STAGE = PIPE_STAGE_BYTES(X1);
    u8* shared = (u8*)pipe_shared;
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    u32 tiles = (n + 15) >> 4;
    u64 m0 = (u64)blockIdx.y * 8 * NB;
    u32 chunks = k >> 6;
    u32 shift = __ffs(blocksize >> 6) - 1;
    u32 per = (chunks + MMA_WARPS - 1) / MMA_WARPS;
    u32 lo = min(warp * per, chunks), hi = min(lo + per, chunks);
    u32 stages = (hi - lo + 3) >> 2;
    u8* ring = shared + MMA_TABLE_BYTES + warp * (PIPE_STAGES * STAGE);
    float* red = (float*)(shared + MMA_TABLE_BYTES + MMA_WARPS * PIPE_STAGES * STAGE);
    u32 ring_at = shared_addr(ring);
    const u16* x1 = (const u16*)x + m0 * k + lane * 8;
    // Copy roles. Weight bytes: instruction i copies unit lane % 8 (chunk (lane % 8) / 2) of row
    // 4i + lane / 8. Absmax: instruction i copies row 8i + lane / 4's value for chunk lane % 4. Activations
    // (`_x1`): lane copies 8 of the stage's 256. Rows past n read row n - 1 (their sums are not stored).
    // The copies walk this warp's stages tile after tile: stage `is` of tile `itile` into buffer `ibuf`,
    // the tile's row addresses set once per tile.
    u32 is = 0, ibuf = 0, itile = stages ? blockIdx.x : tiles;
    const u8* wsrc[4];
    u32 arow[2];
    auto rows_of = [&](u32 tile) {
        u64 row0 = (u64)tile * 16;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u64 r = row0 + 4 * i + (lane >> 3);
            wsrc[i] = packed + (r < n ? r : (u64)n - 1) * (k >> 1) + (u64)lo * 32 + (lane & 7) * 16;
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            u64 r = row0 + 8 * i + (lane >> 2);
            arow[i] = (u32)(r < n ? r : (u64)n - 1) * chunks + lo + (lane & 3);
        }
    };
    if (itile < tiles) rows_of(itile);
    auto issue = [&]() {
        if (itile < tiles) {
            u32 buf = ring_at + ibuf * STAGE;
            u32 c0 = lo + 4 * is;
            if (c0 + ((lane & 7) >> 1) < hi) {
#pragma unroll
                for (int i = 0; i < 4; i++) cp_async16(buf + pipe_unit(4 * i + (lane >> 3), lane & 7), wsrc[i] + is * 128);
            }
            if (c0 + (lane & 3) < hi) {
#pragma unroll
                for (int i = 0; i < 2; i++)
                    cp_async4(buf + PIPE_W_BYTES + ((8 * i + (lane >> 2)) * 4 + (lane & 3)) * 4,
                              absmax + ((arow[i] + 4 * is) >> shift));
            }
            if constexpr (X1) {
                if (c0 + (lane >> 3) < hi) cp_async16(buf + PIPE_W_BYTES + PIPE_ABS_BYTES + lane * 16, x1 + (u64)c0 * 64);
            }
            ibuf = ibuf == PIPE_STAGES - 1 ? 0 : ibuf + 1;
            if (++is == stages) {
                is = 0;
                itile += gridDim.x;
                if (itile < tiles) rows_of(itile);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < PIPE_STAGES - 1; s++) issue();
    // The pair table while the first stages stream in: entry byte * 32 + copy is (table[byte >> 4],
    // table[byte & 15]) in x's dtype; thread i writes copy i & 31 of bytes i / 32, i / 32 + MMA_WARPS, ...
    for (u32 byte = threadIdx.x >> 5; byte < 256; byte += MMA_WARPS) {
        u32 hi_v = f2dt<DT>(__ldg(table_g + (byte >> 4))), lo_v = f2dt<DT>(__ldg(table_g + (byte & 15)));
        ((u32*)shared)[byte * 32 + lane] = hi_v | (lo_v << 16);
    }
    __syncthreads();
    // This lane's table copy, lane * 4 bytes in (from %laneid, so that it merges into the LOP3 that masks
    // each byte offset).
    u32 copy;
    asm("{\n\t.reg .u32 t;\n\tmov.u32 t, %%laneid;\n\tshl.b32 %0, t, 2;\n\t}" : "=r"(copy));
    const char* lut = (const char*)shared;
    const uint4* xr[NB];
#pragma unroll
    for (int j = 0; j < NB; j++) {
        u64 b = m0 + 8 * j + g;
        xr[j] = (const uint4*)((const u16*)x + (b < m ? b : m0) * k + 16 * t);
    }
    // This lane's 8 weight bytes of rows g and g + 8 within a stage: half t & 1 of unit 2q + t / 2.
    u32 wa_off = pipe_unit(g, t >> 1) + ((t & 1) << 3), wb_off = pipe_unit(g + 8, t >> 1) + ((t & 1) << 3);
    // `_b1s` (XSTAGE: one tile of 2-8 activation rows, long rows): the activations load into registers a whole
    // stage (4 chunks) ahead, the stage after the one in use, wrapping to the slab's first stage, which the
    // next tile begins with (every tile takes the same columns). One chunk ahead leaves the L2 latency of
    // each chunk's activations exposed on long rows (2 / 4 / 8 rows of 8192x28672: 67.1 / 74.2 / 79.9 us
    // against 55.0 / 59.3 / 67.2 this way, one row 47.6), but on short slabs the extra registers and the
    // wrapped load cost more than they hide (4096x4096, 14336x4096, 4096x14336: 3-12% slower; H200,
    // docs/PERFORMANCE.md), so the host picks it by row length. More tiles of rows would spill.
    static_assert(!XSTAGE || (NB == 1 && !X1), "the stage look-ahead is for one tile of unstaged rows");
    uint4 xsc[XSTAGE ? 4 : 1][2], xsn[XSTAGE ? 4 : 1][2];
    auto load_xstage = [&](u32 s, uint4 (&dst)[XSTAGE ? 4 : 1][2]) {
        if constexpr (XSTAGE) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                u32 c = lo + 4 * s + q;
                if (c < hi) {
                    dst[q][0] = __ldg(xr[0] + c * 8);
                    dst[q][1] = __ldg(xr[0] + c * 8 + 1);
                }
            }
        }
    };
    if (XSTAGE && lo < hi) load_xstage(0, xsc);
    u32 cbuf = 0;
    for (u32 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        float acc[NB][4];
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        // Unstaged activations: this lane's of the chunk in use and of the next one.
        uint4 xc[NB][2], xn[NB][2];
        if (!X1 && !XSTAGE && lo < hi) {
#pragma unroll
            for (int j = 0; j < NB; j++) {
                xc[j][0] = __ldg(xr[j] + lo * 8);
                xc[j][1] = __ldg(xr[j] + lo * 8 + 1);
            }
        }
        // Chunk q (0-3) of the stage in `buf`, chunk c of the row.
        auto chunk = [&](const u8* buf, int q, u32 c, float4 abs_a, float4 abs_b) {
            if constexpr (X1) {
                const uint4* xs = (const uint4*)(buf + PIPE_W_BYTES + PIPE_ABS_BYTES + q * 128 + t * 32);
                xc[0][0] = xs[0];
                xc[0][1] = xs[1];
            } else if constexpr (XSTAGE) {
                xc[0][0] = xsc[q][0];
                xc[0][1] = xsc[q][1];
            } else if (c + 1 < hi) {
#pragma unroll
                for (int j = 0; j < NB; j++) {
                    xn[j][0] = __ldg(xr[j] + (c + 1) * 8);
                    xn[j][1] = __ldg(xr[j] + (c + 1) * 8 + 1);
                }
            }
            // Units 2q, 2q + 1 of the row are units (2q) ^ s, (2q + 1) ^ s: the swizzle flips bits 1-2 only.
            uint2 wa = *(const uint2*)(buf + (wa_off ^ (q << 5)));
            uint2 wb = *(const uint2*)(buf + (wb_off ^ (q << 5)));
            float sa = q == 0 ? abs_a.x : q == 1 ? abs_a.y : q == 2 ? abs_a.z : abs_a.w;
            float sb = q == 0 ? abs_b.x : q == 1 ? abs_b.y : q == 2 ? abs_b.z : abs_b.w;
            u32 fa[4][4];
#pragma unroll
            for (int e = 0; e < 8; e++) {
                // Byte e & 3 of the word times 128 (its entry), plus the lane's copy: one shift, one LOP3.
                u32 va = e < 4 ? wa.x : wa.y, vb = e < 4 ? wb.x : wb.y;
                u32 b = e & 3;
                u32 oa = ((b == 0 ? va << 7 : va >> (8 * b - 7)) & 0x7f80u) | copy;
                u32 ob = ((b == 0 ? vb << 7 : vb >> (8 * b - 7)) & 0x7f80u) | copy;
                fa[e >> 1][(e & 1) * 2] = *(const u32*)(lut + oa);
                fa[e >> 1][(e & 1) * 2 + 1] = *(const u32*)(lut + ob);
            }
#pragma unroll
            for (int j = 0; j < NB; j++) {
                u32 xb[8] = {xc[j][0].x, xc[j][0].y, xc[j][0].z, xc[j][0].w,
                             xc[j][1].x, xc[j][1].y, xc[j][1].z, xc[j][1].w};
                float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int i = 0; i < 4; i++)
                    mma_16816<DT>(d, fa[i][0], fa[i][1], fa[i][2], fa[i][3], xb[2 * i], xb[2 * i + 1]);
                acc[j][0] = fmaf(d[0], sa, acc[j][0]);
                acc[j][1] = fmaf(d[1], sa, acc[j][1]);
                acc[j][2] = fmaf(d[2], sb, acc[j][2]);
                acc[j][3] = fmaf(d[3], sb, acc[j][3]);
                if constexpr (!X1 && !XSTAGE) {
                    xc[j][0] = xn[j][0];
                    xc[j][1] = xn[j][1];
                }
            }
        };
        for (u32 s = 0; s < stages; s++) {
            __syncwarp();  // every lane is past the stage whose buffer the next issue refills
            issue();
            cp_async_wait<PIPE_STAGES - 1>();
            __syncwarp();  // every lane's copies of this stage have landed
            const u8* buf = ring + cbuf * STAGE;
            cbuf = cbuf == PIPE_STAGES - 1 ? 0 : cbuf + 1;
            float4 abs_a = *(const float4*)(buf + PIPE_W_BYTES + g * 16);
            float4 abs_b = *(const float4*)(buf + PIPE_W_BYTES + (g + 8) * 16);
            u32 c0 = lo + 4 * s;
            load_xstage(s + 1 == stages ? 0 : s + 1, xsn);
            if (NB == 1 && c0 + 4 <= hi) {
                // A whole stage: no branch between its chunks, so their loads and mmas interleave (with
                // more activation tiles the registers would spill).
#pragma unroll
                for (int q = 0; q < 4; q++) chunk(buf, q, c0 + q, abs_a, abs_b);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++)
                    if (c0 + q < hi) chunk(buf, q, c0 + q, abs_a, abs_b);
            }
            if constexpr (XSTAGE) {
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    xsc[q][0] = xsn[q][0];
                    xsc[q][1] = xsn[q][1];
                }
            }
        }
        // The warps' sums in warp order. The first barrier also tells that warp 0 has read the previous
        // tile's sums (it reaches it only after them).
        __syncthreads();
#pragma unroll
        for (int j = 0; j < NB; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) red[((warp * NB + j) * 4 + e) * 32 + lane] = acc[j][e];
        __syncthreads();
        if (warp == 0) {
            u64 row0 = (u64)tile * 16;
#pragma unroll
            for (int j = 0; j < NB; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float v = 0.0f;
                    for (int w = 0; w < MMA_WARPS; w++) v += red[((w * NB + j) * 4 + e) * 32 + lane];
                    // Accumulator e: weight row g (e < 2) or g + 8, activation row 2t + (e & 1) of tile j.
                    u64 row = row0 + g + (e < 2 ? 0 : 8), b = m0 + 8 * j + 2 * t + (e & 1);
                    if (row < n && b < m) st_dt(y, b * n + row, odt, v + (bias_at(bias, bdt, row)));
                }
        }
    }
}

#define PIPE_KERNEL(SUFFIX, DT, NAME, NB, X1, XST)                                                             \
    extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS, 2)                                            \
        linear_4bit_pipe_##SUFFIX##_##NAME(const void* x, u64 m, const u8* packed, const float* absmax,        \
                                           const float* table, u32 n, u32 k, u32 blocksize, const void* bias, int bdt, \
                                           void* y, int odt) { pdl_entry();                                    \
        linear_4bit_pipe_impl<DT, NB, X1, XST>(x, m, packed, absmax, table, n, k, blocksize, bias, bdt, y, odt);     \
    }
#define PIPE_KERNELS(SUFFIX, DT)                                                                               \
    PIPE_KERNEL(SUFFIX, DT, x1, 1, true, false)                                                                \
    PIPE_KERNEL(SUFFIX, DT, b1, 1, false, false) PIPE_KERNEL(SUFFIX, DT, b1s, 1, false, true)                 \
    PIPE_KERNEL(SUFFIX, DT, b2, 2, false, false) PIPE_KERNEL(SUFFIX, DT, b4, 4, false, false)

#if defined(LOWBIT_LINEAR_F16)
PIPE_KERNELS(f16, DT_F16)
#elif defined(LOWBIT_LINEAR_BF16)
PIPE_KERNELS(bf16, DT_BF16)
#endif
