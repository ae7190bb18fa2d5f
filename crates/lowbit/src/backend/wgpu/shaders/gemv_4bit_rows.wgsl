// Multi-row fused NF4/FP4 GEMV for cols % 32 == 0 and blocksize >= 32: NB activation rows per dispatch. A
// thread decodes one 16-byte word (32 nibbles of one block) of its weight row into registers once and feeds
// all NB activation rows with it, so each weight byte is read and decoded once per NB rows instead of once per
// row. TPR threads share a weight row; a workgroup holds SETS = 256 / TPR weight rows. The float sum order
// differs from the CPU's, within the GEMV tolerance.
// Params: p0 = row end of this dispatch, p1 = cols, p2 = log2(blocksize), p3 = total rows (y's row stride) with
// bit 31 set when there is a bias, p4 = first vec4 held by `packed`, p5 = first row of this dispatch, p6 = first
// activation row of this dispatch, p7 = activation rows in x.
// Needs (generated): TPR, SETS, NB, and the per-activation-row setup, body and store lines the host writes in
// place of the three placeholder lines below.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<vec4<u32>>;
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
    let row = p.p5 + wg_linear(wid, nwg) * SETS + rs;
    let cols = p.p1;
    let chunks = cols / 32u;
    // A row past the end is clamped onto the last row (loads stay in bounds) and not written; so is an
    // activation row past the batch.
    let e0 = min(row, p.p0 - 1u) * cols;
    let last_b = p.p7 - 1u;
ROW_SETUP
    for (var c = t; c < chunks; c = c + TPR) {
        let e = e0 + c * 32u;
        let wd = packed[e / 32u - p.p4];
        let s = absmax[e >> p.p2];
        let w0 = dec_lo(wd.x);
        let w1 = dec_hi(wd.x);
        let w2 = dec_lo(wd.y);
        let w3 = dec_hi(wd.y);
        let w4 = dec_lo(wd.z);
        let w5 = dec_hi(wd.z);
        let w6 = dec_lo(wd.w);
        let w7 = dec_hi(wd.w);
        let xi = c * 8u;
ROW_BODY
    }
ROW_STORE
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
            y[b * rows + row] = red[rs * TPR * NB + t] + bv;
        }
    }
}
