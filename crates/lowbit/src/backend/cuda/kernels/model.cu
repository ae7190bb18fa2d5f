// The float ops a model needs. Inputs of any float dtype (`dt`), computed in f32, written in `odt` (round to
// nearest even), so no separate narrowing pass is needed. Each step is rounded where the CPU reference
// rounds it (`__fmul_rn`/`__fadd_rn`: no contraction into an fma), except where results are only compared
// within a tolerance (dot products).

#define GRID_LOOP(i, n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

extern "C" __global__ void cast(const void* x, int dt, u64 n, void* y, int odt) {
    pdl_entry();
    GRID_LOOP(i, n) st_dt(y, i, odt, ld_dt(x, i, dt));
}

// Columns [start, start + len) of every row of x [rows, cols], elements of `es` bytes (4, or 2 for halves).
extern "C" __global__ void narrow_cols(const void* x, u64 rows, u64 cols, u64 start, u64 len, int es, void* y) {
    pdl_entry();
    GRID_LOOP(i, rows * len) {
        u64 r = i / len, c = start + i % len;
        if (es == 4) ((u32*)y)[i] = ((const u32*)x)[r * cols + c];
        else ((u16*)y)[i] = ((const u16*)x)[r * cols + c];
    }
}

// op: 0 add, 1 silu(a) * b, 2 relu(a)^2 * b.
extern "C" __global__ void binary(const void* a, const void* b, int dt, u64 n, int op, void* y) {
    pdl_entry();
    GRID_LOOP(i, n) {
        float g = ld_dt(a, i, dt), u = ld_dt(b, i, dt), v;
        if (op == 0) v = __fadd_rn(g, u);
        else if (op == 1) v = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
        else {
            float r = g > 0.0f ? g : 0.0f;
            v = __fmul_rn(__fmul_rn(r, r), u);
        }
        st_dt(y, i, dt, v);
    }
}

// kind 0: tanh form `x / (1 + exp(-2u))`, u = beta (x + kappa x^3); kind 1: `x * 0.5 * (1 + erf(x / sqrt 2))`.
extern "C" __global__ void gelu(const void* x, int dt, u64 n, int kind, float beta, float kappa, float rsqrt2, void* y) {
    pdl_entry();
    GRID_LOOP(i, n) {
        float v = ld_dt(x, i, dt), r;
        if (kind == 0) {
            float u = __fmul_rn(beta, __fadd_rn(v, __fmul_rn(kappa, __fmul_rn(__fmul_rn(v, v), v))));
            r = __fdiv_rn(v, __fadd_rn(1.0f, expf(__fmul_rn(-2.0f, u))));
        } else {
            r = __fmul_rn(__fmul_rn(v, 0.5f), __fadd_rn(1.0f, erff(__fmul_rn(v, rsqrt2))));
        }
        st_dt(y, i, dt, r);
    }
}

// One block per row: x / sqrt(mean(x^2) + eps) * w, the mean in f64 as the CPU's. The host sizes the block
// to about 4 columns per thread: a decode step's one row is one block, whose time is its chain of loads, so
// a row of at most NORM_REGS columns per thread holds x and w in registers, both loaded before the sum (one
// round of loads instead of three). Either way each thread sums its columns in the same order.
#define NORM_REGS 4
extern "C" __global__ void __launch_bounds__(1024) rms_norm(const void* x, int dt, const void* w, int wdt, u32 cols, float eps, void* y) {
    pdl_entry();
    u64 r = blockIdx.x;
    double s = 0.0;
    if (cols <= NORM_REGS * blockDim.x) {
        float xv[NORM_REGS], wv[NORM_REGS];
#pragma unroll
        for (u32 k = 0; k < NORM_REGS; k++) {
            u32 c = threadIdx.x + k * blockDim.x;
            xv[k] = c < cols ? ld_dt(x, r * cols + c, dt) : 0.0f;
            wv[k] = c < cols ? ld_dt(w, c, wdt) : 0.0f;
        }
#pragma unroll
        for (u32 k = 0; k < NORM_REGS; k++) {
            if (threadIdx.x + k * blockDim.x < cols) s += (double)xv[k] * (double)xv[k];
        }
        s = block_sum_d(s);
        float inv = (float)(1.0 / sqrt(s / (double)cols + (double)eps));
#pragma unroll
        for (u32 k = 0; k < NORM_REGS; k++) {
            u32 c = threadIdx.x + k * blockDim.x;
            if (c < cols) st_dt(y, r * cols + c, dt, __fmul_rn(__fmul_rn(xv[k], inv), wv[k]));
        }
        return;
    }
#pragma unroll 4
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        double v = ld_dt(x, r * cols + c, dt);
        s += v * v;
    }
    s = block_sum_d(s);
    float inv = (float)(1.0 / sqrt(s / (double)cols + (double)eps));
