// Linear layers `y[m, n] = x[m, k] @ W[n, k]^T (+ bias)` with f32 accumulation, written in `odt` (f32 for
// the host API, x's dtype for device ops: round to nearest even, the bits the CPU gets by narrowing f32).
//
// 4-bit (NF4/FP4): each warp takes 2-4 weight rows; each lane reads 16-byte words of packed nibbles (32
// weights of one quantization block when k % 32 == 0 and blocksize >= 32: `linear_4bit_words`), decodes each
// weight once and applies it to up to R activation rows held by the same lane. Other shapes take
// `linear_4bit_any`, one nibble at a time through `warp_rows`, which also serves dense weights with few
// rows (`linear_rows_*`; `linear_rows_*_wf16` / `_wbf16` read a weight kept in half precision whatever x's
// dtype, widened exactly in registers: the f32 weight's products in its order); a shared-memory tiled kernel
// serves many rows.

// Eight consecutive activations from a 16-byte aligned position (two float4 loads in f32, one 16-byte load
// of halves otherwise).
template <int DT> __device__ __forceinline__ void load8(const void* x, u64 i, float* v);
template <> __device__ __forceinline__ void load8<DT_F32>(const void* x, u64 i, float* v) {
    float4 a = __ldg((const float4*)((const float*)x + i)), b = __ldg((const float4*)((const float*)x + i + 4));
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
// Eight halves (f16 or bf16 as DT says) in 16 bytes, widened to f32.
template <int DT> __device__ __forceinline__ void widen8(uint4 q, float* v) {
    u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int t = 0; t < 4; t++) {
        v[2 * t] = DT == DT_F16 ? h2f((u16)(w[t] & 0xffffu)) : b2f((u16)(w[t] & 0xffffu));
        v[2 * t + 1] = DT == DT_F16 ? h2f((u16)(w[t] >> 16)) : b2f((u16)(w[t] >> 16));
    }
}
template <int DT> __device__ __forceinline__ void load8_half(const void* x, u64 i, float* v) {
    widen8<DT>(__ldg((const uint4*)((const u16*)x + i)), v);
}
template <> __device__ __forceinline__ void load8<DT_F16>(const void* x, u64 i, float* v) { load8_half<DT_F16>(x, i, v); }
template <> __device__ __forceinline__ void load8<DT_BF16>(const void* x, u64 i, float* v) { load8_half<DT_BF16>(x, i, v); }

