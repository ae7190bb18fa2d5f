// Split-K attention for a few query rows (decoding), pass 1, per KV-head group: one workgroup per (query row,
// KV head, chunk of p7 keys), so the G query heads that share a KV head share every key and value load (the
// per-head kernel, attention.wgsl, reads each cached row G times, one thread per key, 4 bytes per load).
// Keys are visited in tiles of KT = 32; lanes 4 j .. 4 j + 3 read key j as vec4s (lane t: vec4s t, t + 4, ...)
// and each keeps one partial dot product per head. Float32 order, per head and tile: s_j = ((d0 + d1) +
// (d2 + d3)) * scale over the lanes' partials d, the tile max updates the running max m, p_j = exp(s_j - m),
// l = l * exp(m_old - m) + sum_j p_j and acc = acc * exp(m_old - m) + sum_j p_j v_j (j ascending). Writes the
// unnormalised m, l and acc per (query row, head, chunk) for attention_merge.wgsl; a chunk past the row's
// causal end writes l = 0.
// Needs head_dim % 16 == 0 and G * head_dim <= 2048 (model_ops/attention.rs checks). Generated: G, the
// per-head lines, the vec4 loaders load4_q/k/v for the cache dtype.
// Params: p0 = query rows, p1 = heads, p2 = kv heads, p3 = head_dim, p4 = kv_len, p5 = pos_start,
// p6 = scale bits, p7 = keys per chunk (a multiple of KT).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_in: array<VEC>;
@group(0) @binding(2) var<storage, read> k_in: array<VEC>;
@group(0) @binding(3) var<storage, read> v_in: array<VEC>;
@group(0) @binding(4) var<storage, read_write> part_ml: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_acc: array<vec4<f32>>;

const WG: u32 = 128u;
// Lanes per key and keys per tile.
const TK: u32 = 4u;
const KT: u32 = 32u;
const LOWEST: f32 = -3.4028235e38;

var<workgroup> qs: array<vec4<f32>, 512>;
var<workgroup> red: array<f32, RED_LEN>;
var<workgroup> sc: array<f32, TILE_LEN>;
var<workgroup> pw: array<f32, TILE_LEN>;
var<workgroup> m_run: array<f32, G>;
var<workgroup> l_run: array<f32, G>;
var<workgroup> m_next: array<f32, G>;
var<workgroup> corr: array<f32, G>;

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n_heads = p.p1;
    let n_kv = p.p2;
    let hd4 = p.p3 / 4u;
    let n_chunks = (p.p4 + p.p7 - 1u) / p.p7;
    let group = wg_linear(wid, nwg);
    if (group >= p.p0 * n_kv * n_chunks) {
        return;
    }
    let chunk = group % n_chunks;
    let i = group / n_chunks / n_kv;
    let kvh = group / n_chunks % n_kv;
    let n_keys = min(p.p5 + i + 1u, p.p4);
    let k_begin = chunk * p.p7;
    let k_end = min(k_begin + p.p7, n_keys);
    let scale = bitcast<f32>(p.p6);
    let row4 = n_kv * hd4;
    let koff4 = kvh * hd4;
    // The group's first query head, as (query row, head) index.
    let h0 = i * n_heads + kvh * G;
    for (var o = lid; o < G * hd4; o = o + WG) {
        qs[o] = load4_q(h0 * hd4 + o);
    }
    if (lid < G) {
        m_run[lid] = LOWEST;
        l_run[lid] = 0.0;
    }
    workgroupBarrier();
    let jj = lid / TK;
    let t = lid % TK;
//ACC_INIT
    for (var t0 = k_begin; t0 < k_end; t0 = t0 + KT) {
        let j = t0 + jj;
//PART_INIT
        if (j < k_end) {
            let kb = j * row4 + koff4;
            for (var v = t; v < hd4; v = v + TK) {
                let kv = load4_k(kb + v);
//PART_BODY
            }
        }
//PART_STORE
        workgroupBarrier();
        for (var e = lid; e < G * KT; e = e + WG) {
            let r = e / KT * WG + e % KT * TK;
            let s = ((red[r] + red[r + 1u]) + (red[r + 2u] + red[r + 3u])) * scale;
            sc[e] = select(LOWEST, s, t0 + e % KT < k_end);
        }
        workgroupBarrier();
        for (var e = lid; e < G * KT; e = e + WG) {
            let g = e / KT;
            var tmax = sc[g * KT];
            for (var u = 1u; u < KT; u = u + 1u) {
                tmax = max(tmax, sc[g * KT + u]);
            }
            let m_new = max(m_run[g], tmax);
            pw[e] = select(0.0, exp(sc[e] - m_new), t0 + e % KT < k_end);
            if (e % KT == 0u) {
                // exp(LOWEST - m_new) is 0 on the first tile.
                corr[g] = exp(m_run[g] - m_new);
                m_next[g] = m_new;
            }
        }
        workgroupBarrier();
        if (lid < G) {
            var s = 0.0;
            for (var u = 0u; u < KT; u = u + 1u) {
                s = s + pw[lid * KT + u];
            }
            l_run[lid] = l_run[lid] * corr[lid] + s;
            m_run[lid] = m_next[lid];
        }
        let count = min(KT, k_end - t0);
//ACC_BODY
        workgroupBarrier();
    }
    let slot0 = h0 * n_chunks + chunk;
    if (lid < G) {
        let slot = slot0 + lid * n_chunks;
        part_ml[slot * 2u] = m_run[lid];
        part_ml[slot * 2u + 1u] = l_run[lid];
    }
//ACC_STORE
}
