// Fused NF4/FP4 GEMV (batch 1) for cols % 8 == 0 and blocksize >= 8, read in 4-byte words: each thread
// streams u32 words (8 nibbles of one block) of RPT rows at once, so one read of x (2 vec4) serves RPT rows, and
// the 8-term partial sum is scaled by its block's absmax. Consecutive lanes take consecutive words, so a warp's
// vec4 loads of x span 8 cache lines per instruction (32 with 16-byte words, which were slower: 1.3x at
// 8192x28672 on an H200). TPR threads share one set of RPT rows; a workgroup holds 256 / TPR sets. The float
// sum order differs from the CPU's, within the GEMV tolerance (no bytes to match here).
// Params: p0 = row end of this dispatch, p1 = cols, p2 = log2(blocksize), p3 = has bias, p4 = first u32 word
// held by `packed`, p5 = first row of this dispatch.
// Needs (generated): TPR, RPT, SETS, RED_LEN, the per-row body and the reduction.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> lut: array<f32, 16>;
var<workgroup> red: array<f32, RED_LEN>;

// The 8-term dot product of a and b with one u32 word's dequantization codes (unscaled). Element 2k of a
// byte is its high nibble.
fn dot8(w: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let s0 = a.x * lut[(w >> 4u) & 15u] + a.y * lut[w & 15u];
    let s1 = a.z * lut[(w >> 12u) & 15u] + a.w * lut[(w >> 8u) & 15u];
    let s2 = b.x * lut[(w >> 20u) & 15u] + b.y * lut[(w >> 16u) & 15u];
    let s3 = b.z * lut[(w >> 28u) & 15u] + b.w * lut[(w >> 24u) & 15u];
    return (s0 + s1) + (s2 + s3);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    SUBGROUP_BUILTINS
) {
    if (lid < 16u) {
        lut[lid] = table[lid];
    }
    workgroupBarrier();
    let rs = lid / TPR;
    let t = lid % TPR;
    let row0 = p.p5 + (wg_linear(wid, nwg) * SETS + rs) * RPT;
    let cols = p.p1;
    let words = cols / 8u;
    // Rows past the end are clamped onto the last row (loads stay in bounds) and not written.
    let last = p.p0 - 1u;
ROW_SETUP
    for (var c = t; c < words; c = c + TPR) {
        let x0 = x[c * 2u];
        let x1 = x[c * 2u + 1u];
ROW_BODY
    }
REDUCE
    if (t < RPT) {
        let row = row0 + t;
        if (row < p.p0) {
            var b = 0.0;
            if (p.p3 != 0u) {
                b = bias[row];
            }
            y[row] = total + b;
        }
    }
}