// NR weight rows per warp and R activation rows per pass: each lane reads one 16-byte word (32 weights of
// one quantization block) of each of its NR rows and uses each activation chunk for all NR rows. Rows past n
// read row n - 1 and activation rows past m read row m0 (their sums are not stored); the word and absmax
// positions of each row are set up once, the absmax index is a shift for power-of-two blocks (a division
// otherwise, in a second copy of the loop), and the absmax multiplies once per word instead of once per weight.
// Decoding: a 256-entry pair table in shared memory gives both values of a packed byte (element 2i in the
// high nibble, 2i + 1 in the low), so one 8-byte shared load decodes two weights. It is kept in 16 copies 8
// bytes apart (32 KiB), one per lane of a half-warp (which an 8-byte shared load serves at once): each lane
// reads its own banks whatever the bytes, so the loads never conflict.
// The warp walks k in chunks of 1024 columns (one word per lane). f32 activations are staged: each chunk of
// the block's R rows is copied to shared memory by coalesced loads, once per block instead of once per warp,
// and each lane reads its 32 columns from a slot 36 floats apart, so that a quarter-warp's 16-byte reads fall
// in distinct banks (two buffers, one barrier per chunk; the next chunk's words load while the current ones
// are used). Read straight from global memory, each 16-byte load of a warp touches 32 cache lines, and in
// f32 those loads (twice as many as in f16) held the kernel to 60% of the f16 rate. Half-precision
// activations are read directly, with no barriers and no prefetch (both measured slower there: the prefetch
// registers spill).
// One activation row that fits in 72 KiB (f32 up to 16384 columns, halves up to 29491) is instead staged
// whole, in x's dtype, before the loop (`WHOLE`, kernels named `_s`): one barrier per block instead of one
// per 1024 columns, and each lane reads its word's 32 activations from a slot (144 bytes for f32, 80 for
// halves) that keeps a quarter-warp's 16-byte reads in distinct banks. H200, one row, weights streamed from
// HBM: f32 4096x4096 10.67 -> 10.16 us, 14336x4096 25.15 -> 22.38, 4096x14336 26.97 -> 24.51; f16 1-5%
// faster. Wider rows keep the chunks: staged whole, an f32 row of 28672 leaves one block per SM (72.8 ->
// 103.6 us). Staging only moves where x is read from: the sums are the same bits.
// Every output element sums its products in one order whatever NR, R or the batch size (a split batch
// reproduces the unsplit bits): per lane, words j = lane, lane + 32, ... in order; per word
// p = sum over its 32 elements in order of table[nibble] * x (one fma chain), then acc = fma(p, absmax, acc);
// then the warp reduction.
// Blocks per multiprocessor the register budget is set for (__launch_bounds__ of the word kernels): three
// for one activation row, two up to four rows and for eight rows of two weight rows (a few bytes
// spill there, but twice the warps), one for eight rows of four.
#define LIN4_BLOCKS(R, NR) ((R) == 1 ? 3 : (R) <= 4 || (NR) == 2 ? 2 : 1)
// Dynamic shared memory of the word kernels: the pair table, then (f32 activations) two buffers of R staged
// activation rows (the host's `words_shared_bytes` in ops/linear.rs computes the same).
#define LIN4_TABLE_BYTES (256 * 16 * 8)
#define LIN4_SLOT 36
#define LIN4_CHUNK (32 * LIN4_SLOT)