#pragma unroll 4
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x)
        st_dt(y, r * cols + c, dt, __fmul_rn(__fmul_rn(ld_dt(x, r * cols + c, dt), inv), ld_dt(w, c, wdt)));
}

// One block per row: exp(x - max) / sum, the sum in f64 as the CPU's.
extern "C" __global__ void softmax(const void* x, int dt, u32 cols, void* y) {
    pdl_entry();
    u64 r = blockIdx.x;
    float m = -__int_as_float(0x7f800000);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, ld_dt(x, r * cols + c, dt));
    m = block_max(m, -__int_as_float(0x7f800000));
    double s = 0.0;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) s += (double)expf(__fsub_rn(ld_dt(x, r * cols + c, dt), m));
    s = block_sum_d(s);
    float inv = (float)(1.0 / s);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x)
        st_dt(y, r * cols + c, dt, __fmul_rn(expf(__fsub_rn(ld_dt(x, r * cols + c, dt), m)), inv));
}

// Row gather of `esize`-byte elements: out[t] = table[ids[t]].
extern "C" __global__ void embedding(const u8* table, const i32* ids, u32 n, u64 row_bytes, u8* out) {
    pdl_entry();
    u64 total = (u64)n * row_bytes;
    GRID_LOOP(i, total) {
        u64 t = i / row_bytes, b = i % row_bytes;
        out[i] = table[(u64)ids[t] * row_bytes + b];
    }
}

// Copies `bytes` from src to row `row` (plus a recorded step's position, when `step` is not null) of dst,
// whose rows are `row_bytes` long: a KV cache append whose row a recorded step reads from device memory.
__device__ __forceinline__ void copy_rows_body(const u8* src, u8* dst, u64 row_bytes, u64 bytes, u32 row, const u32* step) {
    u64 base = (u64)(row + (step ? step[0] : 0u)) * row_bytes;
    if ((row_bytes | bytes | (u64)src | (u64)dst) % 4 == 0) {
        GRID_LOOP(i, bytes / 4) ((u32*)(dst + base))[i] = ((const u32*)src)[i];
    } else {
        GRID_LOOP(i, bytes) dst[base + i] = src[i];
    }
}
extern "C" __global__ void copy_rows_at(const u8* src, u8* dst, u64 row_bytes, u64 bytes, u32 row, const u32* step) {
    pdl_entry();
    copy_rows_body(src, dst, row_bytes, bytes, row, step);
}
// Two appends in one launch (a KV cache's keys and values): blockIdx.y picks the pair.
extern "C" __global__ void copy_rows_pair(const u8* src0, u8* dst0, u64 row_bytes0, u64 bytes0, const u8* src1, u8* dst1,
                                          u64 row_bytes1, u64 bytes1, u32 row, const u32* step) {
    pdl_entry();
    if (blockIdx.y == 0) copy_rows_body(src0, dst0, row_bytes0, bytes0, row, step);
    else copy_rows_body(src1, dst1, row_bytes1, bytes1, row, step);
}

