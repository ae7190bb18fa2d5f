//! The CLI under abuse: no data loss (inputs inside outputs, foreign directories, symlinked model files,
//! values int8 cannot hold, skip lists, unreadable headers), no panic on closed or full stdout/stderr, clean
//! interrupts and leftovers, honest `inspect`, escaped names, and messages that name the real problem.

use half::f16;
use lowbit::io::StDtype;
use lowbit::io::safetensors_write::{PlannedTensor, pt_metadata, write_all};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn lowbit_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    c.args(args)
        .env("LOWBIT_DEVICE", "cpu")
        .env_remove("RUST_LOG");
    c
}

fn lowbit(args: &[&str]) -> (bool, String, String) {
    let out = lowbit_cmd(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tensor: name, dtype, shape, little-endian bytes.
type T = (String, StDtype, Vec<usize>, Vec<u8>);

fn f16_tensor(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> T {
    let n: usize = shape.iter().product();
    let b = (0..n)
        .flat_map(|i| f16::from_f32(f(i)).to_le_bytes())
        .collect();
    (name.into(), StDtype::F16, shape.to_vec(), b)
}

fn f32_tensor(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> T {
    let n: usize = shape.iter().product();
    let b = (0..n).flat_map(|i| f(i).to_le_bytes()).collect();
    (name.into(), StDtype::F32, shape.to_vec(), b)
}

fn wave(i: usize) -> f32 {
    ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1
}

fn write_file(path: &Path, tensors: &[T]) {
    let t: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (PlannedTensor::new(n, *d, s.clone()), b.clone()))
        .collect();
    write_all(path, &t, pt_metadata()).unwrap();
}

const LLAMA: &str =
    r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16"}"#;

/// A model directory: config.json, model.safetensors, tokenizer.json.
fn model_dir(dir: &Path, tensors: &[T], config: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{\"v\": 1}").unwrap();
    write_file(&dir.join("model.safetensors"), tensors);
}

/// A small Llama-like model with tied embeddings (no lm_head.weight).
fn tied_llama() -> Vec<T> {
    vec![
        f16_tensor("model.embed_tokens.weight", &[32, 64], wave),
        f16_tensor("model.layers.0.self_attn.q_proj.weight", &[64, 64], wave),
        f16_tensor("model.layers.0.mlp.up_proj.weight", &[128, 64], wave),
        f16_tensor("model.norm.weight", &[64], |_| 1.0),
    ]
}

fn tmp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect()
}

// 1 ---------------------------------------------------------------------------------------------------------

#[test]
fn force_never_deletes_an_input_inside_the_output() {
    let d = tempfile::tempdir().unwrap();
    let x = d.path().join("X");
    let input = x.join("model");
    model_dir(&input, &tied_llama(), LLAMA);
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&x), "--format", "nf4", "--force"]);
    assert!(!ok, "must refuse");
    assert!(err.contains("inside the output"), "{err}");
    assert!(input.join("model.safetensors").is_file(), "input deleted");
}

#[test]
fn force_replaces_only_previous_outputs() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    // A directory that is not a lowbit output: files without weights, or a subdirectory.
    let foreign = d.path().join("photos");
    std::fs::create_dir_all(foreign.join("2024")).unwrap();
    std::fs::write(foreign.join("a.jpg"), "x").unwrap();
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&input),
        s(&foreign),
        "--format",
        "nf4",
        "--force",
    ]);
    assert!(!ok && err.contains("not a previous lowbit output"), "{err}");
    assert!(foreign.join("a.jpg").is_file() && foreign.join("2024").is_dir());
    // A plain file in the way of a directory output.
    let file = d.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&input),
        s(&file),
        "--format",
        "nf4",
        "--force",
    ]);
    assert!(!ok && err.contains("not a previous lowbit output"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // A previous output is replaced.
    let out = d.path().join("q");
    for _ in 0..2 {
        let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "nf4", "--force"]);
        assert!(ok, "{err}");
    }
}