// Stages columns [c0, c0 + 1024) of activation rows m0 .. m0 + R (rows past m repeat row m0, columns past
// k are zeros) into `xs` as f32: column c0 + 32 * l + o goes to xs[r * LIN4_CHUNK + l * LIN4_SLOT + o].
template <int DT, int R>
__device__ __forceinline__ void lin4_stage(float* xs, const void* x, u64 m, u64 m0, u32 k, u32 c0) {
    constexpr u32 PER = DT == DT_F32 ? 4 : 8;  // columns per 16-byte load
    constexpr u32 UNITS = 1024 / PER;         // loads per row
    for (u32 i = threadIdx.x; i < R * UNITS; i += 32 * LIN_WARPS) {
        u32 r = i / UNITS, u = i % UNITS;
        u32 c = c0 + u * PER;
        u64 row = m0 + r < m ? m0 + r : m0;
        float v[8];
        // k is a multiple of 32, so a load lies wholly inside or wholly past the row.
        if (c < k) {
            if constexpr (DT == DT_F32) {
                float4 a = __ldg((const float4*)((const float*)x + row * k + c));
                v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            } else {
                load8<DT>(x, row * k + c, v);
            }
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = 0.0f;
        }
        float* d = xs + r * LIN4_CHUNK + (u * PER / 32) * LIN4_SLOT + (u * PER) % 32;
        *(float4*)d = make_float4(v[0], v[1], v[2], v[3]);
        if constexpr (PER == 8) *(float4*)(d + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
}

template <int DT, int R, int NR, bool WHOLE>
__device__ void linear_4bit_words_impl(const void* x, u64 m, const uint4* packed, const float* absmax,
                                       const float* table_g, u32 n, u32 k, u32 blocksize, const void* bias, int bdt,
                                       void* y, int odt) {
    static_assert(LIN_WARPS == 8, "the pair table is filled by 256 threads");
    extern __shared__ float4 lin4_shared[];
    // Entry byte * 16 + copy = (table[byte >> 4], table[byte & 15]); thread t writes entries i * 256 + t
    // (byte i * 16 + (t >> 4), copy t & 15: consecutive threads, consecutive slots).
    float2* pairs = (float2*)lin4_shared;
    float* xbuf = (float*)((char*)lin4_shared + LIN4_TABLE_BYTES);
    {
        u32 t = threadIdx.x;
        float lo = __ldg(table_g + (t >> 4));
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float2 v;
            v.x = __ldg(table_g + i);
            v.y = lo;
            pairs[i * 256 + t] = v;
        }
    }
    u32 lane = threadIdx.x & 31;
    u64 row0 = ((u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5)) * NR;
    u64 m0 = (u64)blockIdx.y * R;
    constexpr bool STAGED = DT == DT_F32 && !WHOLE;
    constexpr u32 SLOT_BYTES = DT == DT_F32 ? 144 : 80;
    constexpr u32 ES = DT == DT_F32 ? 4 : 2;
    // No early return: every warp takes part in staging and in the barriers (a warp past n computes row
    // n - 1 and stores nothing).
    u32 words = k >> 5;
    u32 chunks = (words + 31) >> 5;
    u32 words_per_block = blocksize >> 5;
    bool pow2 = (words_per_block & (words_per_block - 1)) == 0;
    u32 shift = __ffs(words_per_block) - 1;
    // Word j of row q: wrow[q][j]; its absmax: arow[q][(arem[q] + j) / words_per_block].
    const uint4* wrow[NR];
    const float* arow[NR];
    u32 arem[NR];
#pragma unroll
    for (int q = 0; q < NR; q++) {
        u64 base = (row0 + q < n ? row0 + q : (u64)n - 1) * words;
        u64 blk = pow2 ? base >> shift : base / words_per_block;
        wrow[q] = packed + base;
        arow[q] = absmax + blk;
        arem[q] = (u32)(base - blk * words_per_block);
    }
    // This lane's table copy, (lane & 15) * 8 bytes in (from %laneid, so that the compiler keeps it in a
    // register and merges it into the one LOP3 that masks each byte offset).
    u32 copy;
    asm("{\n\t.reg .u32 t;\n\tmov.u32 t, %%laneid;\n\tshl.b32 t, t, 3;\n\tand.b32 %0, t, 0x78;\n\t}" : "=r"(copy));
    float acc[NR][R];
#pragma unroll
    for (int q = 0; q < NR; q++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[q][r] = 0.0f;
    const char* xrow[R];
#pragma unroll
    for (int r = 0; r < R; r++) xrow[r] = (const char*)x + (m0 + r < m ? m0 + r : m0) * k * ES;
    // Word j of each row against its 32 activations: this lane's slot `xl` of the staged chunk, or x itself.
    auto word = [&](u32 j, const float* xl, const uint4(&wv)[NR], const float(&av)[NR]) {
        float p[NR][R];
#pragma unroll
        for (int c = 0; c < 4; c++) {
            float xv[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) {
                if constexpr (WHOLE) {
                    const char* sp = (const char*)xbuf + ((u64)r * words + j) * SLOT_BYTES;
                    if constexpr (DT == DT_F32) {
                        float4 a = *(const float4*)(sp + c * 32);
                        float4 b = *(const float4*)(sp + c * 32 + 16);
                        xv[r][0] = a.x; xv[r][1] = a.y; xv[r][2] = a.z; xv[r][3] = a.w;
                        xv[r][4] = b.x; xv[r][5] = b.y; xv[r][6] = b.z; xv[r][7] = b.w;
                    } else {
                        widen8<DT>(*(const uint4*)(sp + c * 16), xv[r]);
                    }
                } else if constexpr (STAGED) {
                    float4 a = *(const float4*)(xl + r * LIN4_CHUNK + c * 8);
                    float4 b = *(const float4*)(xl + r * LIN4_CHUNK + c * 8 + 4);
                    xv[r][0] = a.x; xv[r][1] = a.y; xv[r][2] = a.z; xv[r][3] = a.w;
                    xv[r][4] = b.x; xv[r][5] = b.y; xv[r][6] = b.z; xv[r][7] = b.w;
                } else {
                    load8<DT>(xrow[r] + (u64)j * 32 * ES, c * 8, xv[r]);
                }
            }
#pragma unroll
            for (int q = 0; q < NR; q++) {
                u32 part = c == 0 ? wv[q].x : c == 1 ? wv[q].y : c == 2 ? wv[q].z : wv[q].w;
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    // Byte b's entry: byte * 128 + copy.
                    u32 off = ((b == 0 ? part << 7 : part >> (8 * b - 7)) & 0x7f80u) | copy;
                    float2 t = *(const float2*)((const char*)pairs + off);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        p[q][r] = c == 0 && b == 0 ? t.x * xv[r][0] : fmaf(t.x, xv[r][2 * b], p[q][r]);
                        p[q][r] = fmaf(t.y, xv[r][2 * b + 1], p[q][r]);
                    }
                }
            }
        }
#pragma unroll
        for (int q = 0; q < NR; q++)
#pragma unroll
            for (int r = 0; r < R; r++) acc[q][r] = fmaf(p[q][r], av[q], acc[q][r]);
    };
    if constexpr (STAGED) lin4_stage<DT, R>(xbuf, x, m, m0, k, 0);
    if constexpr (WHOLE) {
        // Rows m0 .. m0 + R whole, word w of row r at byte (r * words + w) * SLOT_BYTES, in x's dtype.
        constexpr u32 UNITS = DT == DT_F32 ? 8 : 4;  // 16-byte loads per word
        u64 total = (u64)R * words * UNITS;
        for (u64 i = threadIdx.x; i < total; i += 32 * LIN_WARPS) {
            u32 r = (u32)(i / ((u64)words * UNITS));
            u32 rem = (u32)(i - (u64)r * words * UNITS);
            u32 w = rem / UNITS, u = rem % UNITS;
            u64 row = m0 + r < m ? m0 + r : m0;
            uint4 v = __ldg((const uint4*)((const char*)x + row * k * ES + (u64)w * 32 * ES + u * 16));
            *(uint4*)((char*)xbuf + ((u64)r * words + w) * SLOT_BYTES + u * 16) = v;
        }
    }
    __syncthreads();
    uint4 wv[NR], wn[NR];
    float av[NR], an[NR];
    // Two copies of the loop (power-of-two blocks take a shift, others a division), so no load branches on
    // it. (A macro, not a generic lambda: NVRTC's JIT mode refuses generic lambdas.) Chunk t's words are in
    // wv/av; chunk t + 1's activations and words load while they are used.
#define LIN4_FETCH(J, W, A, BLOCK_OF)                                                                          \
    _Pragma("unroll") for (int q = 0; q < NR; q++) {                                                           \
        W[q] = __ldg(wrow[q] + (J));                                                                           \
        u32 a = arem[q] + (J);                                                                                 \
        A[q] = __ldg(arow[q] + (BLOCK_OF));                                                                    \
    }
#define LIN4_LOOP(BLOCK_OF)                                                                                    \
    if constexpr (STAGED) {                                                                                    \
        if (lane < words) { LIN4_FETCH(lane, wv, av, BLOCK_OF) }                                               \
        for (u32 t = 0; t < chunks; t++) {                                                                     \
            u32 j = t * 32 + lane;                                                                             \
            if (t + 1 < chunks) {                                                                              \
                lin4_stage<DT, R>(xbuf + ((t + 1) & 1) * R * LIN4_CHUNK, x, m, m0, k, (t + 1) * 1024);        \
                if (j + 32 < words) { LIN4_FETCH(j + 32, wn, an, BLOCK_OF) }                                   \
            }                                                                                                  \
            if (j < words) word(j, xbuf + (t & 1) * R * LIN4_CHUNK + lane * LIN4_SLOT, wv, av);               \
            __syncthreads();                                                                                   \
            _Pragma("unroll") for (int q = 0; q < NR; q++) {                                                   \
                wv[q] = wn[q];                                                                                 \
                av[q] = an[q];                                                                                 \
            }                                                                                                  \
        }                                                                                                      \
    } else {                                                                                                   \
        for (u32 j = lane; j < words; j += 32) {                                                               \
            LIN4_FETCH(j, wv, av, BLOCK_OF)                                                                    \
            word(j, nullptr, wv, av);                                                                          \
        }                                                                                                      \
    }
    if (pow2) {
        LIN4_LOOP(a >> shift)
    } else {
        LIN4_LOOP(a / words_per_block)
    }
#undef LIN4_LOOP
#undef LIN4_FETCH
#pragma unroll
    for (int q = 0; q < NR; q++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float s = warp_sum(acc[q][r]);
            if (lane == 0 && m0 + r < m && row0 + q < n)
                st_dt(y, (m0 + r) * n + row0 + q, odt, s + (bias_at(bias, bdt, row0 + q)));
        }
}

