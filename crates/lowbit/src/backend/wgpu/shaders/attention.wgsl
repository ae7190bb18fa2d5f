// Causal grouped-query attention over a KV cache, one workgroup per (query row, head), f32 out.
// Params: p0 = query rows, p1 = heads, p2 = kv heads, p3 = head_dim (<= 256), p4 = kv_len,
// p5 = pos_start, p6 = scale bits.
// Keys are visited in tiles of 256 (any kv_len, fixed workgroup memory) with an online softmax. Float32
// order: lane j computes s_j = (sum_d q_d k_jd, d ascending) * scale; per tile the max (tree) updates the
// running max m, p_j = exp(s_j - m), the tile's sum of p (tree) and, per output dim, the tile's sum of
// p_j v_jd (j ascending) are added to l and acc after scaling both by exp(m_old - m); output acc / l.

// One template for two kernels (model_ops/source.rs fills the //-marked lines): the one-pass kernel walks
// keys 0..n_keys and writes acc / l; the split-K pass (attention_split) walks one chunk of keys and writes
// its unnormalised m, l and acc for attention_merge.wgsl.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_in: array<u32>;
@group(0) @binding(2) var<storage, read> k_in: array<u32>;
@group(0) @binding(3) var<storage, read> v_in: array<u32>;
//OUTPUTS

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
    let n_heads = p.p1;
//ROWS
    let hd = p.p3;
    let i = row / n_heads;
    let kv_row = p.p2 * hd;
    let koff = (row % n_heads) / (n_heads / p.p2) * hd;
    let n_keys = min(p.p5 + i + 1u, p.p4);
//KEY_RANGE
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
//STORE
}
