// LLM.int8() (FORMATS.md §7) and BitNet b1.58 (§9): row quantizers, exact integer products and their
// rescales, each float step rounded as the CPU reference rounds it.

// flags[c] = 1 iff some row has |a| >= threshold (or NaN) in column c.
extern "C" __global__ void int8_col_outliers(const void* a, int dt, u32 rows, u32 cols, float threshold, u32* flags) {
    pdl_entry();
    u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    u32 f = 0;
    for (u32 r = 0; r < rows && !f; r++) {
        float v = ld_dt(a, (u64)r * cols + c, dt);
        f = fabsf(v) >= threshold || isnan(v);
    }
    flags[c] = f;
}

// One block per row: row_stats = max |a| over inliers, scale = RN(127 * rcp(row_stats)), q = rint(a * scale)
// (outliers, NaN and flagged columns give 0).
extern "C" __global__ void int8_row_quant(const void* a, int dt, u32 cols, float threshold, const u32* flags,
                                          i8* q, float* row_stats) {
    pdl_entry();
    u64 r = blockIdx.x;
    const bool th = threshold > 0.0f;
    float m = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ld_dt(a, r * cols + c, dt);
        bool outlier = th && (fabsf(v) >= threshold || isnan(v));
        if (!outlier) m = fmaxf(m, fabsf(v));
    }
    m = block_max(m, 0.0f);
    float scale = mul_ftz(127.0f, rcp_approx(m));
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ld_dt(a, r * cols + c, dt);
        bool outlier = th && (fabsf(v) >= threshold || isnan(v));
        float p = mul_ftz(v, scale);
        bool zero = outlier || isnan(p) || (flags && flags[c]);
        q[r * cols + c] = zero ? 0 : (i8)(int)rintf(p);
    }
    if (threadIdx.x == 0) row_stats[r] = m;
}

extern "C" __global__ void int8_dequant(const i8* q, const float* row_stats, u32 cols, u64 n, float inv127, float* out) {
    pdl_entry();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = __fmul_rn(__fmul_rn((float)q[i], row_stats[i / cols]), inv127);
}

// Exact C[m, n] = A[m, k] @ B[n, k]^T in i32: 32x32 tiles through shared memory.
extern "C" __global__ void int8_gemm(const i8* a, const i8* b, u32 m, u32 n, u32 k, i32* c) {
    pdl_entry();
    __shared__ i32 as[32][33];
    __shared__ i32 bs[32][33];
    u32 tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // 32 x 8 threads
    u32 i0 = blockIdx.y * 32, j0 = blockIdx.x * 32;
    i32 acc[4] = {0, 0, 0, 0};
    for (u32 k0 = 0; k0 < k; k0 += 32) {
        for (u32 rr = ty; rr < 32; rr += 8) {
            u32 kc = k0 + tx;
            as[rr][tx] = (i0 + rr < m && kc < k) ? (i32)a[(u64)(i0 + rr) * k + kc] : 0;
            bs[rr][tx] = (j0 + rr < n && kc < k) ? (i32)b[(u64)(j0 + rr) * k + kc] : 0;
        }
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < 32; kk++) {
            i32 bv = bs[tx][kk];
#pragma unroll
            for (int t = 0; t < 4; t++) acc[t] += as[ty + 8 * t][kk] * bv;
        }
        __syncthreads();
    }
    for (int t = 0; t < 4; t++) {
        u32 i = i0 + ty + 8 * t, j = j0 + tx;
        if (i < m && j < n) c[(u64)i * n + j] = acc[t];
    }
}