// 2 ---------------------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn hub_cache_symlinks_are_followed_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let blobs = d.path().join("blobs");
    let snap = d.path().join("snapshots").join("abc123");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    write_file(&blobs.join("b1"), &tied_llama());
    std::fs::write(blobs.join("b2"), LLAMA).unwrap();
    std::fs::write(blobs.join("b3"), "{\"tok\": 1}").unwrap();
    std::fs::write(blobs.join("b4"), "{\"cfg\": 2}").unwrap();
    for (blob, name) in [
        ("b1", "model.safetensors"),
        ("b2", "config.json"),
        ("b3", "tokenizer.json"),
        ("b4", "tokenizer_config.json"),
    ] {
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(name)).unwrap();
    }
    std::os::unix::fs::symlink("../../blobs/missing", snap.join("special_tokens_map.json"))
        .unwrap();
    let out = d.path().join("q");
    let (ok, stdout, err) = lowbit(&["--json", "quantize", s(&snap), s(&out), "--format", "nf4"]);
    assert!(ok, "{err}");
    let r = json(&stdout);
    assert_eq!(
        r["copied_files"],
        serde_json::json!(["tokenizer.json", "tokenizer_config.json"])
    );
    assert_eq!(r["skipped_files"][0]["name"], "special_tokens_map.json");
    assert_eq!(r["skipped_files"][0]["reason"], "a broken symbolic link");
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"tok\": 1}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap(),
        "{\"cfg\": 2}"
    );
    // Human output says what was copied.
    let (ok, stdout, err) = lowbit(&["quantize", s(&snap), s(&out), "--format", "nf4", "--force"]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("copied tokenizer.json, tokenizer_config.json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not copied: special_tokens_map.json"),
        "{stdout}"
    );
}

// 3 ---------------------------------------------------------------------------------------------------------

#[test]
fn int8_refuses_values_beyond_float16_and_names_the_row() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    let big = |i: usize| if i == 3 * 64 + 5 { 1.0e5 } else { wave(i) };
    let mut t = tied_llama();
    t[1] = f32_tensor("model.layers.0.self_attn.q_proj.weight", &[64, 64], big);
    model_dir(&input, &t, LLAMA);
    let out = d.path().join("q");
    let (ok, stdout, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "int8"]);
    assert!(!ok, "exit 0 with: {stdout}");
    assert!(
        err.contains("q_proj.weight") && err.contains("row 3") && err.contains("65504"),
        "{err}"
    );
    assert!(!out.exists());
    // Within float16's range, int8 works and reports a finite error.
    t[1] = f32_tensor("model.layers.0.self_attn.q_proj.weight", &[64, 64], |i| {
        if i == 5 { 6.0e4 } else { wave(i) }
    });
    model_dir(&input, &t, LLAMA);
    let (ok, stdout, err) = lowbit(&["--json", "quantize", s(&input), s(&out), "--format", "int8"]);
    assert!(ok, "{err}");
    let r = json(&stdout);
    assert!(r["max_rel_error"].as_f64().unwrap().is_finite(), "{r}");
}

// 4 ---------------------------------------------------------------------------------------------------------

#[test]
fn skip_list_describes_exactly_what_was_quantized() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.path().join("q");
    for fmt in ["nf4", "ternary"] {
        let (ok, _, err) = lowbit(&[
            "quantize",
            s(&input),
            s(&out),
            "--format",
            fmt,
            "--exclude",
            "q_proj",
            "--force",
            if fmt == "ternary" {
                "--allow-ptq-ternary"
            } else {
                "-q"
            },
        ]);
        assert!(ok, "{err}");
        let cfg = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
        let qc = &cfg["quantization_config"];
        let skip = if fmt == "nf4" {
            &qc["llm_int8_skip_modules"]
        } else {
            &qc["modules_to_not_convert"]
        };
        // Tied embeddings: no lm_head tensor, but transformers has an lm_head Linear to keep unquantized.
        assert_eq!(
            skip,
            &serde_json::json!([
                "lm_head",
                "model.embed_tokens",
                "model.layers.0.self_attn.q_proj"
            ]),
            "{fmt}: {qc}"
        );
    }
    // Defaults: no list (transformers' own defaults match).
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "nf4", "--force"]);
    assert!(ok, "{err}");
    let cfg = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert!(cfg["quantization_config"]["llm_int8_skip_modules"].is_null());
}