// Rotary embedding of x [tokens, heads, head_dim]; `interleaved` pairs (2i, 2i+1), else (i, i + rot/2).
// `step` (a recorded step's arguments, or null): its position is added to pos_start.
extern "C" __global__ void rope(const void* x, int dt, u32 tokens, u32 heads, u32 head_dim, u32 rot, u32 pos_start,
                                int interleaved, const float* cos_t, const float* sin_t, void* y, const u32* step) {
    pdl_entry();
    if (step) pos_start += step[0];
    u64 total = (u64)tokens * heads * head_dim;
    u32 half = rot / 2;
    GRID_LOOP(i, total) {
        u32 d = i % head_dim;
        u64 head = i - d;
        u32 t = (u32)(i / ((u64)heads * head_dim));
        float v = ld_dt(x, i, dt);
        if (d < rot) {
            u32 p, ia, ib;
            bool first;
            if (interleaved) { p = d >> 1; ia = 2 * p; ib = ia + 1; first = (d & 1) == 0; }
            else { p = d < half ? d : d - half; ia = p; ib = p + half; first = d < half; }
            u64 tab = (u64)(pos_start + t) * half + p;
            float c = cos_t[tab], s = sin_t[tab];
            float a = ld_dt(x, head + ia, dt), b = ld_dt(x, head + ib, dt);
            v = first ? __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)) : __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
        }
        st_dt(y, i, dt, v);
    }
}

// Causal attention, one block per (query row, head): scores into `scratch` [nq * n_heads, kv_len], then the
// softmax-weighted sum of V. Query i sees keys 0..min(pos_start + i + 1, kv_len).
extern "C" __global__ void attention(const void* q, const void* k, const void* v, int dt, u32 n_heads, u32 n_kv_heads,
                                     u32 head_dim, u32 kv_len, u32 pos_start, float scale, float* scratch, void* y) {
    pdl_entry();
    u64 row = blockIdx.x;
    u32 i = row / n_heads, h = row % n_heads;
    u32 n_keys = min(pos_start + i + 1, kv_len);
    u32 group = n_heads / n_kv_heads;
    u64 kv_row = (u64)n_kv_heads * head_dim, off = (u64)(h / group) * head_dim;
    float* sc = scratch + row * kv_len;
    const u64 qb = row * head_dim;
    float m = -__int_as_float(0x7f800000);
    for (u32 j = threadIdx.x; j < n_keys; j += blockDim.x) {
        float dot = 0.0f;
        for (u32 d = 0; d < head_dim; d++) dot += ld_dt(q, qb + d, dt) * ld_dt(k, j * kv_row + off + d, dt);
        float s = __fmul_rn(dot, scale);
        sc[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, -__int_as_float(0x7f800000));
    float l = 0.0f;
    for (u32 j = threadIdx.x; j < n_keys; j += blockDim.x) {
        float p = expf(__fsub_rn(sc[j], m));
        sc[j] = p;
        l += p;
    }
    __shared__ float part[32];
    l = warp_sum(l);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = l;
    __syncthreads();
    float total = 0.0f;
    for (u32 w = 0; w < (blockDim.x + 31) / 32; w++) total += part[w];
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (u32 j = 0; j < n_keys; j++) acc += sc[j] * ld_dt(v, j * kv_row + off + d, dt);
        st_dt(y, qb + d, dt, n_keys ? __fdiv_rn(acc, total) : 0.0f);
    }
}

// Tiled causal attention for prompts (flash-attention order on CUDA cores, f32 throughout): a block takes
// ATT_T_ROWS query rows of one head (ATT_T_RPW per warp) and walks the keys its last row sees in tiles of
// ATT_T_KEYS, staged in shared memory once for all its rows, with a running max and sum per row (online
// softmax). Replaces one block per (row, head) whose threads each read a whole key row from memory: the
// prompt's attention was most of a prefill. head_dim: a multiple of 4, at most 32 * NC; operands aligned to
// four elements. Shared memory (dynamic): the query tile, a key and a value tile, the warps' probabilities.
#define ATT_T_ROWS 32
#define ATT_T_KEYS 32
#define ATT_T_STRIDE 132
#define ATT_T_RPW (ATT_T_ROWS / 4)