// Four signed bytes of `a` times four of `b`, summed into `c` (exact; sm_61+).
__device__ __forceinline__ i32 dp4a(u32 a, u32 b, i32 c) {
    i32 d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Activation rows per pass of the dp4a GEMVs below.
#define DP4A_ROWS 8

// Exact C[m, n] = A[m, k] @ B[n, k]^T for few rows of A, k % 16 == 0: a warp per row of B, each lane 16 bytes
// of that row and of every A row of the pass at a time through dp4a, so each weight byte is read once per
// pass with 16-byte loads. Integer sums are exact, so the result equals `int8_gemm`'s whatever the order.
extern "C" __global__ void int8_gemv_dp4a(const uint4* a, const uint4* b, u32 m, u32 n, u32 k, i32* c) {
    pdl_entry();
    u32 lane = threadIdx.x & 31;
    u32 j = blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u32 m0 = blockIdx.y * DP4A_ROWS;
    if (j >= n) return;
    u32 words = k >> 4;
    const uint4* brow = b + (u64)j * words;
    i32 acc[DP4A_ROWS];
#pragma unroll
    for (int r = 0; r < DP4A_ROWS; r++) acc[r] = 0;
    for (u32 w = lane; w < words; w += 32) {
        uint4 bv = __ldg(brow + w);
#pragma unroll
        for (int r = 0; r < DP4A_ROWS; r++) {
            if (m0 + r < m) {
                uint4 av = __ldg(a + (u64)(m0 + r) * words + w);
                acc[r] = dp4a(av.x, bv.x, acc[r]);
                acc[r] = dp4a(av.y, bv.y, acc[r]);
                acc[r] = dp4a(av.z, bv.z, acc[r]);
                acc[r] = dp4a(av.w, bv.w, acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < DP4A_ROWS; r++) {
        i32 s = acc[r];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0 && m0 + r < m) c[(u64)(m0 + r) * n + j] = s;
    }
}

// f16(fma(C * row * col, scale, bias)): bitsandbytes' int8_mm_dequant, one fused multiply-add.
extern "C" __global__ void int8_mm_dequant(const i32* c, const float* row_stats, const float* col_stats,
                                           const float* bias, u32 n, u64 total, float scale, u16* out) {
    pdl_entry();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < total; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / n, j = i % n;
        float t = __fmul_rn(__fmul_rn(__int2float_rn(c[i]), row_stats[r]), col_stats[j]);
        out[i] = f2h(__fmaf_rn(t, scale, bias ? bias[j] : 0.0f));
    }
}

// The outlier columns' operands of Linear8bitLt: xs[m, nc] = x16[:, cols], ws[n, nc] = f16(W[:, cols] * SCB / 127).
extern "C" __global__ void int8_outlier_operands(const u16* x16, const i8* w, const float* scb, const u32* cols,
                                                 u32 nc, u32 m, u32 n, u32 k, float inv127, u16* xs, u16* ws) {
    pdl_entry();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 total = (u64)(m + n) * nc;
    for (; i < total; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / nc, t = i % nc;
        u32 c = cols[t];
        if (r < m) xs[r * nc + t] = x16[r * k + c];
        else {
            u64 j = r - m;
            ws[j * nc + t] = f2h(__fmul_rn(__fmul_rn((float)w[j * k + c], scb[j]), inv127));
        }
    }
}

// The outlier columns of `flags` in ascending order, and their count, on the device (one block of 1024
// threads, each a contiguous run of columns): the few-row layer needs no host round trip to learn them.
extern "C" __global__ void __launch_bounds__(1024) int8_outlier_list(const u32* flags, u32 cols, u32* list, u32* count) {
    pdl_entry();
    __shared__ u32 warp_total[32];
    u32 t = threadIdx.x, lane = t & 31, warp = t >> 5;
    u32 per = (cols + blockDim.x - 1) / blockDim.x;
    u32 c0 = min(t * per, cols), c1 = min(c0 + per, cols);
    u32 mine = 0;
    for (u32 c = c0; c < c1; c++) mine += flags[c] != 0;
    u32 incl = mine;  // inclusive scan within the warp
    for (int off = 1; off < 32; off <<= 1) {
        u32 v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    u32 before = 0, all = 0;
    for (u32 w = 0; w < blockDim.x / 32; w++) {
        if (w < warp) before += warp_total[w];
        all += warp_total[w];
    }
    u32 at = before + incl - mine;
    for (u32 c = c0; c < c1; c++)
        if (flags[c]) list[at++] = c;
    if (t == 0) *count = all;
}

// Linear8bitLt's outlier term for few rows, added in place: y[r, j] = f16(y + f16(sum over outlier columns c
// of x16[r, c] * f16(W[j, c] * SCB[j] / 127))), the products exact in f32 as in the f16 product of the
// gathered operands; a warp per output column j, nothing to do when the list is empty.
extern "C" __global__ void int8_outlier_gemv(const u16* x16, const i8* w, const float* scb, const u32* list,
                                             const u32* count, u32 m, u32 n, u32 k, float inv127, u16* y) {
    pdl_entry();
    u32 lane = threadIdx.x & 31;
    u32 j = blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u32 nc = *count;
    if (j >= n || nc == 0) return;
    for (u32 r = 0; r < m; r++) {
        float acc = 0.0f;
        for (u32 t = lane; t < nc; t += 32) {
            u32 c = list[t];
            float ws = h2f(f2h(__fmul_rn(__fmul_rn((float)w[(u64)j * k + c], scb[j]), inv127)));
            acc = __fmaf_rn(h2f(x16[(u64)r * k + c]), ws, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            u64 i = (u64)r * n + j;
            y[i] = f2h(__fadd_rn(h2f(y[i]), h2f(f2h(acc))));
        }
    }
}

// y = f16(y + extra) (both f16).
extern "C" __global__ void add_f16(u16* y, const u16* extra, u64 n) {
    pdl_entry();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (u64)gridDim.x * blockDim.x) y[i] = f2h(__fadd_rn(h2f(y[i]), h2f(extra[i])));
}

// ---- BitNet b1.58 ----

// packed[r, c] bits 2i..2i+1 = ternarize(w[i * R + r, c]) + 1.
extern "C" __global__ void ternary_quantize(const void* w, int dt, u32 rows, u32 cols, float scale, u8* packed) {
    pdl_entry();
    u32 pr = (rows + 3) / 4;
    u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (u64)pr * cols) return;
    u32 r = e / cols, c = e % cols;
    u32 byte = 0;
    for (u32 i = 0; i < 4; i++) {
        u32 row = i * pr + r;
        if (row >= rows) break;
        float v = __fmul_rn(ld_dt(w, (u64)row * cols + c, dt), scale);
        int t = isnan(v) ? 0 : (int)fminf(fmaxf(rintf(v), -1.0f), 1.0f);
        byte |= (u32)(t + 1) << (2 * i);
    }
    packed[e] = (u8)byte;
}

__device__ __forceinline__ i8 ternary_act_code(float v, float s) {
    float p = __fmul_rn(v, s);
    return isnan(p) ? 0 : (i8)(int)fminf(fmaxf(rintf(p), -128.0f), 127.0f);
}

// Values per thread that `ternary_act_quant` keeps in registers (a row of up to 32 x 1024 columns).
#define ACT_REGS 32

// Row r of x quantized by the block into q (global or shared memory); returns the row's scale.
// s = RN(RN(1 / max(max|x|, eps)) * 127), q = clamp(rint(x * s), -128, 127). The absmax is exact in any
// order, so every block that quantizes a row gets the same scale and codes. A row of more than 16 and at
// most ACT_REGS values per thread is loaded once, every load issued before the max needs any (one trip to
// memory instead of two: 10.0 -> 7.5 us for a 28,672-column f32 row on an H200); shorter rows were as fast
// or faster read twice (3.7 against 5.7 us at 4,096 columns), so they are.
template <int DT>
__device__ float ternary_act_row(const void* x, u64 r, u32 cols, float eps, i8* q) {
    float m = 0.0f;
    if (cols > 16 * blockDim.x && cols <= ACT_REGS * blockDim.x) {
        float v[ACT_REGS];
#pragma unroll
        for (int k = 0; k < ACT_REGS; k++) {
            u32 c = threadIdx.x + k * blockDim.x;
            v[k] = c < cols ? ldf<DT>(x, r * cols + c) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < ACT_REGS; k++) m = fmaxf(m, fabsf(v[k]));
        m = block_max(m, 0.0f);
        float s = __fmul_rn(__fdiv_rn(1.0f, fmaxf(m, eps)), 127.0f);
#pragma unroll
        for (int k = 0; k < ACT_REGS; k++) {
            u32 c = threadIdx.x + k * blockDim.x;
            if (c < cols) q[c] = ternary_act_code(v[k], s);
        }
        return s;
    }
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(ldf<DT>(x, r * cols + c)));
    m = block_max(m, 0.0f);
    float s = __fmul_rn(__fdiv_rn(1.0f, fmaxf(m, eps)), 127.0f);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) q[c] = ternary_act_code(ldf<DT>(x, r * cols + c), s);
    return s;
}

