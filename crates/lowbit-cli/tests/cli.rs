//! The CLI end to end: the demo at a reduced size, `bench --json` fields, and non-zero exits on bad input.

use std::process::Command;

fn lowbit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .env("LOWBIT_DEVICE", "cpu")
        .output()
        .expect("runs")
}

#[test]
fn demo_runs_and_every_fused_check_passes() {
    let out = lowbit(&["demo", "--shrink", "16", "--json", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["formats"].as_array().unwrap().len(), 6);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 20);
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:#?}");
    for f in v["formats"].as_array().unwrap() {
        assert!(
            f["sqnr_db"].as_f64().unwrap() > 0.0 && f["bits_per_weight"].as_f64().unwrap() < 9.0,
            "{f}"
        );
    }
}

#[test]
fn bench_json_has_the_documented_fields() {
    let out = lowbit(&[
        "bench",
        "--op",
        "gemv_4bit",
        "--shape",
        "256x512",
        "--iters",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "op",
        "device",
        "shape",
        "batch",
        "median_s",
        "gbps",
        "read_bandwidth_gbps",
        "fraction_of_bandwidth",
    ] {
        assert!(!v[k].is_null(), "missing {k} in {v}");
    }
    assert!(v["median_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["shape"], serde_json::json!([256, 512]));
}

#[test]
fn bench_runs_every_op() {
    let out = lowbit(&[
        "bench", "--op", "all", "--shape", "128x256", "--batch", "4", "--iters", "1", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 16);
    assert!(v["statistics"].is_object(), "{v}");
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    for args in [
        &["bench", "--op", "gemv_4bit", "--shape", "12"][..],
        &[
            "bench",
            "--op",
            "quantize_4bit",
            "--blocksize",
            "48",
            "--shape",
            "64x64",
        ],
        &[
            "bench",
            "--op",
            "gemv_4bit",
            "--format",
            "nf5",
            "--shape",
            "64x64",
        ],
        &["bench", "--op", "nope"],
        &["--device", "tpu:3", "bench", "--op", "softmax"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn bench_resident_needs_a_gpu_device() {
    let out = lowbit(&["bench", "--resident"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a GPU device"), "{err}");
}

/// The GPU suite on resident buffers through the CLI, on the first Vulkan adapter (lavapipe in CI, where
/// `LOWBIT_REQUIRE_GPU=1` makes a missing adapter a failure).
#[test]
fn bench_resident_runs_the_gpu_suite() {
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args([
            "--device",
            "vulkan:0",
            "bench",
            "--resident",
            "--quick",
            "--iters",
            "1",
            "--json",
        ])
        .output()
        .expect("runs");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var("LOWBIT_REQUIRE_GPU").as_deref() != Ok("1"),
            "no GPU suite with LOWBIT_REQUIRE_GPU=1: {err}"
        );
        println!("skipped: no Vulkan adapter ({err})");
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["results"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in [
        "copy",
        "gemv_4bit nf4",
        "ternary gemv",
        "quantize_4bit nf4",
        "matmul_4bit nf4",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in rows {
        assert!(r["median_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["frac_of_copy"].as_f64().unwrap() > 0.0, "{r}");
    }
}