template <int DT, int NC>
__device__ __forceinline__ void attention_tiled_body(const void* q, const void* k, const void* v, u32 n_heads,
                                                     u32 n_kv_heads, u32 D, u32 kv_len, u32 pos_start,
                                                     float scale, u32 nq, void* y, float* smem) {
    float* qs = smem;
    float* ks = qs + ATT_T_ROWS * ATT_T_STRIDE;
    float* vs = ks + ATT_T_KEYS * ATT_T_STRIDE;
    float* ps = vs + ATT_T_KEYS * ATT_T_STRIDE;  // [ATT_T_ROWS][ATT_T_KEYS]
    const u32 h = blockIdx.y, i0 = blockIdx.x * ATT_T_ROWS;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 kv_row = (u64)n_kv_heads * D, off = (u64)(h / (n_heads / n_kv_heads)) * D;
    const u64 q_row = (u64)n_heads * D;
    // Tile loads: thread t moves four elements (column c4 * 4) of rows r0, r0 + rstep, ...
    const u32 per_row = D / 4, r0 = threadIdx.x / per_row, c4 = threadIdx.x - r0 * per_row;
    const u32 rstep = blockDim.x / per_row;
    const bool loads = r0 < rstep;
    if (loads) {
        for (u32 r = r0; r < ATT_T_ROWS; r += rstep) {
            u32 i = i0 + r;
            float4 x4 = i < nq ? ld4<DT>(q, (u64)i * q_row + (u64)h * D + 4 * c4) : make_float4(0.f, 0.f, 0.f, 0.f);
            *(float4*)(qs + r * ATT_T_STRIDE + 4 * c4) = x4;
        }
    }
    const u32 last = min(i0 + ATT_T_ROWS, nq) - 1;
    const u32 n_keys = min(pos_start + last + 1, kv_len);
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m[ATT_T_RPW], l[ATT_T_RPW], o[ATT_T_RPW][NC];
#pragma unroll
    for (int r = 0; r < ATT_T_RPW; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0f;  // this lane's part of the row's sum
#pragma unroll
        for (int c = 0; c < NC; c++) o[r][c] = 0.0f;
    }
    const float* qw = qs + warp * ATT_T_RPW * ATT_T_STRIDE;
    float* pw = ps + warp * ATT_T_RPW * ATT_T_KEYS;
    for (u32 j0 = 0; j0 < n_keys; j0 += ATT_T_KEYS) {
        __syncthreads();  // every warp is done with the tile before (and the query tile is written)
        if (loads) {
            for (u32 r = r0; r < ATT_T_KEYS; r += rstep) {
                u32 j = j0 + r;
                float4 k4 = make_float4(0.f, 0.f, 0.f, 0.f), v4 = k4;
                if (j < kv_len) {
                    u64 at = (u64)j * kv_row + off + 4 * c4;
                    k4 = ld4<DT>(k, at);
                    v4 = ld4<DT>(v, at);
                }
                *(float4*)(ks + r * ATT_T_STRIDE + 4 * c4) = k4;
                *(float4*)(vs + r * ATT_T_STRIDE + 4 * c4) = v4;
            }
        }
        __syncthreads();
        // Scores: lane = key of the tile, the warp's rows in registers.
        float s[ATT_T_RPW];
#pragma unroll
        for (int r = 0; r < ATT_T_RPW; r++) s[r] = 0.0f;
        const float* kr = ks + lane * ATT_T_STRIDE;
        for (u32 d = 0; d < D; d += 4) {
            float4 k4 = *(const float4*)(kr + d);
#pragma unroll
            for (int r = 0; r < ATT_T_RPW; r++) {
                float4 q4 = *(const float4*)(qw + r * ATT_T_STRIDE + d);
                s[r] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
            }
        }
        const u32 j = j0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_T_RPW; r++) {
            u32 i = i0 + warp * ATT_T_RPW + r;
            bool seen = j < min(pos_start + i + 1, kv_len);
            float sc = seen ? s[r] * scale : NEG_INF;
            // Key 0 is in every row's first tile, so the running max is finite from the first tile on.
            float mn = fmaxf(m[r], warp_max(sc));
            float p = seen ? expf(sc - mn) : 0.0f;
            float corr = mn == m[r] ? 1.0f : expf(m[r] - mn);
            l[r] = l[r] * corr + p;
#pragma unroll
            for (int c = 0; c < NC; c++) o[r][c] *= corr;
            m[r] = mn;
            pw[r * ATT_T_KEYS + lane] = p;
        }
        __syncwarp();
        // Weighted values: lane = columns lane, lane + 32, ...
        for (u32 jj = 0; jj < ATT_T_KEYS; jj += 4) {
            float4 p4[ATT_T_RPW];
#pragma unroll
            for (int r = 0; r < ATT_T_RPW; r++) p4[r] = *(const float4*)(pw + r * ATT_T_KEYS + jj);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const float* vr = vs + (jj + u) * ATT_T_STRIDE + lane;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    float vv = vr[32 * c];  // columns past D hold whatever: their sums are never written
#pragma unroll
                    for (int r = 0; r < ATT_T_RPW; r++) {
                        float pr = u == 0 ? p4[r].x : u == 1 ? p4[r].y : u == 2 ? p4[r].z : p4[r].w;
                        o[r][c] += pr * vv;
                    }
                }
            }
        }
        __syncwarp();  // the probabilities are read before the next tile writes them
    }