// One block per row.
template <int DT>
__device__ void ternary_act_quant_impl(const void* x, u32 cols, float eps, i8* q, float* scales) {
    u64 r = blockIdx.x;
    float s = ternary_act_row<DT>(x, r, cols, eps, q + r * cols);
    if (threadIdx.x == 0) scales[r] = s;
}

// Launched with 1024 threads: the bound keeps its registers within a multiprocessor's 64 Ki (74 without).
extern "C" __global__ void __launch_bounds__(1024) ternary_act_quant(const void* x, int dt, u32 cols, float eps, i8* q, float* scales) {
    pdl_entry();
    if (dt == DT_F32) ternary_act_quant_impl<DT_F32>(x, cols, eps, q, scales);
    else if (dt == DT_F16) ternary_act_quant_impl<DT_F16>(x, cols, eps, q, scales);
    else ternary_act_quant_impl<DT_BF16>(x, cols, eps, q, scales);
}

// Output o of activation row b: acc / (x_scale * weight_scale) + bias[o] (bias in its own dtype, widened
// exactly), acc the exact i32 product. The one epilogue of every ternary product, so every route has the
// same bits.
__device__ __forceinline__ float ternary_out(i32 acc, float x_scale, float weight_scale, const void* bias, int bdt, u32 o) {
    float f = __fdiv_rn(__int2float_rn(acc), __fmul_rn(x_scale, weight_scale));
    return __fadd_rn(f, bias_at(bias, bdt, o));
}

