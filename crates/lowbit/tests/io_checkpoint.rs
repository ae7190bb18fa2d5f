//! Checkpoint reading/writing: the bitsandbytes / BitNet layout key by key, model directories, sharding,
//! atomic outputs and typed errors for every lie in untrusted input.

mod io_common;

use half::f16;
use io_common::*;
use lowbit::io::layout::{self, QuantFormat};
use lowbit::io::safetensors_read::parse_header;
use lowbit::io::safetensors_write::{PlannedTensor, StreamingWriter, TailTensor, pt_metadata};
use lowbit::io::{
    DequantizeJob, QuantSpec, QuantizeJob, QuantizeOptions, SafetensorsFile, StDtype,
};
use lowbit::ops::Linear8bitLt;
use lowbit::tensor::{DType, FloatVec, Tensor};
use lowbit::{Device, Error, FourBitType};
use std::path::{Path, PathBuf};

fn opts(format: QuantFormat, double_quant: bool) -> QuantizeOptions {
    QuantizeOptions {
        spec: QuantSpec {
            format,
            blocksize: 64,
            double_quant,
        },
        compute_dtype: DType::BF16,
        include: None,
        exclude: None,
        force: false,
        allow_ptq_ternary: true,
    }
}

fn quantize(
    input: &Path,
    out: &Path,
    o: QuantizeOptions,
) -> lowbit::Result<lowbit::io::QuantizeReport> {
    QuantizeJob::prepare(input, out, o)?.run(&Device::cpu(), &mut |_| {})
}

fn weight_tensor(v: &[f16], shape: &[usize]) -> Tensor {
    Tensor::from_floats(shape.to_vec(), FloatVec::F16(v.to_vec())).unwrap()
}

