// Split-K attention, pass 2: one lane per (query row, head, output dim) merges the chunks' partials of
// attention_split.wgsl: M = max of the chunks' maxima, w_c = exp(m_c - M), out = (sum_c w_c acc_c) /
// (sum_c w_c l_c), chunks in ascending order; chunks without keys (l = 0) are skipped; f32 out.
// Params: p0 = rows (query rows x heads), p1 = head_dim, p2 = chunks.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_ml: array<f32>;
@group(0) @binding(2) var<storage, read> part_acc: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wg_linear(wid, nwg) * 256u + lid;
    let hd = p.p1;
    if (t >= p.p0 * hd) {
        return;
    }
    let row = t / hd;
    let d = t % hd;
    let n_chunks = p.p2;
    let base = row * n_chunks;
    var big = -3.4028235e38;
    for (var c = 0u; c < n_chunks; c = c + 1u) {
        if (part_ml[(base + c) * 2u + 1u] > 0.0) {
            big = max(big, part_ml[(base + c) * 2u]);
        }
    }
    var l = 0.0;
    var acc = 0.0;
    for (var c = 0u; c < n_chunks; c = c + 1u) {
        let lc = part_ml[(base + c) * 2u + 1u];
        if (lc > 0.0) {
            let w = exp(part_ml[(base + c) * 2u] - big);
            l = l + lc * w;
            acc = acc + part_acc[(base + c) * hd + d] * w;
        }
    }
    out[t] = select(0.0, acc / l, l > 0.0);
}