// Running sums of a ternary product over one lane's columns: per packed row s the codes c = t + 1 in {0, 1, 2}
// times the int8 activations, and the activations' own sum, so that sum t x = sum c x - sum x (exact
// integers). The codes of rows 1 and 3 stay 4x their value (the mask keeps them in place: one shift a word for
// all four rows instead of three), taken out exactly by `ternary_sum` (|sum| < 2^31 while cols < 2^21).
// The integer results, and so every output bit, are the ones the per-row shifts gave.
struct TernaryAcc {
    i32 c[4];
    i32 x;
};

__device__ __forceinline__ void ternary_acc_zero(TernaryAcc& a) {
    a.c[0] = a.c[1] = a.c[2] = a.c[3] = a.x = 0;
}

// 16 columns: packed word `pv` (byte j holds rows 0-3 of column j at bits 0-1, 2-3, 4-5, 6-7) against the 16
// int8 activations `xv`. 4 x (1 shift, 4 masks, 5 dp4a) instead of 4 x (3 shifts, 4 masks, 5 dp4a, 4
// subtractions). SUM_X = false leaves `a.x` at 0, for a caller that knows the row's sum already.
template <bool SUM_X = true>
__device__ __forceinline__ void ternary_dot16(uint4 pv, uint4 xv, TernaryAcc& a) {
    u32 pw[4] = {pv.x, pv.y, pv.z, pv.w};
    u32 xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
    for (int q = 0; q < 4; q++) {
        u32 hi = pw[q] >> 4;
        if (SUM_X) a.x = dp4a(0x01010101u, xw[q], a.x);
        a.c[0] = dp4a(pw[q] & 0x03030303u, xw[q], a.c[0]);
        a.c[1] = dp4a(pw[q] & 0x0c0c0c0cu, xw[q], a.c[1]);
        a.c[2] = dp4a(hi & 0x03030303u, xw[q], a.c[2]);
        a.c[3] = dp4a(hi & 0x0c0c0c0cu, xw[q], a.c[3]);
    }
}

// sum t x of packed row s from a lane's (or any sum of lanes') running sums.
__device__ __forceinline__ i32 ternary_sum(const TernaryAcc& a, int s) {
    return ((s & 1) ? (a.c[s] >> 2) : a.c[s]) - a.x;
}