#[test]
fn excluding_everything_is_an_error_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.path().join("q");
    let (ok, stdout, err) = lowbit(&[
        "quantize",
        s(&input),
        s(&out),
        "--format",
        "nf4",
        "--exclude",
        ".*",
    ]);
    assert!(!ok, "exit 0: {stdout}");
    assert!(
        err.contains("no tensor") && err.contains("--exclude"),
        "{err}"
    );
    assert!(!out.exists());
}

// 5 ---------------------------------------------------------------------------------------------------------

#[test]
fn ternary_needs_a_bitnet_model_or_an_explicit_flag() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.path().join("q");
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "ternary"]);
    assert!(!ok, "ternarized a llama silently");
    assert!(
        err.contains("not BitNet") && err.contains("--allow-ptq-ternary") && err.contains("llama"),
        "{err}"
    );
    assert!(!out.exists());
    let (ok, stdout, err) = lowbit(&[
        "--json",
        "quantize",
        s(&input),
        s(&out),
        "--format",
        "ternary",
        "--allow-ptq-ternary",
    ]);
    assert!(ok, "{err}");
    assert!(
        json(&stdout)["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not BitNet")
    );
    // A BitNet-trained model needs no flag.
    let bitnet = d.path().join("b");
    model_dir(&bitnet, &tied_llama(), r#"{"model_type": "bitnet"}"#);
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&bitnet),
        s(&d.path().join("bq")),
        "--format",
        "ternary",
    ]);
    assert!(ok, "{err}");
}

// 6 ---------------------------------------------------------------------------------------------------------

#[test]
fn an_output_header_over_the_reader_limit_is_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    // 9000 tiny weights with 2000-character names: an 18 MB input header, a 100+ MB output header.
    let pad = "p".repeat(1980);
    let t: Vec<T> = (0..9000)
        .map(|i| f16_tensor(&format!("model.{pad}.{i:05}.proj.weight"), &[1, 64], wave))
        .collect();
    model_dir(&input, &t, LLAMA);
    drop(t);
    let out = d.path().join("q");
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&input),
        s(&out),
        "--format",
        "nf4",
        "--double-quant",
    ]);
    assert!(!ok, "wrote an unreadable file");
    assert!(
        err.contains("100000000-byte limit") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(tmp_entries(d.path()).is_empty());
}

// 7 ---------------------------------------------------------------------------------------------------------