// A warp per weight row, one column per lane at a time, for up to R activation rows: `weight(i)` is the weight
// at flat index i = row * k + c (a dense element, or a decoded nibble for 4-bit shapes outside the word
// kernel's layout).
template <int DT, int R, class Weight>
__device__ void warp_rows(const void* x, u64 m, Weight weight, u32 n, u32 k, const void* bias, int bdt, void* y, int odt) {
    u32 lane = threadIdx.x & 31;
    u64 row = (u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u64 m0 = (u64)blockIdx.y * R;
    if (row >= n) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (u32 c = lane; c < k; c += 32) {
        float w = weight(row * k + c);
#pragma unroll
        for (int r = 0; r < R; r++)
            if (m0 + r < m) acc[r] += w * ldf<DT>(x, (m0 + r) * k + c);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && m0 + r < m) st_dt(y, (m0 + r) * n + row, odt, s + (bias_at(bias, bdt, row)));
    }
}

template <int DT> struct DenseWeight {
    const void* w;
    __device__ float operator()(u64 i) const { return ldf<DT>(w, i); }
};

struct NibbleWeight {
    const u8* packed;
    const float* absmax;
    const float* table;
    u32 blocksize;
    __device__ float operator()(u64 i) const {
        u32 b = packed[i >> 1];
        return table[(i & 1) ? (b & 15u) : (b >> 4)] * absmax[i / blocksize];
    }
};

