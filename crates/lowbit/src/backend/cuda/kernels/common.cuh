// Shared helpers of lowbit's CUDA kernels. Compiled by NVRTC at run time without any CUDA header: f16/bf16
// conversions are PTX `cvt` and bit operations, so the kernels need nothing but the driver and NVRTC.
//
// Float rules (docs/ARCHITECTURE.md, FORMATS.md §0): the quantizers use the hardware reciprocal
// (`rcp.approx.ftz.f32`, the MUFU.RCP bitsandbytes' fast-math build uses), FTZ multiplies written out as
// PTX, and `__fmul_rn`/`__fadd_rn`/`__fdiv_rn` where the CPU reference rounds each step (no contraction into
// an fma). Kernels whose results are compared within a tolerance let the compiler contract.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

// Warps (weight rows, or groups of them) per block of the linear kernels (`LIN_WARPS` in ops.rs).
#define LIN_WARPS 8

// Element types, as the host passes them (backend/cuda/launch.rs `dtype_code`).
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
// Round to nearest even; NaN stays a quiet NaN with its sign (as the `half` crate on the CPU).
__device__ __forceinline__ u16 f2b(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

// f32 to the bits of half-precision dtype DT (f16 or bf16), rounded to nearest even.
template <int DT> __device__ __forceinline__ u16 f2dt(float f) { return DT == DT_F16 ? f2h(f) : f2b(f); }

template <int DT> __device__ __forceinline__ float ldf(const void* p, u64 i);
template <> __device__ __forceinline__ float ldf<DT_F32>(const void* p, u64 i) { return ((const float*)p)[i]; }
template <> __device__ __forceinline__ float ldf<DT_F16>(const void* p, u64 i) { return h2f(((const u16*)p)[i]); }
template <> __device__ __forceinline__ float ldf<DT_BF16>(const void* p, u64 i) { return b2f(((const u16*)p)[i]); }

// Four consecutive elements from i (a multiple of 4; p + i aligned to four elements) as f32, one load.
template <int DT> __device__ __forceinline__ float4 ld4(const void* p, u64 i) {
    if (DT == DT_F32) return *(const float4*)((const float*)p + i);
    uint2 u = *(const uint2*)((const u16*)p + i);
    if (DT == DT_F16) return make_float4(h2f(u.x & 0xffffu), h2f(u.x >> 16), h2f(u.y & 0xffffu), h2f(u.y >> 16));
    return make_float4(b2f(u.x & 0xffffu), b2f(u.x >> 16), b2f(u.y & 0xffffu), b2f(u.y >> 16));
}

__device__ __forceinline__ float ld_dt(const void* p, u64 i, int dt) {
    if (dt == DT_F32) return ((const float*)p)[i];
    if (dt == DT_F16) return h2f(((const u16*)p)[i]);
    return b2f(((const u16*)p)[i]);
}
__device__ __forceinline__ void st_dt(void* p, u64 i, int dt, float v) {
    if (dt == DT_F32) ((float*)p)[i] = v;
    else if (dt == DT_F16) ((u16*)p)[i] = f2h(v);
    else ((u16*)p)[i] = f2b(v);
}

// Output column i's bias (or the residual riding in the bias slot) in its own dtype `bdt`, widened exactly;
// 0 without one.
__device__ __forceinline__ float bias_at(const void* bias, int bdt, u64 i) { return bias ? ld_dt(bias, i, bdt) : 0.0f; }

// Flush to zero: |x| < 2^-126 becomes a zero of the same sign (NaN stays NaN).
__device__ __forceinline__ float ftz(float x) { return fabsf(x) < 1.17549435e-38f ? copysignf(0.0f, x) : x; }
// bitsandbytes' `1.0f / a` under --use_fast_math: one MUFU.RCP.
__device__ __forceinline__ float rcp_approx(float a) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}
// An FTZ multiply: subnormal inputs count as zero, a subnormal product flushes.
__device__ __forceinline__ float mul_ftz(float a, float b) {
    float r;
    asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// Programmatic dependent launch (sm_90 and later; the host sets the launch attribute there). Every kernel
// calls this first, before it touches memory: it waits until the grids queued before it have finished and
// their writes are visible, then lets the next kernel's blocks be scheduled while this one runs, so a chain
// of small kernels overlaps each launch with the work before it. A no-op where the attribute is not set.
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide reductions for blocks of whole warps (at most 32 warps); every thread gets the result.
// `identity`: what an empty lane contributes (0 for absolute values, -inf otherwise).
__device__ __forceinline__ float block_max(float v, float identity) {
    __shared__ float s[32];
    v = warp_max(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) s[w] = v;
    __syncthreads();
    v = l < nw ? s[l] : identity;
    return warp_max(v);
}
__device__ __forceinline__ i32 block_sum_i(i32 v) {
    __shared__ i32 s[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) s[w] = v;
    __syncthreads();
    v = l < nw ? s[l] : 0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double s[32];
    v = warp_sum_d(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) s[w] = v;
    __syncthreads();
    v = l < nw ? s[l] : 0.0;
    return warp_sum_d(v);
}