#pragma unroll
    for (int r = 0; r < ATT_T_RPW; r++) {
        u32 i = i0 + warp * ATT_T_RPW + r;
        float total = warp_sum(l[r]);
        if (i >= nq) continue;
        u64 yb = (u64)i * q_row + (u64)h * D;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            u32 d = lane + 32 * c;
            if (d < D) st_dt(y, yb + d, DT, total > 0.0f ? __fdiv_rn(o[r][c], total) : 0.0f);
        }
    }
}

// Grid (ceil(nq / ATT_T_ROWS), n_heads), 128 threads, attention_tiled_shared() bytes of dynamic shared memory.
#define ATTENTION_TILED(NAME, NC)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                               \
        NAME(const void* q, const void* k, const void* v, int dt, u32 n_heads, u32 n_kv_heads, u32 head_dim,     \
             u32 kv_len, u32 pos_start, float scale, u32 nq, void* y) {                                             \
        pdl_entry();                                                                                                \
        extern __shared__ __align__(16) float att_smem[];                                                          \
        if (dt == DT_F32)                                                                                           \
            attention_tiled_body<DT_F32, NC>(q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, nq, \
                                             y, att_smem);                                                          \
        else if (dt == DT_F16)                                                                                      \
            attention_tiled_body<DT_F16, NC>(q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, nq, \
                                             y, att_smem);                                                          \
        else                                                                                                        \
            attention_tiled_body<DT_BF16, NC>(q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,    \
                                              nq, y, att_smem);                                                     \
    }
ATTENTION_TILED(attention_tiled_d64, 2)
ATTENTION_TILED(attention_tiled_d128, 4)

