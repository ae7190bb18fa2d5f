#![cfg(feature = "wgpu")]
//! Every WGSL shader variant the wgpu backend can compile is parsed and validated with naga, then translated
//! to Metal Shading Language the way wgpu's Metal backend does it (MSL 2.4 = macOS 12, the oldest Apple
//! Silicon release, and MSL 3.0; runtime bounds checks on). A shader Metal cannot take fails here, on Linux.

use lowbit::backend::wgpu::shaders::{Shader, all_sources};
use naga::back::msl;
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn translate(
    key: &str,
    src: &str,
    caps: Capabilities,
    checks: BoundsCheckPolicy,
    lang_version: (u8, u8),
) -> String {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{key}: WGSL parse error:\n{}", e.emit_to_string(src)));
    // Only what the variant declares: portable variants must run on any adapter (no shader-f16, no subgroups).
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{key}: validation error:\n{}", e.emit_to_string(src)));
    let policies = BoundsCheckPolicies {
        index: checks,
        buffer: checks,
        image_load: checks,
        binding_array: BoundsCheckPolicy::Unchecked,
    };
    let options = msl::Options {
        lang_version,
        bounds_check_policies: policies,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
        ..Default::default()
    };
    let (msl_src, _) = msl::write_string(&module, &info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("{key}: MSL {lang_version:?} translation failed: {e}"));
    msl_src
}

#[test]
fn every_shader_validates_and_translates_to_metal() {
    let shaders = Shader::all();
    assert!(
        shaders.len() >= 20,
        "expected every variant, got {}",
        shaders.len()
    );
    for shader in &shaders {
        let (key, src) = (shader.key(), shader.source());
        let mut caps = Capabilities::empty();
        if shader.needs_subgroups() {
            caps |= Capabilities::SUBGROUP;
        }
        if shader.needs_f16() {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        // The backend compiles without injected checks; wgpu's default (Restrict) is kept translatable too.
        for checks in [BoundsCheckPolicy::Unchecked, BoundsCheckPolicy::Restrict] {
            for v in [(2, 4), (3, 0)] {
                let out = translate(&key, &src, caps, checks, v);
                assert!(
                    out.contains("kernel void"),
                    "{key}: no compute kernel in the MSL output"
                );
                if shader.needs_subgroups() {
                    // simd_sum for the reductions, simdgroup builtins for the lane probe.
                    assert!(
                        out.contains("simdgroup"),
                        "{key}: no simdgroup built-in in the MSL output"
                    );
                }
            }
        }
    }
    println!(
        "{} shader variants validated and translated to MSL 2.4 and 3.0",
        shaders.len()
    );
}

#[test]
fn code_tables_come_from_the_format_module() {
    // The NF4 thresholds appear in the generated shader exactly as the format module's f32 values.
    let nf4 = all_sources()
        .into_iter()
        .find(|(k, _)| k.contains("Nf4"))
        .expect("an NF4 quantizer variant")
        .1;
    for t in lowbit::format::codebook::NF4_THRESHOLDS {
        let lit = lowbit::backend::wgpu::shaders::wgsl_f32(t);
        assert!(nf4.contains(&lit), "threshold {t} ({lit}) missing");
    }
}