fn small_quantized(d: &Path) -> PathBuf {
    let input = d.join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.join("q");
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "nf4"]);
    assert!(ok, "{err}");
    out
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let q = small_quantized(d.path());
    for args in [
        vec!["inspect", s(&q)],
        vec!["--json", "inspect", s(&q)],
        vec!["devices"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = lowbit_cmd(&args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_or_stderr_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let q = small_quantized(d.path());
    let full = || Stdio::from(std::fs::File::create("/dev/full").unwrap());
    let out = lowbit_cmd(&["inspect", s(&q)])
        .stdout(full())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // An error message to a full stderr: still exit 1, no panic (101).
    let out = lowbit_cmd(&["inspect", s(&d.path().join("nope"))])
        .stdout(Stdio::null())
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = lowbit_cmd(&["inspect", s(&q)])
        .stdout(Stdio::null())
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

// 9 ---------------------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn sigterm_and_sigint_remove_the_temporary_output() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    // 64 x 2048x1024 f16 (256 MiB): the streaming quantizer still needs about a second for it in a debug
    // build, well past the signal (32 MiB, enough for the tensor-at-a-time path, finished first).
    let t: Vec<T> = (0..64)
        .map(|i| {
            f16_tensor(
                &format!("model.layers.{i}.mlp.up_proj.weight"),
                &[2048, 1024],
                wave,
            )
        })
        .collect();
    model_dir(&input, &t, LLAMA);
    drop(t);
    for sig in ["-TERM", "-INT"] {
        let out = d.path().join("q");
        let mut child = lowbit_cmd(&["-q", "quantize", s(&input), s(&out), "--format", "nf4"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while tmp_entries(d.path()).is_empty() {
            assert!(t0.elapsed().as_secs() < 60, "no temporary output appeared");
            assert!(
                child.try_wait().unwrap().is_none(),
                "finished before the signal"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let st = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let res = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(
            res.status.code(),
            Some(130),
            "{sig}: {:?} {err}",
            res.status
        );
        assert!(err.contains("interrupted"), "{err}");
        assert!(
            tmp_entries(d.path()).is_empty(),
            "{sig}: {:?}",
            tmp_entries(d.path())
        );
        assert!(!out.exists());
    }
}

#[cfg(target_os = "linux")]
#[test]
fn temporaries_of_dead_processes_are_removed_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.path().join("q");
    // pid_max is at most 2^22: this process cannot exist.
    let stale_dir = d.path().join("q.tmp-4194400-0");
    let stale_old = d.path().join("q.old-4194401-3");
    std::fs::create_dir_all(&stale_dir).unwrap();
    std::fs::write(stale_dir.join("model.safetensors"), vec![0u8; 1000]).unwrap();
    std::fs::create_dir_all(&stale_old).unwrap();
    // A live process's temporary (ours) is left alone.
    let live = d.path().join(format!("q.tmp-{}-0", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let (ok, stdout, err) = lowbit(&["--json", "quantize", s(&input), s(&out), "--format", "nf4"]);
    assert!(ok, "{err}");
    assert!(!stale_dir.exists() && !stale_old.exists());
    assert!(live.exists());
    let r = json(&stdout);
    assert_eq!(
        r["stale_temporaries_removed"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    assert_eq!(
        r["stale_temporaries_kept"].as_array().unwrap().len(),
        1,
        "{r}"
    );
}

#[test]
fn a_failed_run_leaves_no_directories_it_created() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    let mut t = tied_llama();
    t[2] = f16_tensor("model.layers.0.mlp.up_proj.weight", &[128, 64], |i| {
        if i == 9 { f32::NAN } else { wave(i) }
    });
    model_dir(&input, &t, LLAMA);
    let out = d.path().join("a").join("b").join("q");
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "nf4"]);
    assert!(!ok && err.contains("non-finite"), "{err}");
    assert!(
        !d.path().join("a").exists(),
        "left {:?}",
        d.path().join("a")
    );
    // A successful run keeps them, of course.
    t[2] = f16_tensor("model.layers.0.mlp.up_proj.weight", &[128, 64], wave);
    model_dir(&input, &t, LLAMA);
    let (ok, _, err) = lowbit(&["quantize", s(&input), s(&out), "--format", "nf4"]);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors").is_file());
}

// 10 --------------------------------------------------------------------------------------------------------

#[test]
fn concurrent_forced_runs_all_land_a_complete_output() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("m");
    model_dir(&input, &tied_llama(), LLAMA);
    let out = d.path().join("q");
    for _ in 0..3 {
        let children: Vec<_> = (0..12)
            .map(|_| {
                lowbit_cmd(&[
                    "-q",
                    "quantize",
                    s(&input),
                    s(&out),
                    "--format",
                    "nf4",
                    "--force",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        for c in children {
            let r = c.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(
                r.status.success() || err.contains("another process"),
                "{err}"
            );
        }
        let (ok, _, err) = lowbit(&["inspect", s(&out)]);
        assert!(ok, "{err}");
        assert!(
            tmp_entries(d.path()).is_empty(),
            "{:?}",
            tmp_entries(d.path())
        );
    }
}

// 11 --------------------------------------------------------------------------------------------------------

/// Rewrites a safetensors file with `edit` applied to its tensors.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<T>)) {
    let f = lowbit::io::SafetensorsFile::open(src).unwrap();
    let mut t: Vec<T> = f
        .tensors()
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.dtype,
                e.shape.clone(),
                f.bytes(e).unwrap(),
            )
        })
        .collect();
    edit(&mut t);
    write_file(dst, &t);
}

fn set_json(t: &mut [T], key: &str, f: impl Fn(&mut serde_json::Value)) {
    let e = t.iter_mut().find(|x| x.0.contains(key)).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&e.3).unwrap();
    f(&mut v);
    e.3 = serde_json::to_vec(&v).unwrap();
    e.2 = vec![e.3.len()];
}

/// An edit of a file's tensors.
type Edit = Box<dyn Fn(&mut Vec<T>)>;

#[test]
fn inspect_rejects_what_dequantize_rejects() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("w.safetensors");
    write_file(&src, &[f16_tensor("l.q_proj.weight", &[64, 128], wave)]);
    let q = d.path().join("q.safetensors");
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&src),
        s(&q),
        "--format",
        "nf4",
        "--double-quant",
    ]);
    assert!(ok, "{err}");
    let qs = "quant_state.bitsandbytes__nf4";
    let cases: Vec<(&str, Edit)> = vec![
        (
            "absmax",
            Box::new(|t| t.retain(|x| !x.0.ends_with(".absmax"))),
        ),
        (
            "packed bytes",
            Box::new(|t| {
                let w = t.iter_mut().find(|x| x.0 == "l.q_proj.weight").unwrap();
                w.3.truncate(w.3.len() - 2);
                w.2 = vec![w.3.len(), 1];
            }),
        ),
        (
            "quant_map",
            Box::new(|t| {
                let m = t
                    .iter_mut()
                    .find(|x| x.0.ends_with(".weight.quant_map"))
                    .unwrap();
                m.3[4] ^= 1;
            }),
        ),
        (
            "blocksize 7",
            Box::new(move |t| set_json(t, qs, |v| v["blocksize"] = 7.into())),
        ),
        (
            "packed bytes",
            Box::new(move |t| {
                set_json(t, qs, |v| {
                    v["shape"] = serde_json::json!([1u64 << 20, 1u64 << 20])
                })
            }),
        ),
        (
            "nested absmax",
            Box::new(|t| {
                let m = t
                    .iter_mut()
                    .find(|x| x.0.ends_with("nested_absmax"))
                    .unwrap();
                m.3.extend([0, 0, 0, 0]);
                m.2 = vec![m.3.len() / 4];
            }),
        ),
    ];
    for (i, (needle, edit)) in cases.iter().enumerate() {
        let bad = d.path().join(format!("bad{i}.safetensors"));
        rewrite(&q, &bad, edit);
        let (ok, stdout, err) = lowbit(&["inspect", s(&bad)]);
        assert!(!ok, "inspect accepted case {i} ({needle}): {stdout}");
        assert!(err.contains(needle), "case {i}: {err}");
        let (ok, _, err2) = lowbit(&["dequantize", s(&bad), s(&d.path().join("x.safetensors"))]);
        assert!(!ok, "dequantize accepted case {i}");
        assert!(err2.contains(needle), "case {i}: {err2}");
    }
    // The intact file inspects, and says what was checked.
    let (ok, stdout, err) = lowbit(&["inspect", s(&q)]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("passed the checks dequantize makes"),
        "{stdout}"
    );
}

