// Linear layers `y[m, n] = x[m, k] @ W[n, k]^T (+ bias)` with f32 accumulation and an f32 output (the host
// narrows to x's dtype with the cast kernel, round to nearest even, as the CPU).
//
// 4-bit (NF4/FP4): one warp per weight row; each lane reads 16-byte words of packed nibbles (32 weights of
// one quantization block when k % 32 == 0 and blocksize >= 32: `linear_4bit_words`), decodes each weight
// once and applies it to up to R activation rows held by the same lane. Other shapes take
// `linear_4bit_any`, one nibble at a time. Dense weights: the same warp-per-row scheme for few rows, a
// shared-memory tiled kernel for many.

#define LIN_WARPS 8

template <int DT, int R>
__device__ void linear_4bit_words_impl(const void* x, u64 m, const uint4* packed, const float* absmax,
                                       const float* table_g, u32 n, u32 k, u32 blocksize, const float* bias,
                                       float* y) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    __syncthreads();
    u32 lane = threadIdx.x & 31;
    u64 row = (u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u64 m0 = (u64)blockIdx.y * R;
    if (row >= n) return;
    u32 words = k >> 5;
    u32 words_per_block = blocksize >> 5;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    const uint4* wrow = packed + row * words;
    u64 word0 = row * words;
    for (u32 j = lane; j < words; j += 32) {
        uint4 wv = __ldg(wrow + j);
        float a = __ldg(absmax + (word0 + j) / words_per_block);
        u32 parts[4] = {wv.x, wv.y, wv.z, wv.w};
        u64 col = (u64)j * 32;
#pragma unroll
        for (int p = 0; p < 4; p++) {
#pragma unroll
            for (int byte = 0; byte < 4; byte++) {
                u32 b = (parts[p] >> (8 * byte)) & 255u;
                float w_hi = table[b >> 4] * a;
                float w_lo = table[b & 15u] * a;
                u64 c = col + p * 8 + byte * 2;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (m0 + r < m) {
                        const u64 base = (m0 + r) * k + c;
                        acc[r] += w_hi * ldf<DT>(x, base) + w_lo * ldf<DT>(x, base + 1);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && m0 + r < m) y[(m0 + r) * n + row] = s + (bias ? bias[row] : 0.0f);
    }
}

template <int DT, int R>
__device__ void linear_4bit_any_impl(const void* x, u64 m, const u8* packed, const float* absmax,
                                     const float* table_g, u32 n, u32 k, u32 blocksize, const float* bias,
                                     float* y) {
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = table_g[threadIdx.x];
    __syncthreads();
    u32 lane = threadIdx.x & 31;
    u64 row = (u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u64 m0 = (u64)blockIdx.y * R;
    if (row >= n) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (u32 c = lane; c < k; c += 32) {
        u64 i = row * k + c;
        u32 b = packed[i >> 1];
        float w = table[(i & 1) ? (b & 15u) : (b >> 4)] * absmax[i / blocksize];
#pragma unroll
        for (int r = 0; r < R; r++)
            if (m0 + r < m) acc[r] += w * ldf<DT>(x, (m0 + r) * k + c);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && m0 + r < m) y[(m0 + r) * n + row] = s + (bias ? bias[row] : 0.0f);
    }
}

// Dense weight, few rows: a warp per weight row.
template <int DT, int R>
__device__ void linear_rows_impl(const void* x, u64 m, const void* w, u32 n, u32 k, const float* bias, float* y) {
    u32 lane = threadIdx.x & 31;
    u64 row = (u64)blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u64 m0 = (u64)blockIdx.y * R;
    if (row >= n) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (u32 c = lane; c < k; c += 32) {
        float wv = ldf<DT>(w, row * k + c);
#pragma unroll
        for (int r = 0; r < R; r++)
            if (m0 + r < m) acc[r] += wv * ldf<DT>(x, (m0 + r) * k + c);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && m0 + r < m) y[(m0 + r) * n + row] = s + (bias ? bias[row] : 0.0f);
    }
}

// Dense weight, many rows: 64x64 output tiles, k in slices of 16 through shared memory, 256 threads each
// computing 4x4 outputs. `w_of(col, kk)` reads the weight (dense element or decoded nibble).
#define TILE 64
#define TK 16
template <int DT, int FOURBIT>
__device__ void gemm_impl(const void* x, u64 m, const void* w, const float* absmax, const float* table_g,
                          u32 n, u32 k, u32 blocksize, const float* bias, float* y) {
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
            if (j < n) y[i * n + j] = acc[a][b] + (bias ? bias[j] : 0.0f);
        }
    }
}

#define LINEAR_KERNELS(SUFFIX, DT, R)                                                                          \
    extern "C" __global__ void linear_4bit_words_##SUFFIX##_r##R(const void* x, u64 m, const uint4* packed,  \
                                                                const float* absmax, const float* table,     \
                                                                u32 n, u32 k, u32 blocksize,                  \
                                                                const float* bias, float* y) {                \
        linear_4bit_words_impl<DT, R>(x, m, packed, absmax, table, n, k, blocksize, bias, y);                \
    }                                                                                                         \
    extern "C" __global__ void linear_4bit_any_##SUFFIX##_r##R(const void* x, u64 m, const u8* packed,       \
                                                              const float* absmax, const float* table, u32 n, \
                                                              u32 k, u32 blocksize, const float* bias,        \
                                                              float* y) {                                     \
        linear_4bit_any_impl<DT, R>(x, m, packed, absmax, table, n, k, blocksize, bias, y);                  \
    }                                                                                                         \
    extern "C" __global__ void linear_rows_##SUFFIX##_r##R(const void* x, u64 m, const void* w, u32 n, u32 k, \
                                                          const float* bias, float* y) {                      \
        linear_rows_impl<DT, R>(x, m, w, n, k, bias, y);                                                      \
    }

#define LINEAR_KERNELS_ALL_R(SUFFIX, DT)                                                                       \
    LINEAR_KERNELS(SUFFIX, DT, 1)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 2)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 4)                                                                             \
    LINEAR_KERNELS(SUFFIX, DT, 8)                                                                             \
    extern "C" __global__ void gemm_dense_##SUFFIX(const void* x, u64 m, const void* w, u32 n, u32 k,         \
                                                   const float* bias, float* y) {                             \
        gemm_impl<DT, 0>(x, m, w, 0, 0, n, k, 1, bias, y);                                                    \
    }                                                                                                         \
    extern "C" __global__ void gemm_4bit_##SUFFIX(const void* x, u64 m, const u8* packed,                     \
                                                  const float* absmax, const float* table, u32 n, u32 k,      \
                                                  u32 blocksize, const float* bias, float* y) {               \
        gemm_impl<DT, 1>(x, m, packed, absmax, table, n, k, blocksize, bias, y);                              \
    }
LINEAR_KERNELS_ALL_R(f32, DT_F32)
LINEAR_KERNELS_ALL_R(f16, DT_F16)
LINEAR_KERNELS_ALL_R(bf16, DT_BF16)