// Split-K (flash-decoding) attention for few query rows. Block (row, g, set, c) takes keys
// [c * ATT_CHUNK, (c + 1) * ATT_CHUNK) of query row `row` for the query heads of KV head g (up to ATT_HEADS
// of them: `set` picks which when a group is larger), so each key and value row is read once for the whole
// group; a warp per key at a time (lanes over head_dim, so key rows are read coalesced), each lane holding
// its part of the key in registers for every head of the group. It writes each head's chunk max score m, sum
// of exp(s - m) l and weighted V sum o to `part` [rows * n_heads, chunks, head_dim + 2]; `attention_merge`
// rescales and adds the chunks. head_dim <= 256.
// `step` (a recorded step's arguments, or null): its position is added to kv_len and pos_start, and the grid
// covers the whole cache (chunks past the last key write an empty part, which the merge skips).
// 16 keys per block: 4 per warp and 16 per value sum, so a block's chain of dependent loads is short.
#define ATT_CHUNK 16
#define ATT_HEADS 8
extern "C" __global__ void attention_split(const void* q, const void* k, const void* v, int dt, u32 n_heads,
                                           u32 n_kv_heads, u32 head_dim, u32 kv_len, u32 pos_start, float scale,
                                           float* part, const u32* step) {
    pdl_entry();
    if (step) {
        kv_len += step[0];
        pos_start += step[0];
    }
    __shared__ float qs[ATT_HEADS * 256];
    __shared__ float sc[ATT_HEADS][ATT_CHUNK];
    __shared__ float ms[ATT_HEADS], ls[ATT_HEADS];
    u32 group = n_heads / n_kv_heads, sets = (group + ATT_HEADS - 1) / ATT_HEADS;
    u32 b = blockIdx.x;
    u32 set = b % sets;
    b /= sets;
    u32 g = b % n_kv_heads, i = b / n_kv_heads;
    u32 h0 = g * group + set * ATT_HEADS, gh = min((u32)ATT_HEADS, group - set * ATT_HEADS);
    u32 chunk = blockIdx.y, chunks = gridDim.y;
    u32 n_keys = min(pos_start + i + 1, kv_len);
    u32 j0 = chunk * ATT_CHUNK, j1 = min(j0 + ATT_CHUNK, n_keys);
    u64 kv_row = (u64)n_kv_heads * head_dim, off = (u64)g * head_dim;
    u64 qrow0 = (u64)i * n_heads + h0;  // the block's first query head's row of `part`
    const u64 stride = head_dim + 2;
    if (j0 >= n_keys) {
        // Past the row's last key (a recorded step's grid covers the whole cache): empty parts, whose
        // weighted sums the merge never reads.
        for (u32 h = threadIdx.x; h < gh; h += blockDim.x) {
            float* out = part + ((qrow0 + h) * chunks + chunk) * stride;
            out[0] = -__int_as_float(0x7f800000);
            out[1] = 0.0f;
        }
        return;
    }
    // The group's query heads are contiguous in q's row.
    for (u32 e = threadIdx.x; e < gh * head_dim; e += blockDim.x) qs[e] = ld_dt(q, qrow0 * head_dim + e, dt);
    __syncthreads();
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll 2
    for (u32 j = j0 + warp; j < j1; j += warps) {
        float kd[8];
#pragma unroll
        for (u32 t = 0; t < 8; t++) {
            u32 d = lane + 32 * t;
            kd[t] = d < head_dim ? ld_dt(k, j * kv_row + off + d, dt) : 0.0f;
        }
#pragma unroll
        for (u32 h = 0; h < ATT_HEADS; h++) {
            if (h < gh) {
                float dot = 0.0f;
#pragma unroll
                for (u32 t = 0; t < 8; t++) {
                    u32 d = lane + 32 * t;
                    if (d < head_dim) dot += qs[h * head_dim + d] * kd[t];
                }
                float s = __fmul_rn(warp_sum(dot), scale);
                if (lane == 0) sc[h][j - j0] = s;
            }
        }
    }
    __syncthreads();
    // Each head's softmax over the chunk: a warp per head, a lane per key (ATT_CHUNK <= 32).
    for (u32 h = warp; h < gh; h += warps) {
        bool live = lane < j1 - j0;
        float s = live ? sc[h][lane] : -__int_as_float(0x7f800000);
        float m = warp_max(s);
        float p = live ? expf(__fsub_rn(s, m)) : 0.0f;
        float l = warp_sum(p);
        if (live) sc[h][lane] = p;
        if (lane == 0) {
            ms[h] = m;
            ls[h] = l;
        }
    }
    __syncthreads();
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc[ATT_HEADS];
#pragma unroll
        for (u32 h = 0; h < ATT_HEADS; h++) acc[h] = 0.0f;
#pragma unroll 16
        for (u32 j = j0; j < j1; j++) {
            float vv = ld_dt(v, j * kv_row + off + d, dt);
#pragma unroll
            for (u32 h = 0; h < ATT_HEADS; h++) acc[h] += sc[h][j - j0] * vv;
        }
#pragma unroll
        for (u32 h = 0; h < ATT_HEADS; h++) {
            if (h < gh) part[((qrow0 + h) * chunks + chunk) * stride + 2 + d] = acc[h];
        }
    }
    for (u32 h = threadIdx.x; h < gh; h += blockDim.x) {
        float* out = part + ((qrow0 + h) * chunks + chunk) * stride;
        out[0] = ms[h];
        out[1] = ls[h];
    }
}

