// BitNet ternarization + transformers' 2-bit packing, one thread per packed word (4 bytes).
// byte (r, c) bits 2i..2i+1 = clamp(rne(w[i*R + r, c] * scale), -1, 1) + 1 for rows that exist.
// Params: p0 = rows, p1 = cols, p2 = R = ceil(rows / 4), p3 = weight scale bits. Needs: load_x_bits(i).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

fn ternarize(i: u32) -> u32 {
    let v = bitcast<f32>(load_x_bits(i)) * bitcast<f32>(p.p3);
    // Round half to even then clamp to [-1, 1]: +-0.5 goes to 0, anything beyond to +-1.
    if (v > 0.5) {
        return 2u;
    }
    if (v < -0.5) {
        return 0u;
    }
    return 1u;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = wg_linear(wid, nwg) * 256u + lid;
    let cols = p.p1;
    let rr = p.p2;
    let nbytes = rr * cols;
    if (w * 4u >= nbytes) {
        return;
    }
    var word = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let byte_i = w * 4u + j;
        if (byte_i < nbytes) {
            let r = byte_i / cols;
            let c = byte_i % cols;
            var byte = 0u;
            for (var s = 0u; s < 4u; s = s + 1u) {
                let row = s * rr + r;
                if (row < p.p0) {
                    byte = byte | (ternarize(row * cols + c) << (2u * s));
                }
            }
            word = word | (byte << (8u * j));
        }
    }
    packed[w] = word;
}