template <int DT, int R>
__device__ void linear_4bit_any_impl(const void* x, u64 m, const u8* packed, const float* absmax,
                                     const float* table_g, u32 n, u32 k, u32 blocksize, const void* bias, int bdt,
                                     void* y, int odt) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    __syncthreads();
    warp_rows<DT, R>(x, m, NibbleWeight{packed, absmax, table, blocksize}, n, k, bias, bdt, y, odt);
}

// x of dtype DT times a dense weight of dtype WDT (DT itself, or f16/bf16 kept as the checkpoint stores it).
// When k % 8 == 0 each lane reads 8 consecutive weights and activations per step (16-byte loads, four steps
// unrolled so that several are in flight): one column per lane at a time moved 2-4 bytes per load and left
// a half-precision output head (the largest single read of a decode step) latency-bound. Per output, lane
// l sums columns 8l .. 8l + 7, then 8l + 256 .., in order with fmas, then the warp reduction: the same order
// for every weight dtype, so a weight kept in f16/bf16 gives the bits of its f32 widening.
template <int DT, int WDT, int R>
__device__ void linear_rows_impl(const void* x, u64 m, const void* w, u32 n, u32 k, const void* bias, int bdt, void* y,
                                 int odt) {
    if (k % 8 != 0) {
        warp_rows<DT, R>(x, m, DenseWeight<WDT>{w}, n, k, bias, bdt, y, odt);
        return;
    }
    u32 lane = threadIdx.x & 31;
    u64 row = (u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u64 m0 = (u64)blockIdx.y * R;
    if (row >= n) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
#pragma unroll 4
    for (u32 c = lane * 8; c < k; c += 256) {
        float wv[8];
        load8<WDT>(w, row * k + c, wv);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (m0 + r < m) {
                float xv[8];
                load8<DT>(x, (m0 + r) * k + c, xv);
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r] = fmaf(wv[e], xv[e], acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && m0 + r < m) st_dt(y, (m0 + r) * n + row, odt, s + (bias_at(bias, bdt, row)));
    }
}

// Dense weight, many rows: 64x64 output tiles, k in slices of 16 through shared memory, 256 threads each
// computing 4x4 outputs. `w_of(col, kk)` reads the weight (dense element or decoded nibble).
#define TILE 64
#define TK 16
template <int DT, int FOURBIT>
__device__ void gemm_impl(const void* x, u64 m, const void* w, const float* absmax, const float* table_g,
                          u32 n, u32 k, u32 blocksize, const void* bias, int bdt, void* y, int odt) {
    __shared__ float xs[TK][TILE + 1];
    __shared__ float ws[TK][TILE + 1];
    __shared__ float table[16];
    if (FOURBIT && threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    u64 i0 = (u64)blockIdx.y * TILE;
    u64 j0 = (u64)blockIdx.x * TILE;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;
    __syncthreads();
    for (u32 k0 = 0; k0 < k; k0 += TK) {
        for (int t = threadIdx.x; t < TK * TILE; t += 256) {
            int kk = t % TK, rr = t / TK;
            u64 kc = k0 + kk;
            u64 xi = i0 + rr, wj = j0 + rr;
            xs[kk][rr] = (xi < m && kc < k) ? ldf<DT>(x, xi * k + kc) : 0.0f;
            float wv = 0.0f;
            if (wj < n && kc < k) {
                u64 e = wj * k + kc;
                if (FOURBIT) {
                    u32 b = ((const u8*)w)[e >> 1];
                    wv = table[(e & 1) ? (b & 15u) : (b >> 4)] * absmax[e / blocksize];
                } else {
                    wv = ldf<DT>(w, e);
                }
            }
            ws[kk][rr] = wv;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float xa[4], wb[4];
#pragma unroll
            for (int a = 0; a < 4; a++) xa[a] = xs[kk][ty * 4 + a];
#pragma unroll
            for (int b = 0; b < 4; b++) wb[b] = ws[kk][tx * 4 + b];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) acc[a][b] += xa[a] * wb[b];
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        u64 i = i0 + ty * 4 + a;
        if (i >= m) continue;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            u64 j = j0 + tx * 4 + b;
            if (j < n) st_dt(y, i * n + j, odt, acc[a][b] + (bias_at(bias, bdt, j)));
        }
    }
}

#define WORDS_KERNEL_AS(NAME, DT, R, NR, WHOLE)                                                                \
    extern "C" __global__ void __launch_bounds__(32 * LIN_WARPS, LIN4_BLOCKS(R, NR))                         \
        NAME(const void* x, u64 m, const uint4* packed, const float* absmax, const float* table, u32 n, u32 k, \
             u32 blocksize, const void* bias, int bdt, void* y, int odt) { pdl_entry();                               \
        linear_4bit_words_impl<DT, R, NR, WHOLE>(x, m, packed, absmax, table, n, k, blocksize, bias, bdt, y, odt); \
    }
#define WORDS_KERNEL(SUFFIX, DT, R, NR)                                                                        \
    WORDS_KERNEL_AS(linear_4bit_words_##SUFFIX##_r##R##_w##NR, DT, R, NR, false)
// One activation row staged whole (`_s`: the host picks it when the row fits in 72 KiB).
#define WORDS_KERNELS_STAGED(SUFFIX, DT)                                                                       \
    WORDS_KERNEL_AS(linear_4bit_words_##SUFFIX##_r1_w2_s, DT, 1, 2, true)                                    \
    WORDS_KERNEL_AS(linear_4bit_words_##SUFFIX##_r1_w4_s, DT, 1, 4, true)
#define LINEAR_KERNELS(SUFFIX, DT, R)                                                                          \
    WORDS_KERNEL(SUFFIX, DT, R, 2)                                                                            \
    WORDS_KERNEL(SUFFIX, DT, R, 4)                                                                            \
    extern "C" __global__ void linear_4bit_any_##SUFFIX##_r##R(const void* x, u64 m, const u8* packed,       \
                                                              const float* absmax, const float* table, u32 n, \
                                                              u32 k, u32 blocksize, const void* bias, int bdt,        \
                                                              void* y, int odt) { pdl_entry();                \
        linear_4bit_any_impl<DT, R>(x, m, packed, absmax, table, n, k, blocksize, bias, bdt, y, odt);                  \
    }                                                                                                         \
    extern "C" __global__ void linear_rows_##SUFFIX##_r##R(const void* x, u64 m, const void* w, u32 n, u32 k, \
                                                          const void* bias, int bdt, void* y, int odt) { pdl_entry(); \
        linear_rows_impl<DT, DT, R>(x, m, w, n, k, bias, bdt, y, odt);                                                  \
    }                                                                                                         \
    extern "C" __global__ void linear_rows_##SUFFIX##_r##R##_wf16(const void* x, u64 m, const void* w, u32 n, \
                                                                 u32 k, const void* bias, int bdt, void* y, int odt) { pdl_entry(); \
        linear_rows_impl<DT, DT_F16, R>(x, m, w, n, k, bias, bdt, y, odt);                                              \
    }                                                                                                         \
    extern "C" __global__ void linear_rows_##SUFFIX##_r##R##_wbf16(const void* x, u64 m, const void* w, u32 n, \
                                                                  u32 k, const void* bias, int bdt, void* y, int odt) { pdl_entry(); \
        linear_rows_impl<DT, DT_BF16, R>(x, m, w, n, k, bias, bdt, y, odt);                                             \
    }

