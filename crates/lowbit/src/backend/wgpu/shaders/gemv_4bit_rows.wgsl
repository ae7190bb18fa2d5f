// Multi-row fused NF4/FP4 GEMV for cols % 32 == 0 and blocksize >= 32: NB activation rows per dispatch, RPT
// weight rows per thread. Each step a thread reads one u32 (8 nibbles, 8 columns of one block) of each of its
// RPT weight rows, decodes them into registers once, then loads 8 columns of each activation row once and feeds
// all RPT weight rows with them: each weight byte is read and decoded once per NB activation rows, and each
// activation value is loaded once per RPT weight rows. TPR threads share a set of RPT weight rows (adjacent u32
// loads, so a set reads whole cache lines); a workgroup holds SETS = 256 / TPR sets. The sums are reduced one
// weight row at a time through NB floats per thread of workgroup memory. The float sum order differs from the
// CPU's, within the GEMV tolerance.
// Params: p0 = row end of this dispatch, p1 = cols, p2 = log2(blocksize), p3 = total rows (y's row stride) with
// bit 31 set when there is a bias, p4 = first vec4 held by `packed`, p5 = first row of this dispatch, p6 = first
// activation row of this dispatch, p7 = activation rows in x.
// Needs (generated): TPR, SETS, NB, RPT, RED_LEN, and the per-row lines the host writes in place of the
// placeholder lines below.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read> absmax: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> lut: array<f32, 16>;
var<workgroup> red: array<f32, RED_LEN>;

// Codes of bytes 0-1 and 2-3 of a u32; element 2k of a byte is its high nibble.
fn dec_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(lut[(w >> 4u) & 15u], lut[w & 15u], lut[(w >> 12u) & 15u], lut[(w >> 8u) & 15u]);
}

fn dec_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(lut[(w >> 20u) & 15u], lut[(w >> 16u) & 15u], lut[(w >> 28u) & 15u], lut[(w >> 24u) & 15u]);
}

// Sums this thread's NB partial sums of one weight row over the TPR threads of its set; thread b < NB of the set
// writes activation row p6 + b.
fn reduce_store(lid: u32, t: u32, set0: u32, row: u32) {
    workgroupBarrier();
    for (var off = TPR / 2u; off > 0u; off = off >> 1u) {
        if (t < off) {
            for (var b = 0u; b < NB; b = b + 1u) {
                red[lid * NB + b] = red[lid * NB + b] + red[(lid + off) * NB + b];
            }
        }
        workgroupBarrier();
    }
    if (t < NB) {
        let b = p.p6 + t;
        if (row < p.p0 && b < p.p7) {
            let rows = p.p3 & 0x7fffffffu;
            var bv = 0.0;
            if ((p.p3 >> 31u) != 0u) {
                bv = bias[row];
            }
            y[b * rows + row] = red[set0 * NB + t] + bv;
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid < 16u) {
        lut[lid] = table[lid];
    }
    workgroupBarrier();
    let rs = lid / TPR;
    let t = lid % TPR;
    let row0 = p.p5 + (wg_linear(wid, nwg) * SETS + rs) * RPT;
    let cols = p.p1;
    let steps = cols / 8u;
    let first = p.p4 * 4u;
    // Rows past the end are clamped onto the last row (loads stay in bounds) and not written; so are
    // activation rows past the batch.
    let last_b = p.p7 - 1u;
WROW_SETUP
XROW_SETUP
    for (var u = t; u < steps; u = u + TPR) {
        let xi = u * 2u;
WROW_LOAD
XROW_BODY
    }
WROW_REDUCE
}