// y[b, o] = acc / (x_scale[b] * weight_scale) + bias[o], acc the exact i32 product; a warp per output row
// and up to 8 activation rows per pass.
extern "C" __global__ void ternary_matmul(const i8* xq, const float* x_scale, u32 batch, const u8* packed,
                                          float weight_scale, u32 rows, u32 cols, const void* bias, int bdt,
                                          float* y) {
    pdl_entry();
    u32 lane = threadIdx.x & 31;
    u32 o = blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u32 b0 = blockIdx.y * 8;
    if (o >= rows) return;
    u32 pr = (rows + 3) / 4;
    u32 shift = 2 * (o / pr);
    const u8* prow = packed + (u64)(o % pr) * cols;
    i32 acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (u32 c = lane; c < cols; c += 32) {
        i32 t = (i32)((prow[c] >> shift) & 3u) - 1;
#pragma unroll
        for (int r = 0; r < 8; r++)
            if (b0 + r < batch) acc[r] += t * (i32)xq[(u64)(b0 + r) * cols + c];
    }
#pragma unroll
    for (int r = 0; r < 8; r++) {
        i32 s = acc[r];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0 && b0 + r < batch)
            y[(u64)(b0 + r) * rows + o] = ternary_out(s, x_scale[b0 + r], weight_scale, bias, bdt, o);
    }
}

// Prompts (many activation rows) take cuBLAS's int8 product: the packed weight unpacked to one int8 per
// weight (t in {-1, 0, 1}) in row-major [rows, cols], then `ternary_finish` on the exact i32 sums, so the
// bits are the dp4a kernels'. A thread writes 4 weights of output row o from 4 packed bytes (cols % 4 == 0).
extern "C" __global__ void ternary_unpack_i8(const u32* packed, u32 rows, u32 cols, u32* w) {
    pdl_entry();
    u32 pr = (rows + 3) / 4, words = cols / 4;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)rows * words; i += (u64)gridDim.x * blockDim.x) {
        u32 o = (u32)(i / words), c4 = (u32)(i % words);
        u32 shift = 2 * (o / pr);
        u32 codes = (__ldg(packed + (u64)(o % pr) * words + c4) >> shift) & 0x03030303u;
        // code - 1 per byte (no borrow between bytes: each code is 0..2, 0 - 1 = 0xff is int8 -1).
        w[i] = __vsub4(codes, 0x01010101u);
    }
}

// The dp4a kernels' epilogue on cuBLAS's exact i32 sums acc [batch, rows].
extern "C" __global__ void ternary_finish(const i32* acc, const float* x_scale, u32 batch, float weight_scale,
                                          u32 rows, const void* bias, int bdt, float* y) {
    pdl_entry();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)batch * rows; i += (u64)gridDim.x * blockDim.x) {
        u32 b = (u32)(i / rows), o = (u32)(i % rows);
        y[i] = ternary_out(acc[i], x_scale[b], weight_scale, bias, bdt, o);
    }
}

// `ternary_matmul` for cols % 16 == 0: a warp per packed row r, whose bytes hold output rows r, r + pr,
// r + 2 pr and r + 3 pr (2 bits each), so each packed byte is read once for its four rows; each lane takes 16
// packed bytes and the same 16 columns of every activation row at a time. With codes c = t + 1 in {0, 1, 2},
// sum t x = dp4a(c, x) - dp4a(1, x): exact integers, so the output bits equal `ternary_matmul`'s.
template <int R, int U>
__device__ void ternary_matmul_dp4a_impl(const uint4* xq, const float* x_scale, u32 batch, const uint4* packed,
                                         float weight_scale, u32 rows, u32 cols, const void* bias, int bdt,
                                         float* y) {
    u32 lane = threadIdx.x & 31;
    u32 pr = (rows + 3) / 4;
    u32 r = blockIdx.x * LIN_WARPS + (threadIdx.x >> 5);
    u32 b0 = blockIdx.y * R;
    if (r >= pr) return;
    u32 words = cols >> 4;
    const uint4* prow = packed + (u64)r * words;
    TernaryAcc acc[R];
#pragma unroll
    for (int b = 0; b < R; b++) ternary_acc_zero(acc[b]);
    // U words per lane loaded before any is used: enough bytes in flight to stream the weight.
    for (u32 w0 = lane; w0 < words; w0 += 32 * U) {
        uint4 pvs[U];
#pragma unroll
        for (int u = 0; u < U; u++)
            pvs[u] = w0 + 32 * u < words ? __ldg(prow + w0 + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < U; u++) {
            u32 w = w0 + 32 * u;
            if (w >= words) break;
#pragma unroll
            for (int b = 0; b < R; b++)
                if (b0 + b < batch) ternary_dot16(pvs[u], __ldg(xq + (u64)(b0 + b) * words + w), acc[b]);
        }
    }
#pragma unroll
    for (int s = 0; s < 4; s++) {
        u32 o = s * pr + r;
#pragma unroll
        for (int b = 0; b < R; b++) {
            i32 v = ternary_sum(acc[b], s);
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane == 0 && b0 + b < batch && o < rows)
                y[(u64)(b0 + b) * rows + o] = ternary_out(v, x_scale[b0 + b], weight_scale, bias, bdt, o);
        }
    }
}