#define LINEAR_KERNELS_ALL_R(SUFFIX, DT)                                                                       \
    WORDS_KERNELS_STAGED(SUFFIX, DT)                                                                          \
    LINEAR_KERNELS(SUFFIX, DT, 1)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 2)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 4)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 8)                                                                             \
    extern "C" __global__ void gemm_dense_##SUFFIX(const void* x, u64 m, const void* w, u32 n, u32 k,         \
                                                   const void* bias, int bdt, void* y, int odt) { pdl_entry();       \
        gemm_impl<DT, 0>(x, m, w, 0, 0, n, k, 1, bias, bdt, y, odt);                                                    \
    }                                                                                                         \
    extern "C" __global__ void gemm_4bit_##SUFFIX(const void* x, u64 m, const u8* packed,                     \
                                                  const float* absmax, const float* table, u32 n, u32 k,      \
                                                  u32 blocksize, const void* bias, int bdt, void* y, int odt) { pdl_entry(); \
        gemm_impl<DT, 1>(x, m, packed, absmax, table, n, k, blocksize, bias, bdt, y, odt);                              \
    }
// One activation dtype per program (the host compiles the family it needs: see context.rs); the f16 and
// bf16 programs also hold the tensor-core kernel (linear_mma.cu).
#if defined(LOWBIT_LINEAR_F32)
LINEAR_KERNELS_ALL_R(f32, DT_F32)
#elif defined(LOWBIT_LINEAR_F16)
LINEAR_KERNELS_ALL_R(f16, DT_F16)
#elif defined(LOWBIT_LINEAR_BF16)
LINEAR_KERNELS_ALL_R(bf16, DT_BF16)
#endif

// y[i, j] = y32[i, j] + bias[j] in `odt`: the bias and the one rounding after a cuBLAS product.
extern "C" __global__ void bias_finish(const float* y32, const void* bias, int bdt, u32 n, u64 total, void* y, int odt) {
    pdl_entry();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x)
        st_dt(y, i, odt, y32[i] + (bias_at(bias, bdt, i % n)));
}