// 12 --------------------------------------------------------------------------------------------------------

#[test]
fn inspect_escapes_control_characters_in_names() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("evil.safetensors");
    write_file(
        &p,
        &[
            f16_tensor("a\u{1b}[2Jb", &[4], wave),
            f16_tensor("c\nfake 1 2 3\r", &[4], wave),
        ],
    );
    let (ok, stdout, err) = lowbit(&["inspect", s(&p)]);
    assert!(ok, "{err}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\r'),
        "{stdout:?}"
    );
    assert!(
        stdout.contains("a\\u{1b}[2Jb") && stdout.contains("c\\nfake 1 2 3\\r"),
        "{stdout}"
    );
    // Header, two rows, blank line, three summary lines.
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
}

// 13 --------------------------------------------------------------------------------------------------------

#[test]
fn messages_name_the_real_problem() {
    let d = tempfile::tempdir().unwrap();
    let one = |name: &str, t: Vec<T>| {
        let p = d.path().join(name);
        write_file(&p, &t);
        p
    };
    let out = d.path().join("o.safetensors");
    // Zero-size weights.
    let z = one(
        "z.safetensors",
        vec![f16_tensor("l.up_proj.weight", &[0, 64], wave)],
    );
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&z),
        s(&out),
        "--format",
        "nf4",
        "--double-quant",
    ]);
    assert!(
        !ok && err.contains("no elements") && !err.contains("NaN"),
        "{err}"
    );
    let z = one(
        "z8.safetensors",
        vec![f16_tensor("l.up_proj.weight", &[8, 0], wave)],
    );
    let (ok, _, err) = lowbit(&["quantize", s(&z), s(&out), "--format", "int8"]);
    assert!(
        !ok && err.contains("no elements") && !err.contains("length mismatch"),
        "{err}"
    );
    // Finite weights whose block scales overflow double quantization's float32 mean.
    let big = one(
        "big.safetensors",
        vec![f32_tensor("l.up_proj.weight", &[64, 64], |i| {
            if i % 64 == 0 { 3.4e38 } else { 1.0 }
        })],
    );
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&big),
        s(&out),
        "--format",
        "nf4",
        "--double-quant",
    ]);
    assert!(
        !ok && err.contains("without --double-quant") && !err.contains("offset inf"),
        "{err}"
    );
    let (ok, _, err) = lowbit(&["quantize", s(&big), s(&out), "--format", "nf4"]);
    assert!(ok, "{err}");
    // Options that do not apply to the format are refused, not ignored.
    let w = one(
        "w.safetensors",
        vec![f16_tensor("l.up_proj.weight", &[8, 64], wave)],
    );
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&w),
        s(&out),
        "--format",
        "int8",
        "--blocksize",
        "128",
        "--force",
    ]);
    assert!(!ok && err.contains("--blocksize"), "{err}");
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&w),
        s(&out),
        "--format",
        "int8",
        "--double-quant",
        "--force",
    ]);
    assert!(!ok && err.contains("--double-quant"), "{err}");
    // A packed ternary row count that overflows when unpacked.
    let t = one(
        "t.safetensors",
        vec![
            (
                "l.weight".into(),
                StDtype::U8,
                vec![(1usize << 62) + 1, 0],
                vec![],
            ),
            f16_tensor("l.weight_scale", &[1], |_| 1.0),
        ],
    );
    let (ok, stdout, err) = lowbit(&["inspect", s(&t)]);
    assert!(!ok && err.contains("overflows"), "{stdout} {err}");
    // A PyTorch-only model directory.
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("config.json"), LLAMA).unwrap();
    std::fs::write(bin.join("pytorch_model.bin"), "pickle").unwrap();
    let (ok, _, err) = lowbit(&[
        "quantize",
        s(&bin),
        s(&d.path().join("bq")),
        "--format",
        "nf4",
    ]);
    assert!(
        !ok && err.contains("pytorch_model.bin is not supported") && err.contains("convert"),
        "{err}"
    );
    // demo with no layers.
    let (ok, stdout, err) = lowbit(&["demo", "--layers", "0"]);
    assert!(
        !ok && !stdout.contains("NaN") && err.contains("--layers"),
        "{stdout} {err}"
    );
}

