// Split-K (flash-decoding) causal GQA attention, pass 1: one workgroup per (query row, head, key chunk)
// computes its chunk's partial online softmax, unnormalised: running max m, sum l of exp(s_j - m) and, per
// output dim, sum of exp(s_j - m) v_jd. attention_merge.wgsl combines the chunks.
// Params as attention.wgsl, plus p7 = keys per chunk (a multiple of the 256-key tile).
// Float32 order inside a chunk is attention.wgsl's, over the chunk's keys only. A chunk past a row's causal
// end writes l = 0 (a chunk with a key has l >= 1: its max contributes exp(0)).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_in: array<u32>;
@group(0) @binding(2) var<storage, read> k_in: array<u32>;
@group(0) @binding(3) var<storage, read> v_in: array<u32>;
@group(0) @binding(4) var<storage, read_write> part_ml: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_acc: array<f32>;

const TILE: u32 = 256u;
var<workgroup> qs: array<f32, 256>;
var<workgroup> red: array<f32, 256>;
var<workgroup> pw: array<f32, 256>;

fn tree(lid: u32, is_max: bool) -> f32 {
    for (var off = TILE / 2u; off > 0u; off = off >> 1u) {
        if (lid < off) {
            if (is_max) {
                red[lid] = max(red[lid], red[lid + off]);
            } else {
                red[lid] = red[lid] + red[lid + off];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = wg_linear(wid, nwg);
    let n_heads = p.p1;
    let n_chunks = (p.p4 + p.p7 - 1u) / p.p7;
    if (slot >= p.p0 * n_heads * n_chunks) {
        return;
    }
    let row = slot / n_chunks;
    let chunk = slot % n_chunks;
    let hd = p.p3;
    let i = row / n_heads;
    let kv_row = p.p2 * hd;
    let koff = (row % n_heads) / (n_heads / p.p2) * hd;
    let n_keys = min(p.p5 + i + 1u, p.p4);
    let k_begin = chunk * p.p7;
    let k_end = min(k_begin + p.p7, n_keys);
    let scale = bitcast<f32>(p.p6);
    let q0 = row * hd;
    if (lid < hd) {
        qs[lid] = load_q(q0 + lid);
    }
    workgroupBarrier();
    var m = 0.0;
    var l = 0.0;
    var acc = 0.0;
    for (var t0 = k_begin; t0 < k_end; t0 = t0 + TILE) {
        let j = t0 + lid;
        let live = j < k_end;
        var s = 0.0;
        if (live) {
            let kb = j * kv_row + koff;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + qs[d] * load_k(kb + d);
            }
            s = dot * scale;
        }
        red[lid] = select(-3.4028235e38, s, live);
        workgroupBarrier();
        let tmax = tree(lid, true);
        let first = t0 == k_begin;
        let m_new = select(max(m, tmax), tmax, first);
        let corr = select(exp(m - m_new), 0.0, first);
        let pj = select(0.0, exp(s - m_new), live);
        pw[lid] = pj;
        red[lid] = pj;
        workgroupBarrier();
        l = l * corr + tree(lid, false);
        if (lid < hd) {
            let count = min(TILE, k_end - t0);
            var a = 0.0;
            for (var jj = 0u; jj < count; jj = jj + 1u) {
                a = a + pw[jj] * load_v((t0 + jj) * kv_row + koff + lid);
            }
            acc = acc * corr + a;
        }
        m = m_new;
        workgroupBarrier();
    }
    if (lid < hd) {
        part_acc[slot * hd + lid] = acc;
    }
    if (lid == 0u) {
        part_ml[slot * 2u] = m;
        part_ml[slot * 2u + 1u] = l;
    }
}