fn assert_checkpoint_err(e: Error, needle: &str) {
    match &e {
        Error::Checkpoint { detail, .. } => {
            assert!(detail.contains(needle), "error {e} lacks {needle:?}")
        }
        other => panic!("expected a Checkpoint error mentioning {needle:?}, got {other:?}"),
    }
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

#[test]
fn streaming_writer_round_trip_with_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.safetensors");
    let mut rng = Rng::fresh();
    let a = rng.f16s(300, 1.0);
    let planned = vec![
        PlannedTensor::new("a", StDtype::F16, vec![3, 100]),
        PlannedTensor::new("s", StDtype::U8, vec![]),
    ];
    let mut w = StreamingWriter::create(
        &p,
        planned,
        vec![TailTensor {
            name: "t".into(),
            max_len: 40,
        }],
        pt_metadata(),
    )
    .unwrap();
    w.write("a", bytemuck::cast_slice(&a)).unwrap();
    w.write("s", &[7]).unwrap();
    let total = w
        .finish(vec![("t".into(), b"{\"x\": 1}".to_vec())])
        .unwrap();
    assert_eq!(total, 600 + 1 + 8);
    let f = SafetensorsFile::open(&p).unwrap();
    assert_eq!(f.get("a").unwrap().shape, vec![3, 100]);
    assert_eq!(
        &f.bytes(f.get("a").unwrap()).unwrap(),
        bytemuck::cast_slice::<f16, u8>(&a)
    );
    assert_eq!(&f.bytes(f.get("s").unwrap()).unwrap(), &[7]);
    assert_eq!(f.get("s").unwrap().shape, Vec::<usize>::new());
    assert_eq!(&f.bytes(f.get("t").unwrap()).unwrap(), b"{\"x\": 1}");
    assert_eq!(f.metadata().unwrap()["format"], "pt");
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.safetensors");
    let mut w = StreamingWriter::create(
        &p,
        vec![PlannedTensor::new("a", StDtype::U8, vec![4])],
        vec![],
        pt_metadata(),
    )
    .unwrap();
    assert!(w.write("b", &[1, 2, 3, 4]).is_err());
    drop(w);
    assert!(!p.exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// A file with a hand-written header and `data_len` bytes of data.
fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

#[test]
fn every_header_lie_is_a_typed_error_naming_the_tensor() {
    let p = Path::new("x.safetensors");
    let cases: &[(&str, usize, &str)] = &[
        (
            r#"{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#,
            4,
            "\"w\"",
        ),
        (
            r#"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,8]}}"#,
            8,
            "needs 12 bytes",
        ),
        (
            r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}"#,
            2,
            "unknown dtype",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6,
            "overlap",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#,
            6,
            "contiguous",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
            5,
            "data section holds 5",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}}"#,
            2,
            "reversed",
        ),
        (
            r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,0]}}"#,
            0,
            "overflows",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}"#,
            0,
            "non-negative",
        ),
        (r#"{"w":{"dtype":"U8","shape":[1]}}"#, 1, "data_offsets"),
        (r#"{"w":[1,2]}"#, 0, "not an object"),
        (r#"{"__metadata__":{"format":3}}"#, 0, "__metadata__"),
        (r#"[1,2,3]"#, 0, "not an object"),
        (r#"{"w":"#, 0, "not valid JSON"),
    ];
    for (h, n, needle) in cases {
        let e = parse_header(p, &raw_file(h, *n)).expect_err(h);
        assert_checkpoint_err(e, needle);
    }
    // Header length past the end, over the cap, tiny file.
    let mut b = raw_file("{}", 0);
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_checkpoint_err(parse_header(p, &b).unwrap_err(), "past the end");
    b[..8].copy_from_slice(&(200_000_000u64).to_le_bytes());
    assert_checkpoint_err(parse_header(p, &b).unwrap_err(), "limit");
    assert_checkpoint_err(parse_header(p, &[1, 2, 3]).unwrap_err(), "8-byte header");
    // A correct one parses.
    let ok = parse_header(
        p,
        &raw_file(
            r#"{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#,
            8,
        ),
    )
    .unwrap();
    assert_eq!(ok.tensors[0].name, "w");
}

fn all_keys(dir: &Path) -> Vec<(String, StDtype, Vec<usize>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let f = SafetensorsFile::open(&p).unwrap();
            out.extend(
                f.tensors()
                    .iter()
                    .map(|t| (t.name.clone(), t.dtype, t.shape.clone())),
            );
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn open_one(dir: &Path) -> SafetensorsFile {
    SafetensorsFile::open(&dir.join("model.safetensors")).unwrap()
}

#[test]
fn nf4_layout_matches_bitsandbytes_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("m"), dir.path().join("q"));
    let mut rng = Rng::fresh();
    let tensors = llama_tensors(&mut rng, 2);
    make_model_dir(&src, &tensors, 1);
    for (double, fmt) in [
        (false, FourBitType::Nf4),
        (true, FourBitType::Nf4),
        (false, FourBitType::Fp4),
        (true, FourBitType::Fp4),
    ] {
        let mut o = opts(QuantFormat::FourBit(fmt), double);
        o.force = true;
        let r = quantize(&src, &out, o).unwrap();
        assert_eq!(r.quantized, 14);
        let f = open_one(&out);
        let dev = Device::cpu();
        for (name, shape, v) in &tensors {
            let selected = name.ends_with("_proj.weight");
            if !selected {
                let e = f.get(name).unwrap();
                assert_eq!(
                    &f.bytes(e).unwrap(),
                    bytemuck::cast_slice::<f16, u8>(v),
                    "{name} copied unchanged"
                );
                continue;
            }
            let q = dev
                .quantize_4bit(&weight_tensor(v, shape), fmt, 64, double)
                .unwrap();
            let n: usize = shape.iter().product();
            let nb = n.div_ceil(64);
            let w = f.get(name).unwrap();
            assert_eq!(
                (w.dtype, w.shape.clone()),
                (StDtype::U8, vec![n.div_ceil(2), 1])
            );
            assert_eq!(&f.bytes(w).unwrap(), &q.packed[..]);
            let absmax = f.get(&format!("{name}.absmax")).unwrap();
            let qm = f.get(&format!("{name}.quant_map")).unwrap();
            assert_eq!((qm.dtype, qm.shape.clone()), (StDtype::F32, vec![16]));
            assert_eq!(
                &f.bytes(qm).unwrap(),
                bytemuck::cast_slice::<f32, u8>(fmt.quant_map())
            );
            let qs_key = format!("{name}.quant_state.bitsandbytes__{}", fmt.name());
            let qs = f.get(&qs_key).unwrap();
            assert_eq!(
                (qs.dtype, qs.shape.clone()),
                (StDtype::U8, vec![f.bytes(qs).unwrap().len()])
            );
            assert_eq!(
                std::str::from_utf8(&f.bytes(qs).unwrap()).unwrap(),
                q.state.to_json()
            );
            let na = f.get(&format!("{name}.nested_absmax"));
            let nq = f.get(&format!("{name}.nested_quant_map"));
            if double {
                assert_eq!(
                    (absmax.dtype, absmax.shape.clone()),
                    (StDtype::U8, vec![nb])
                );
                assert_eq!(na.unwrap().shape, vec![nb.div_ceil(256)]);
                assert_eq!(nq.unwrap().shape, vec![256]);
                assert!(
                    std::str::from_utf8(&f.bytes(qs).unwrap())
                        .unwrap()
                        .contains("\"nested_blocksize\": 256")
                );
            } else {
                assert_eq!(
                    (absmax.dtype, absmax.shape.clone()),
                    (StDtype::F32, vec![nb])
                );
                assert!(na.is_none() && nq.is_none());
            }
            // Read back through the layout: identical state, identical dequantization.
            let back = layout::load_fourbit(&f, name).unwrap();
            assert_eq!(back, q);
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let qc = &cfg["quantization_config"];
        assert_eq!(qc["quant_method"], "bitsandbytes");
        assert_eq!(qc["load_in_4bit"], true);
        assert_eq!(qc["_load_in_4bit"], true);
        assert_eq!(qc["load_in_8bit"], false);
        assert_eq!(qc["bnb_4bit_quant_type"], fmt.name());
        assert_eq!(qc["bnb_4bit_use_double_quant"], double);
        assert_eq!(qc["bnb_4bit_compute_dtype"], "bfloat16");
        assert_eq!(qc["bnb_4bit_quant_storage"], "uint8");
        assert_eq!(qc["llm_int8_skip_modules"], serde_json::Value::Null);
        assert_eq!(cfg["model_type"], "llama");
        assert!(out.join("tokenizer.json").is_file());
        assert!(leftovers(dir.path()).is_empty());
    }
}

#[test]
fn int8_and_ternary_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m");
    let mut rng = Rng::fresh();
    let tensors = llama_tensors(&mut rng, 1);
    make_model_dir(&src, &tensors, 1);
    let dev = Device::cpu();
    let out8 = dir.path().join("q8");
    quantize(&src, &out8, opts(QuantFormat::Int8, false)).unwrap();
    let outt = dir.path().join("qt");
    quantize(&src, &outt, opts(QuantFormat::Ternary, false)).unwrap();
    let (f8, ft) = (open_one(&out8), open_one(&outt));
    for (name, shape, v) in tensors.iter().filter(|t| t.0.ends_with("_proj.weight")) {
        let m = name.strip_suffix(".weight").unwrap();
        let wt = weight_tensor(v, shape);
        let l = Linear8bitLt::from_weight(&dev, &wt, None, 0.0).unwrap();
        let w = f8.get(name).unwrap();
        assert_eq!((w.dtype, w.shape.clone()), (StDtype::I8, shape.clone()));
        assert_eq!(
            &f8.bytes(w).unwrap(),
            bytemuck::cast_slice::<i8, u8>(&l.weight)
        );
        let scb = f8.get(&format!("{m}.SCB")).unwrap();
        assert_eq!(
            (scb.dtype, scb.shape.clone()),
            (StDtype::F32, vec![shape[0]])
        );
        assert_eq!(
            &f8.bytes(scb).unwrap(),
            bytemuck::cast_slice::<f32, u8>(&l.scb)
        );
        let wf = f8.get(&format!("{m}.weight_format")).unwrap();
        assert_eq!(
            (wf.dtype, wf.shape.clone(), &f8.bytes(wf).unwrap()[..]),
            (StDtype::U8, vec![], &[0u8][..])
        );

        let t = dev.ternary_quantize(&wt).unwrap();
        let w = ft.get(name).unwrap();
        assert_eq!(
            (w.dtype, w.shape.clone()),
            (StDtype::U8, vec![shape[0] / 4, shape[1]])
        );
        assert_eq!(&ft.bytes(w).unwrap(), &t.packed[..]);
        let s = ft.get(&format!("{m}.weight_scale")).unwrap();
        assert_eq!((s.dtype, s.shape.clone()), (StDtype::F16, vec![1]));
        assert_eq!(
            ft.bytes(s).unwrap(),
            f16::from_f32(t.weight_scale).to_le_bytes()
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out8.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["load_in_8bit"], true);
    assert_eq!(cfg["quantization_config"]["llm_int8_threshold"], 6.0);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outt.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "bitnet");
    assert_eq!(cfg["quantization_config"]["linear_class"], "bitlinear");
    assert_eq!(cfg["quantization_config"]["quantization_mode"], "offline");
}

#[test]
fn sharded_model_keeps_shards_and_index_and_dequantizes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out, back) = (
        dir.path().join("m"),
        dir.path().join("q"),
        dir.path().join("d"),
    );
    let mut rng = Rng::fresh();
    let tensors = llama_tensors(&mut rng, 2);
    make_model_dir(&src, &tensors, 3);
    quantize(
        &src,
        &out,
        opts(QuantFormat::FourBit(FourBitType::Nf4), true),
    )
    .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let wm = index["weight_map"].as_object().unwrap();
    let keys = all_keys(&out);
    assert_eq!(wm.len(), keys.len());
    let mut total = 0u64;
    for (k, _, _) in &keys {
        let shard = wm[k].as_str().unwrap();
        let f = SafetensorsFile::open(&out.join(shard)).unwrap();
        assert!(f.get(k).is_some(), "{k} not in {shard}");
    }
    for s in 1..=3 {
        let f =
            SafetensorsFile::open(&out.join(format!("model-{s:05}-of-00003.safetensors"))).unwrap();
        total += f.tensors().iter().map(|t| t.nbytes() as u64).sum::<u64>();
    }
    assert_eq!(index["metadata"]["total_size"], total);

    DequantizeJob::prepare(&out, &back, None, false)
        .unwrap()
        .run(&Device::cpu(), &mut |_| {})
        .unwrap();
    let dev = Device::cpu();
    let back_keys = all_keys(&back);
    assert_eq!(back_keys.len(), tensors.len());
    for (name, shape, v) in &tensors {
        let shard = serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(back.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap()["weight_map"][name]
            .as_str()
            .unwrap()
            .to_string();
        let f = SafetensorsFile::open(&back.join(shard)).unwrap();
        let e = f.get(name).unwrap();
        assert_eq!((e.dtype, &e.shape), (StDtype::F16, shape));
        let expect = if name.ends_with("_proj.weight") {
            let q = dev
                .quantize_4bit(&weight_tensor(v, shape), FourBitType::Nf4, 64, true)
                .unwrap();
            dev.dequantize_4bit(&q)
                .unwrap()
                .floats("t")
                .unwrap()
                .to_f32_vec()
        } else {
            v.iter().map(|x| x.to_f32()).collect()
        };
        let got: Vec<f32> = bytemuck::cast_slice::<u8, f16>(&f.bytes(e).unwrap())
            .iter()
            .map(|x| x.to_f32())
            .collect();
        assert_eq!(got, expect, "{name}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("quantization_config").is_none());

    let r = lowbit::io::inspect(&out).unwrap();
    assert_eq!(r.entries.len(), tensors.len());
    assert!(
        r.bits_per_weight < 8.0 && r.compression > 2.0,
        "{} {}",
        r.bits_per_weight,
        r.compression
    );
    assert!(
        r.entries
            .iter()
            .filter(|e| e.format == "nf4")
            .all(|e| e.blocksize == Some(64) && e.double_quant)
    );
}

#[test]
fn include_exclude_and_skip_modules() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("m"), dir.path().join("q"));
    let mut rng = Rng::fresh();
    make_model_dir(&src, &llama_tensors(&mut rng, 1), 1);
    let mut o = opts(QuantFormat::FourBit(FourBitType::Nf4), false);
    o.exclude = Some("mlp".into());
    o.include = Some("lm_head".into());
    let r = quantize(&src, &out, o).unwrap();
    assert_eq!(r.quantized, 5);
    let f = open_one(&out);
    assert_eq!(
        f.get("model.layers.0.mlp.up_proj.weight").unwrap().dtype,
        StDtype::F16
    );
    assert_eq!(f.get("lm_head.weight").unwrap().dtype, StDtype::U8);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let skip: Vec<&str> = cfg["quantization_config"]["llm_int8_skip_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(skip.contains(&"model.layers.0.mlp.up_proj") && skip.contains(&"model.embed_tokens"));
    assert!(!skip.contains(&"lm_head"));
    let bad = QuantizeOptions {
        include: Some("(".into()),
        ..opts(QuantFormat::Int8, false)
    };
    assert!(matches!(
        QuantizeJob::prepare(&src, &dir.path().join("z"), bad),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn failures_leave_nothing_and_existing_outputs_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("m"), dir.path().join("q"));
    let mut rng = Rng::fresh();
    let mut tensors = llama_tensors(&mut rng, 2);
    // A NaN in a late shard's weight: the failure comes after earlier shards were written.
    let i = tensors
        .iter()
        .rposition(|t| t.0.ends_with("down_proj.weight"))
        .unwrap();
    tensors[i].2[5] = f16::NAN;
    make_model_dir(&src, &tensors, 3);
    let e = quantize(
        &src,
        &out,
        opts(QuantFormat::FourBit(FourBitType::Nf4), false),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("non-finite") && e.to_string().contains("down_proj"),
        "{e}"
    );
    assert!(!out.exists());
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    tensors[i].2[5] = f16::from_f32(0.5);
    let src2 = dir.path().join("m2");
    make_model_dir(&src2, &tensors, 1);
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let e = QuantizeJob::prepare(&src2, &out, opts(QuantFormat::Int8, false))
        .err()
        .unwrap();
    assert_checkpoint_err(e, "--force");
    assert!(out.join("keep").exists());
    let o = QuantizeOptions {
        force: true,
        allow_ptq_ternary: true,
        ..opts(QuantFormat::Int8, false)
    };
    // --force replaces only what looks like a previous output (a model directory), never other files.
    let e = QuantizeJob::prepare(&src2, &out, o.clone()).err().unwrap();
    assert_checkpoint_err(e, "not a previous lowbit output");
    assert!(out.join("keep").exists());
    std::fs::write(out.join("model.safetensors"), "old").unwrap();
    quantize(&src2, &out, o).unwrap();
    assert!(!out.join("keep").exists() && out.join("model.safetensors").exists());
    assert!(leftovers(dir.path()).is_empty());
    // Output inside the input is refused.
    assert!(QuantizeJob::prepare(&src2, &src2.join("q"), opts(QuantFormat::Int8, false)).is_err());
    // Already quantized input is refused.
    assert_checkpoint_err(
        QuantizeJob::prepare(&out, &dir.path().join("qq"), opts(QuantFormat::Int8, false))
            .err()
            .unwrap(),
        "already quantized",
    );
}

#[test]
fn index_and_quant_state_lies_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m");
    let mut rng = Rng::fresh();
    make_model_dir(&src, &llama_tensors(&mut rng, 1), 2);
    let idx = src.join("model.safetensors.index.json");
    let good = std::fs::read_to_string(&idx).unwrap();
    let target = dir.path().join("o");
    for (text, needle) in [
        (
            good.replacen("model-00001-of-00002.safetensors", "../evil.safetensors", 1),
            "plain",
        ),
        (
            good.replacen("\"weight_map\"", "\"weights\"", 1),
            "weight_map",
        ),
        (
            good.replacen("model.norm.weight", "model.ghost.weight", 1),
            "ghost",
        ),
        ("{".to_string(), "invalid JSON"),
    ] {
        std::fs::write(&idx, text).unwrap();
        let e = QuantizeJob::prepare(&src, &target, opts(QuantFormat::Int8, false))
            .err()
            .unwrap();
        assert_checkpoint_err(e, needle);
    }
    std::fs::write(&idx, &good).unwrap();
    std::fs::write(src.join("config.json"), "[1]").unwrap();
    assert_checkpoint_err(
        QuantizeJob::prepare(&src, &target, opts(QuantFormat::Int8, false))
            .err()
            .unwrap(),
        "not an object",
    );

    // A quant_state JSON that lies about the shape.
    let one = dir.path().join("one");
    make_model_dir(&one, &llama_tensors(&mut rng, 1), 1);
    let q = dir.path().join("q");
    quantize(
        &one,
        &q,
        opts(QuantFormat::FourBit(FourBitType::Nf4), false),
    )
    .unwrap();
    let f = open_one(&q);
    let name = "model.layers.0.mlp.up_proj.weight";
    let mut tensors: Vec<(PlannedTensor, Vec<u8>)> = f
        .tensors()
        .iter()
        .map(|t| {
            (
                PlannedTensor::new(&t.name, t.dtype, t.shape.clone()),
                f.bytes(t).unwrap(),
            )
        })
        .collect();
    let qs = tensors
        .iter_mut()
        .find(|t| {
            t.0.name
                .ends_with("up_proj.weight.quant_state.bitsandbytes__nf4")
        })
        .unwrap();
    let lie = String::from_utf8(qs.1.clone())
        .unwrap()
        .replace("[128, 64]", "[128, 66]");
    qs.1 = lie.into_bytes();
    qs.0.shape = vec![qs.1.len()];
    drop(f);
    let bad = dir.path().join("bad.safetensors");
    lowbit::io::safetensors_write::write_all(&bad, &tensors, pt_metadata()).unwrap();
    let e = DequantizeJob::prepare(&bad, &dir.path().join("bad-out.safetensors"), None, false)
        .unwrap()
        .run(&Device::cpu(), &mut |_| {})
        .unwrap_err();
    assert_checkpoint_err(e, name);
    assert!(!dir.path().join("bad-out.safetensors").exists());
}

/// A file truncated by another process while lowbit reads it: a typed error naming the tensor, not SIGBUS.
#[test]
fn a_file_truncated_while_open_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut rng = Rng::fresh();
    write_tensors(&p, &llama_tensors(&mut rng, 1));
    let f = SafetensorsFile::open(&p).unwrap();
    let last = f.tensors().last().unwrap().clone();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = f.tensor(&last).unwrap_err();
    assert_checkpoint_err(e, "shrank");
    assert_checkpoint_err(f.bytes(&last).unwrap_err(), &last.name);
}

/// A header naming a tensor twice (a JSON map would keep the last silently) is reported by name.
#[test]
fn duplicate_header_names_are_named() {
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#;
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(&[1, 2, 3, 4]);
    let e = parse_header(Path::new("d.safetensors"), &b).unwrap_err();
    assert_checkpoint_err(e, "\"a\" appears twice");
}

/// Threads of one process replacing the same output concurrently: every commit lands a complete output or
/// says another process replaced it; never a raw "No such file" / "Directory not empty".
#[test]
fn concurrent_forced_commits_land_or_say_why() {
    use lowbit::io::model_dir::Output;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::write(&input, b"x").unwrap();
    let target = dir.path().join("out");
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (input, target, failures) = (&input, &target, &failures);
            s.spawn(move || {
                for i in 0..60 {
                    let r = Output::create(target, input, true, true).and_then(|o| {
                        std::fs::write(o.path().join("model.safetensors"), format!("{t}-{i}"))
                            .unwrap();
                        o.commit()
                    });
                    if let Err(e) = r {
                        let m = e.to_string();
                        if !m.contains("another process") {
                            failures.lock().unwrap().push(m);
                        }
                    }
                }
            });
        }
    });
    let f = failures.into_inner().unwrap();
    assert!(
        f.is_empty(),
        "{} raw failures, e.g. {:?}",
        f.len(),
        &f[..f.len().min(3)]
    );
    assert!(target.join("model.safetensors").is_file());
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