#[cfg(not(target_os = "macos"))]
#[test]
fn metal_outside_macos_says_so() {
    let (ok, _, err) = lowbit(&[
        "--device", "metal", "bench", "--op", "softmax", "--shape", "8x8",
    ]);
    assert!(!ok && err.contains("Metal is macOS-only"), "{err}");
    assert!(!err.contains("dx12") || cfg!(windows), "{err}");
}

#[test]
fn devices_lists_no_phantom_cuda_gpu() {
    let have_nvidia = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"));
    let (ok, stdout, err) = lowbit(&["--json", "devices"]);
    assert!(ok, "{err}");
    let v = json(&stdout);
    let cuda = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["backend"] == "cuda")
        .count();
    assert_eq!(cuda > 0, have_nvidia, "{v}");
}

// 14 --------------------------------------------------------------------------------------------------------

#[test]
fn devices_with_an_unknown_device_exits_non_zero() {
    for (args, env) in [
        (vec!["--device", "bogus9", "devices"], None),
        (vec!["devices"], Some("bogus9")),
        (vec!["--json", "--device", "bogus9", "devices"], None),
    ] {
        let mut c = lowbit_cmd(&args);
        if let Some(v) = env {
            c.env("LOWBIT_DEVICE", v);
        }
        let out: Output = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("bogus9") && err.contains("cpu"), "{err}");
        if !cfg!(target_os = "macos") {
            assert!(!err.contains("metal"), "{err}");
        }
        if !cfg!(windows) {
            assert!(!err.contains("dx12"), "{err}");
        }
    }
    let (ok, _, err) = lowbit(&["--device", "cpu", "devices"]);
    assert!(ok, "{err}");
}
