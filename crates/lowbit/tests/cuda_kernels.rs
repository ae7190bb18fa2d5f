#![cfg(feature = "cuda")]
//! The CUDA kernels' source compiles with NVRTC for every architecture lowbit targets. This needs only NVRTC
//! (no driver, no GPU), so it runs wherever libnvrtc is found; elsewhere it says it was skipped. The kernels
//! themselves run in the conformance suite and the golden tests on a CUDA device.

use lowbit::backend::cuda;

fn nvrtc_present() -> bool {
    let present = cuda::nvrtc_present();
    if !present {
        println!("skipped: no NVRTC (libnvrtc.so.13) on this machine");
    }
    present
}

#[test]
fn kernels_compile_for_every_target_architecture() {
    if !nvrtc_present() {
        return;
    }
    // Turing (the oldest CUDA 13 supports) through Hopper (sm_90: the H100/H200).
    for (major, minor) in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0)] {
        let ptx = cuda::compile(major, minor).unwrap_or_else(|e| panic!("sm_{major}{minor}: {e}"));
        let src = ptx.to_src();
        for kernel in [
            "quantize_4bit_bf16",
            "quantize_blockwise_f16",
            "linear_4bit_words_f16_r8_w4",
            "gemm_4bit_bf16",
            "int8_mm_dequant",
            "ternary_matmul",
            "attention",
        ] {
            assert!(
                src.contains(&format!(".entry {kernel}(")),
                "sm_{major}{minor}: no {kernel} in the PTX"
            );
        }
        println!("sm_{major}{minor}: {} bytes of PTX", src.len());
    }
}