// R activation rows per pass (one row, a decode step, takes `ternary_linear_r1` where it applies).
extern "C" __global__ void ternary_matmul_dp4a(const uint4* xq, const float* x_scale, u32 batch,
                                               const uint4* packed, float weight_scale, u32 rows, u32 cols,
                                               const void* bias, int bdt, float* y) {
    pdl_entry();
    ternary_matmul_dp4a_impl<DP4A_ROWS, 4>(xq, x_scale, batch, packed, weight_scale, rows, cols, bias, bdt, y);
}
// A packed row's product split across `split` warps (a power of two, at most 32) of the block: warp `wi` of
// the row's group takes every split-th 32-word span, U words in flight per lane; the warps' sums meet in
// `part` [warps][4] and threads 4 g + s finish row g's output s. Integer sums, so the bits are the other
// kernels'. Every thread calls it (it holds a barrier); `r` at or past `pr` contributes nothing. The sums
// leave out the activations' own sum (sum c x): the caller subtracts the row's, which it knows.
template <int U>
__device__ __forceinline__ void ternary_row_split(const uint4* packed, const uint4* xq, u32 words, u32 pr,
                                                  u32 split, u32 r, i32 (*part)[4]) {
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wi = warp % split;
    TernaryAcc acc;
    ternary_acc_zero(acc);
    if (r < pr) {
        const uint4* prow = packed + (u64)r * words;
        for (u32 w0 = wi * 32 + lane; w0 < words; w0 += 32 * split * U) {
            uint4 pvs[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                u32 w = w0 + 32 * split * u;
                pvs[u] = w < words ? __ldg(prow + w) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                u32 w = w0 + 32 * split * u;
                if (w >= words) break;
                ternary_dot16<false>(pvs[u], xq[w], acc);
            }
        }
    }
#pragma unroll
    for (int s = 0; s < 4; s++) {
        i32 v = ternary_sum(acc, s);
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) part[warp][s] = v;
    }
    __syncthreads();
}

// Row g's sum for output s = threadIdx.x % 4 (threads 4 g + s), after `ternary_row_split`.
__device__ __forceinline__ i32 ternary_split_sum(const i32 (*part)[4], u32 split) {
    u32 g = threadIdx.x >> 2, s = threadIdx.x & 3;
    i32 v = 0;
    for (u32 k = 0; k < split; k++) v += part[g * split + k][s];
    return v;
}

// Values of a row `ternary_linear_r1` quantizes per pass: 4 per thread of its 1024 (one vector load each),
// times ROW_LOADS loads in flight before any is used.
#define ROW_LOADS 8
#define ROW_PASS (4 * ROW_LOADS * 1024)

