#![cfg(feature = "cuda")]
//! The CUDA kernels' source compiles with NVRTC for every architecture lowbit targets, family by family, and
//! every kernel the backend launches is exported by the family its name maps to. This needs only NVRTC (no
//! driver, no GPU), so it runs wherever libnvrtc is found; elsewhere it says it was skipped. The kernels
//! themselves run in the conformance suite and the golden tests on a CUDA device.

use lowbit::backend::cuda;

fn nvrtc_present() -> bool {
    let present = cuda::nvrtc_present();
    if !present {
        println!("skipped: no NVRTC (libnvrtc.so.13) on this machine");
    }
    present
}

/// Every kernel name the backend launches (backend/cuda/ops/, storage.rs).
fn launched_kernels() -> Vec<String> {
    let mut v: Vec<String> = [
        "dequantize",
        "dequantize_4bit_x8",
        "dequantize_8bit_x8",
        "bias_finish",
        "int8_col_outliers",
        "int8_row_quant",
        "int8_dequant",
        "int8_gemm",
        "int8_gemv_dp4a",
        "int8_outlier_list",
        "int8_outlier_gemv",
        "int8_mm_dequant",
        "int8_outlier_operands",
        "add_f16",
        "ternary_quantize",
        "ternary_act_quant",
        "ternary_matmul",
        "ternary_matmul_dp4a",
        "ternary_unpack_i8",
        "ternary_finish",
        "ternary_linear_r1",
        "cast",
        "binary",
        "gelu",
        "rms_norm",
        "softmax",
        "embedding",
        "rope",
        "attention",
        "attention_split",
        "attention_merge",
        "copy_rows_at",
        "copy_rows_pair",
    ]
    .map(String::from)
    .to_vec();
    for dt in ["f32", "f16", "bf16"] {
        v.push(format!("quantize_blockwise_{dt}"));
        v.push(format!("quantize_4bit_{dt}"));
        v.push(format!("quantize_blockwise_x8_{dt}"));
        v.push(format!("quantize_4bit_x8_{dt}"));
        v.push(format!("gemm_dense_{dt}"));
        v.push(format!("gemm_4bit_{dt}"));
        for r in [1, 2, 4, 8] {
            v.push(format!("linear_4bit_any_{dt}_r{r}"));
            v.push(format!("linear_rows_{dt}_r{r}"));
            // Weights kept in half precision under activations of any float dtype.
            for w in ["f16", "bf16"] {
                v.push(format!("linear_rows_{dt}_r{r}_w{w}"));
            }
            for w in [2, 4] {
                v.push(format!("linear_4bit_words_{dt}_r{r}_w{w}"));
            }
        }
    }
    // The tensor-core 4-bit kernel, half-precision activations only.
    for dt in ["f16", "bf16"] {
        for b in [1, 2, 4] {
            v.push(format!("linear_4bit_pipe_{dt}_b{b}"));
        }
        v.push(format!("linear_4bit_pipe_{dt}_x1"));
        v.push(format!("linear_4bit_pipe_{dt}_b1s"));
    }
    v
}

#[test]
fn kernels_compile_for_every_target_architecture() {
    if !nvrtc_present() {
        return;
    }
    let kernels = launched_kernels();
    // Turing (the oldest CUDA 13 supports) through Hopper (sm_90: the H100/H200).
    for (major, minor) in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0)] {
        for family in cuda::FAMILIES {
            let ptx = cuda::compile(family, major, minor)
                .unwrap_or_else(|e| panic!("sm_{major}{minor}: {e}"))
                .to_src();
            for k in kernels.iter().filter(|k| cuda::family_of(k) == family) {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "sm_{major}{minor}: no {k} in the {family} program"
                );
            }
            // From Hopper on, every kernel's code waits for the kernel before it (programmatic dependent
            // launch); before, the wait compiles to nothing.
            for entry in ptx.split(".entry ").skip(1) {
                assert_eq!(
                    entry.contains("griddepcontrol.wait"),
                    major >= 9,
                    "sm_{major}{minor}: {}",
                    entry.split('(').next().unwrap_or_default()
                );
            }
            println!("sm_{major}{minor} {family}: {} bytes of PTX", ptx.len());
        }
    }
}

#[test]
fn every_launched_kernel_belongs_to_a_family() {
    for k in launched_kernels() {
        assert!(cuda::FAMILIES.contains(&cuda::family_of(&k)), "{k}");
    }
    assert_eq!(
        cuda::family_of("linear_4bit_words_bf16_r8_w4"),
        "linear_bf16"
    );
    assert_eq!(cuda::family_of("gemm_dense_f16"), "linear_f16");
    assert_eq!(cuda::family_of("quantize_4bit_f32"), "quant");
}

/// Kernels are launched with programmatic dependent launch on sm_90 and later, so each may start before the
/// kernel queued ahead of it has finished: every kernel must call `pdl_entry()` (which waits for that
/// kernel's results) before anything else. Reads the source, so it needs no NVRTC and runs everywhere.
#[test]
fn every_kernel_waits_for_the_kernels_before_it_first() {
    let mut kernels = 0;
    for family in cuda::FAMILIES {
        let src = cuda::source(family);
        for (at, _) in src.match_indices("__global__") {
            let body = at + src[at..].find('{').expect("a kernel body");
            let first: String = src[body + 1..]
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '\\')
                .take("pdl_entry();".len())
                .collect();
            let head = src[at..body].split('(').next().unwrap_or_default().trim();
            assert_eq!(
                first, "pdl_entry();",
                "{family}: `{head}` does not begin with pdl_entry()"
            );
            kernels += 1;
        }
    }
    // Counted once per program that holds them (the linear source is in three).
    assert!(kernels >= 40, "found only {kernels} kernels");
}