/// Copying the tokenizer onto a full disk names the file being written, not the input.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_copy_names_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tokenizer.json");
    std::fs::write(&src, vec![b'x'; 4096]).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("tokenizer.json")).unwrap();
    let e = lowbit::io::model_dir::copy_files(std::slice::from_ref(&src), &out).unwrap_err();
    match &e {
        Error::Io { path, .. } => assert_eq!(path, &out.join("tokenizer.json"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// A quantized file with a zero-size, 2^62-row packed ternary weight: the unpacked row count overflows and
/// must be an error, not a wrapped `[4, 0]`.
#[test]
fn ternary_row_count_overflow_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    lowbit::io::safetensors_write::write_all(
        &p,
        &[
            (
                PlannedTensor::new("l.weight", StDtype::U8, vec![(1usize << 62) + 1, 0]),
                vec![],
            ),
            (
                PlannedTensor::new("l.weight_scale", StDtype::F16, vec![1]),
                f16::from_f32(1.0).to_le_bytes().to_vec(),
            ),
        ],
        pt_metadata(),
    )
    .unwrap();
    let f = SafetensorsFile::open(&p).unwrap();
    let g = layout::groups(&f).unwrap();
    assert_checkpoint_err(
        layout::original_shape_dtype(&f, &g[0]).unwrap_err(),
        "overflows",
    );
    assert_checkpoint_err(
        layout::decode(&Device::cpu(), &f, &g[0], None).unwrap_err(),
        "overflows",
    );
}
