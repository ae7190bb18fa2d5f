// Element-wise model ops, f32 out, the formulas of format::activation (erf generated from its tables).
// Params: p0 = n, p1 = op (0: silu(a) * b, 1: gelu tanh(a), 2: gelu erf(a), 3: a + b, 4: relu(a)^2 * b),
// p2 / p3 = the element a / b start at (windows of larger tensors).
// exp overflows only where the CPU's IEEE result is x / inf = +-0; that case takes an explicit branch that
// writes the zero with x's sign bit (drivers assuming no infinities or signed zeros would not).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a_in: array<u32>;
@group(0) @binding(2) var<storage, read> b_in: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

// ln(f32::MAX): exp of anything above is +inf in IEEE float32.
const EXP_OVERFLOW: f32 = 88.72283;

// x / (1 + exp(e)), or a zero of x's sign where exp(e) overflows.
fn div_one_plus_exp(x: f32, e: f32) -> f32 {
    if (e > EXP_OVERFLOW) {
        return bitcast<f32>(bitcast<u32>(x) & SIGN_MASK);
    }
    return x / (1.0 + exp(e));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wg_linear(wid, nwg) * 256u + lid;
    if (i >= p.p0) {
        return;
    }
    let a = load_a(i + p.p2);
    var y: f32;
    switch (p.p1) {
        case 0u: {
            y = div_one_plus_exp(a, -a) * load_b(i + p.p3);
        }
        case 1u: {
            let u = GELU_TANH_BETA * (a + GELU_TANH_KAPPA * (a * a * a));
            y = div_one_plus_exp(a, -2.0 * u);
        }
        case 2u: {
            y = a * 0.5 * (1.0 + erf(a * FRAC_1_SQRT_2));
        }
        case 4u: {
            let r = select(0.0, a, a > 0.0);
            y = (r * r) * load_b(i + p.p3);
        }
        default: {
            y = a + load_b(i + p.p3);
        }
    }
    out[i] = bitcast<u32>(y);
}