// The activation row x [cols] (cols % 4 == 0, x 16-byte aligned) quantized by the block into shared
// memory q, as `ternary_act_row` does (the same scale and codes), with vector loads all issued before the
// maximum needs any: one trip to L2 for a row of up to ROW_PASS values (longer rows: their maximum pass by
// pass, then the codes pass by pass). Returns the scale; `code_sum` is this thread's share of the codes' sum.
template <int DT>
__device__ float ternary_act_row_vec(const void* x, u32 cols, float eps, u32* q, i32& code_sum) {
    float4 v[ROW_LOADS];
    float m = 0.0f;
    for (u32 c0 = 0; c0 < cols; c0 += ROW_PASS) {
#pragma unroll
        for (int k = 0; k < ROW_LOADS; k++) {
            u32 c = c0 + 4 * (threadIdx.x + k * 1024);
            v[k] = c < cols ? ld4<DT>(x, c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int k = 0; k < ROW_LOADS; k++)
            m = fmaxf(m, fmaxf(fmaxf(fabsf(v[k].x), fabsf(v[k].y)), fmaxf(fabsf(v[k].z), fabsf(v[k].w))));
    }
    m = block_max(m, 0.0f);
    float s = __fmul_rn(__fdiv_rn(1.0f, fmaxf(m, eps)), 127.0f);
    for (u32 c0 = 0; c0 < cols; c0 += ROW_PASS) {
        if (cols > ROW_PASS) {
            // Reloaded: only the last pass is still in registers.
#pragma unroll
            for (int k = 0; k < ROW_LOADS; k++) {
                u32 c = c0 + 4 * (threadIdx.x + k * 1024);
                v[k] = c < cols ? ld4<DT>(x, c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
#pragma unroll
        for (int k = 0; k < ROW_LOADS; k++) {
            u32 c = c0 + 4 * (threadIdx.x + k * 1024);
            if (c < cols) {
                u32 b0 = (u8)ternary_act_code(v[k].x, s), b1 = (u8)ternary_act_code(v[k].y, s);
                u32 b2 = (u8)ternary_act_code(v[k].z, s), b3 = (u8)ternary_act_code(v[k].w, s);
                u32 word = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
                q[c / 4] = word;
                code_sum = dp4a(0x01010101u, word, code_sum);
            }
        }
    }
    return s;
}

// A whole one-row ternary linear layer in one kernel (a decode step): each block of 1024 threads quantizes
// the activation row into shared memory (`ternary_act_row_vec`: the same scale and codes in every block),
// then takes packed rows blockIdx.x * groups + g, + gridDim.x * groups, ... in groups of `split` warps
// (`ternary_row_split`, 4 words in flight per lane). The grid is at most one block per multiprocessor, so
// the row is read from L2 once per multiprocessor instead of a quantization kernel running before the
// product. y is written in `odt` (narrowed as `cast` does). Dynamic shared memory: `cols` bytes
// (cols % 16 == 0, x 16-byte aligned).
template <int DT>
__device__ void ternary_linear_r1_impl(const void* x, u32 cols, float eps, const uint4* packed, float weight_scale,
                                       u32 rows, u32 split, const void* bias, int bdt, void* y, int odt) {
    extern __shared__ uint4 xq_s[];
    __shared__ i32 part[2][32][4];
    u32 groups = 32 / split, pr = (rows + 3) / 4, stride = gridDim.x * groups, words = cols >> 4;
    i32 code_sum = 0;
    float xs = ternary_act_row_vec<DT>(x, cols, eps, (u32*)xq_s, code_sum);
    // The row's sum (the barrier inside also orders the codes' writes before the products read them): each
    // product then needs only the codes times x, sum t x = sum c x - sum x.
    i32 xsum = block_sum_i(code_sum);
    u32 iters = (pr + stride - 1) / stride;
    for (u32 it = 0; it < iters; it++) {
        // `part` alternates between iterations: the barrier inside the next call orders this iteration's
        // reads before the writes two iterations on.
        i32(*pp)[4] = part[it & 1];
        u32 base = it * stride + blockIdx.x * groups;
        ternary_row_split<4>(packed, xq_s, words, pr, split, base + (threadIdx.x >> 5) / split, pp);
        u32 r = base + (threadIdx.x >> 2), o = (threadIdx.x & 3) * pr + r;
        if (threadIdx.x < 4 * groups && r < pr && o < rows)
            st_dt(y, o, odt, ternary_out(ternary_split_sum(pp, split) - xsum, xs, weight_scale, bias, bdt, o));
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    ternary_linear_r1(const void* x, int dt, u32 cols, float eps, const uint4* packed, float weight_scale, u32 rows,
                      u32 split, const void* bias, int bdt, void* y, int odt) {
    pdl_entry();
    if (dt == DT_F32) ternary_linear_r1_impl<DT_F32>(x, cols, eps, packed, weight_scale, rows, split, bias, bdt, y, odt);
    else if (dt == DT_F16) ternary_linear_r1_impl<DT_F16>(x, cols, eps, packed, weight_scale, rows, split, bias, bdt, y, odt);
    else ternary_linear_r1_impl<DT_BF16>(x, cols, eps, packed, weight_scale, rows, split, bias, bdt, y, odt);
}