// y[row] = (sum_c o_c exp(m_c - M)) / (sum_c l_c exp(m_c - M)), M = max_c m_c; zero for a row with no keys.
// Each chunk's weight exp(m_c - M) is computed once, by the block's threads side by side, into shared
// memory (MERGE_TILE chunks at a time); then warp w adds chunks w, w + MERGE_WARPS, ... (lanes over head_dim,
// every load independent of the others), and the warps' sums are added in warp order. A chunk with l = 0 (no
// keys, or past the last key) adds nothing, by selection: its o, never written, is loaded but not used, so a
// grid with more empty chunks (a recorded step's) gives the same bits.
#define MERGE_TILE 1024
#define MERGE_WARPS 8
extern "C" __global__ void attention_merge(const float* part, u32 chunks, u32 head_dim, int dt, void* y) {
    pdl_entry();
    __shared__ float wt[MERGE_TILE];
    __shared__ float os[MERGE_WARPS][256];
    __shared__ float lsum[MERGE_WARPS];
    u64 row = blockIdx.x;
    const u64 stride = head_dim + 2;
    const float* pr = part + row * chunks * stride;
    float mx = -__int_as_float(0x7f800000);
    for (u32 c = threadIdx.x; c < chunks; c += blockDim.x) mx = fmaxf(mx, pr[c * stride]);
    mx = block_max(mx, -__int_as_float(0x7f800000));
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float l = 0.0f;
    float acc[8];  // columns lane + 32 t (head_dim <= 256)
#pragma unroll
    for (u32 t = 0; t < 8; t++) acc[t] = 0.0f;
    for (u32 t0 = 0; t0 < chunks; t0 += MERGE_TILE) {
        u32 tn = min(chunks - t0, (u32)MERGE_TILE);
        __syncthreads();
        for (u32 c = threadIdx.x; c < tn; c += blockDim.x) {
            const float* pc = pr + (t0 + c) * stride;
            wt[c] = pc[1] > 0.0f ? expf(__fsub_rn(pc[0], mx)) : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (u32 c = warp; c < tn; c += MERGE_WARPS) {
            const float* pc = pr + (t0 + c) * stride;
            float w = wt[c], lc = pc[1];
            l = w != 0.0f ? l + lc * w : l;
#pragma unroll
            for (u32 t = 0; t < 8; t++) {
                u32 d = lane + 32 * t;
                if (d < head_dim) {
                    float o = pc[2 + d];
                    acc[t] = w != 0.0f ? acc[t] + o * w : acc[t];
                }
            }
        }
    }
#pragma unroll
    for (u32 t = 0; t < 8; t++) {
        u32 d = lane + 32 * t;
        if (d < head_dim) os[warp][d] = acc[t];
    }
    if (lane == 0) lsum[warp] = l;
    __syncthreads();
    float total = 0.0f;
    for (u32 w = 0; w < MERGE_WARPS; w++) total += lsum[w];
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (u32 w = 0; w < MERGE_WARPS; w++) o += os[w][d];
        st_dt(y, row * head_dim + d, dt, total > 0.0f ? __fdiv_rn(o, total) : 0.0f);
    }
}
