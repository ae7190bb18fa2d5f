//! `lowbit generate` and `lowbit perplexity` end to end: the built-in demo model continues its prompt exactly
//! as transformers does (greedy ids recorded by `scripts/make_demo_model.py`), in float and after NF4 on load
//! still runs; LoRA, chat templates and sampling flags are accepted; bad input is a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo_model() -> PathBuf {
    repo().join("models/demo-llama")
}

fn tiny_llama() -> PathBuf {
    repo().join("crates/lowbit/tests/fixtures/models/tiny-llama")
}

fn lowbit(args: &[&str]) -> (bool, String, String) {
    lowbit_on("cpu", args)
}

/// Runs the CLI on `device` in strict mode (a failed op is an error, never a silent CPU fallback).
fn lowbit_on(device: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .env("LOWBIT_DEVICE", device)
        .env("LOWBIT_STRICT", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// transformers' greedy continuation of the demo model, recorded when it was trained.
fn expected_greedy() -> serde_json::Value {
    json(&std::fs::read_to_string(demo_model().join("expected_greedy.json")).unwrap())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_demo_model_continues_its_prompt_as_transformers_does() {
    let expected = expected_greedy();
    let prompt = expected["prompt"].as_str().unwrap();
    let n = expected["max_new_tokens"].as_u64().unwrap().to_string();
    // `generate --json` on the demo model with the recorded prompt, then `extra` flags.
    let generate = |max_tokens: &str, extra: &[&str]| {
        let demo = demo_model();
        let mut args = vec![
            "generate",
            p(&demo),
            "--prompt",
            prompt,
            "--max-tokens",
            max_tokens,
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = lowbit(&args);
        assert!(ok, "{err}");
        json(&out)
    };
    let got = generate(&n, &[]);
    assert_eq!(
        got["generated_ids"], expected["ids"],
        "text: {}",
        got["text"]
    );
    assert_eq!(got["text"], expected["text"]);
    assert_eq!(got["fallbacks"], 0);
    assert!(got["decode_tokens_per_s"].as_f64().unwrap() > 0.0);

    // Quantized on load, the model still runs and reports its (smaller) bytes per token.
    let nf4 = generate("8", &["--format", "nf4"]);
    assert!(nf4["bytes_per_token"].as_u64().unwrap() < got["bytes_per_token"].as_u64().unwrap());

    // With int8 activations the decode steps run the int8 kernels, the head reads int8 blocks (fewer bytes
    // than its bf16), and the text still comes.
    let q8 = generate("8", &["--format", "nf4", "--activations", "int8"]);
    assert!(
        q8["ops"]["matmul_4bit_q8"]["runs"].as_u64().unwrap() > 0,
        "{q8}"
    );
    assert!(q8["ops"]["matmul_q8"]["runs"].as_u64().unwrap() > 0, "{q8}");
    assert!(q8["bytes_per_token"].as_u64().unwrap() < nf4["bytes_per_token"].as_u64().unwrap());
    assert!(!q8["text"].as_str().unwrap().is_empty());
    assert_eq!(q8["fallbacks"], 0);
}

#[test]
fn text_streams_to_stdout_and_statistics_to_stderr() {
    let (ok, out, err) = lowbit(&[
        "generate",
        p(&demo_model()),
        "--prompt",
        "We hold",
        "--max-tokens",
        "6",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "no text on stdout");
    assert!(err.contains("decode") && err.contains("tok/s"), "{err}");
}

#[test]
fn chat_lora_and_sampling_flags_run() {
    let m = tiny_llama();
    let lora = m.join("lora");
    let args = [
        "generate",
        p(&m),
        "--prompt",
        "hello",
        "--chat",
        "--system",
        "be brief",
        "--lora",
        p(&lora),
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--repetition-penalty",
        "1.2",
        "--seed",
        "7",
        "--max-tokens",
        "5",
        "--json",
    ];
    let (ok, a, err) = lowbit(&args);
    assert!(ok, "{err}");
    let (_, b, _) = lowbit(&args);
    assert_eq!(
        json(&a)["generated_ids"],
        json(&b)["generated_ids"],
        "same seed, same tokens"
    );
}

#[test]
fn perplexity_scores_every_token_after_the_first_in_one_or_several_windows() {
    let text = repo().join("scripts/data/perplexity.txt");
    let (ok, out, err) = lowbit(&["perplexity", p(&demo_model()), p(&text), "--json"]);
    assert!(ok, "{err}");
    let one = json(&out);
    let tokens = one["tokens"].as_u64().unwrap();
    assert_eq!(one["tokens_scored"].as_u64().unwrap(), tokens - 1);
    assert!(one["windows"].as_u64().unwrap() >= 1);
    // The model memorised this text: its perplexity is low.
    assert!(one["perplexity"].as_f64().unwrap() < 5.0, "{out}");
    let (ok, out, err) = lowbit(&[
        "perplexity",
        p(&demo_model()),
        p(&text),
        "--context",
        "128",
        "--stride",
        "64",
        "--json",
    ]);
    assert!(ok, "{err}");
    let strided = json(&out);
    assert_eq!(strided["tokens_scored"].as_u64().unwrap(), tokens - 1);
    assert!(strided["windows"].as_u64().unwrap() > 1);
}

#[test]
fn bad_model_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = lowbit(&["generate", p(tmp.path()), "--prompt", "x"]);
    assert!(!ok && err.contains("config.json"), "{err}");
    let (ok, _, err) = lowbit(&[
        "generate",
        p(&tiny_llama()),
        "--prompt",
        "x",
        "--format",
        "q4_0",
    ]);
    assert!(!ok && err.contains("q4_0"), "{err}");
    let (ok, _, err) = lowbit(&[
        "generate",
        p(&tiny_llama()),
        "--prompt",
        "x",
        "--top-p",
        "0",
    ]);
    assert!(!ok && err.contains("top_p"), "{err}");
    let missing = tmp.path().join("nope.txt");
    let (ok, _, err) = lowbit(&["perplexity", p(&tiny_llama()), p(&missing)]);
    assert!(!ok && err.contains("nope.txt"), "{err}");
}

/// The same continuation on the GPU (lavapipe in CI), strict: an op that failed there cannot pass on the CPU.
#[test]
fn the_demo_model_runs_strict_on_the_gpu() {
    let expected = expected_greedy();
    let n = expected["max_new_tokens"].as_u64().unwrap().to_string();
    let dev = if cfg!(target_os = "macos") {
        "metal:0"
    } else {
        "vulkan:0"
    };
    let prompt = expected["prompt"].as_str().unwrap();
    let model = demo_model();
    let args = [
        "generate",
        p(&model),
        "--prompt",
        prompt,
        "--max-tokens",
        &n,
        "--json",
    ];
    let (ok, out, err) = lowbit_on(dev, &args);
    if !ok && std::env::var("LOWBIT_REQUIRE_GPU").as_deref() != Ok("1") {
        println!("skipped: no GPU adapter ({})", err.trim());
        return;
    }
    assert!(ok, "{err}");
    let got = json(&out);
    assert_eq!(got["device"], dev);
    assert_eq!(got["fallbacks"], 0);
    assert_eq!(got["generated_ids"], expected["ids"]);
    // Int8 activations are a CPU path: the GPU refuses them with a typed error, not a fallback.
    let (ok, _, err) = lowbit_on(dev, &[&args[..], &["--activations", "int8"]].concat());
    assert!(
        !ok && err.contains("int8 activations are a CPU decode path"),
        "{err}"
    );
}
