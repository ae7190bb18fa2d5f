//! The streaming quantizer (`QuantizeJob::run`) against the tensor-at-a-time reference path
//! (`QuantizeJob::run_tensor_by_tensor`, whole tensors through `layout::encode` and the existing kernel
//! calls): every output file byte for byte, in every format, on a sharded checkpoint of random f16 / bf16
//! / f32 tensors whose sizes cross chunk boundaries (tensors of several chunks, a block split across rows,
//! element counts that are not a multiple of the block size, kept tensors larger than a chunk).

mod io_common;

use half::{bf16, f16};
use io_common::{CONFIG, Rng};
use lowbit::io::safetensors_write::{PlannedTensor, pt_metadata, write_all};
use lowbit::io::{QuantFormat, QuantSpec, QuantizeJob, QuantizeOptions, StDtype};
use lowbit::tensor::DType;
use lowbit::{Device, FourBitType};
use std::path::{Path, PathBuf};

/// (name, dtype, shape) of the test model, split over two shards.
fn tensors() -> Vec<Vec<(String, StDtype, Vec<usize>)>> {
    let t = |n: &str, d: StDtype, s: &[usize]| (n.to_string(), d, s.to_vec());
    vec![
        vec![
            // Kept in full precision, larger than one read chunk.
            t("model.embed_tokens.weight", StDtype::F16, &[1100, 2048]),
            // 6 MiB of f16: two 4-bit chunks, two int8 row chunks.
            t(
                "model.layers.0.mlp.up_proj.weight",
                StDtype::F16,
                &[1536, 2048],
            ),
            // bf16 with rows of 1000: 4-bit chunks end mid-row.
            t(
                "model.layers.0.mlp.down_proj.weight",
                StDtype::BF16,
                &[2400, 1000],
            ),
            t(
                "model.layers.0.input_layernorm.weight",
                StDtype::F16,
                &[2048],
            ),
        ],
        vec![
            // f32, 16 MB: several chunks.
            t(
                "model.layers.1.self_attn.q_proj.weight",
                StDtype::F32,
                &[1000, 4100],
            ),
            // 4 x 33 = 132 values: not a multiple of any block size; below the ternary float64-sum limit.
            t(
                "model.layers.1.self_attn.k_proj.weight",
                StDtype::F16,
                &[4, 33],
            ),
            t(
                "model.layers.1.self_attn.v_proj.weight",
                StDtype::BF16,
                &[64, 520],
            ),
            t("model.norm.weight", StDtype::F32, &[2048]),
            t("lm_head.weight", StDtype::F16, &[300, 2048]),
        ],
    ]
}

fn values(rng: &mut Rng, dtype: StDtype, n: usize) -> Vec<u8> {
    // Rows of varying scale with an occasional outlier, as real weights.
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let s = 0.01 + 0.05 * ((i / 997) % 7) as f32;
            let x = rng.normal(s);
            if rng.next_u64().is_multiple_of(5000) {
                x * 40.0
            } else {
                x
            }
        })
        .collect();
    match dtype {
        StDtype::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        StDtype::BF16 => v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

fn make_model(dir: &Path, rng: &mut Rng) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let shards = tensors();
    let mut map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        let t: Vec<_> = shard
            .iter()
            .map(|(n, d, s)| {
                map.insert(n.clone(), name.clone().into());
                let bytes = values(rng, *d, s.iter().product());
                (PlannedTensor::new(n, *d, s.clone()), bytes)
            })
            .collect();
        write_all(&dir.join(&name), &t, pt_metadata()).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn opts(format: QuantFormat, blocksize: usize, double_quant: bool) -> QuantizeOptions {
    QuantizeOptions {
        spec: QuantSpec {
            format,
            blocksize,
            double_quant,
        },
        compute_dtype: DType::BF16,
        include: Some("k_proj|v_proj".into()),
        exclude: None,
        force: false,
        allow_ptq_ternary: true,
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn streaming_output_is_byte_identical_to_the_tensor_by_tensor_path() {
    let mut rng = Rng::fresh();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m");
    make_model(&src, &mut rng);
    let dev = Device::cpu();
    let cases = [
        (QuantFormat::FourBit(FourBitType::Nf4), 64, false),
        (QuantFormat::FourBit(FourBitType::Nf4), 64, true),
        (QuantFormat::FourBit(FourBitType::Fp4), 128, true),
        (QuantFormat::FourBit(FourBitType::Fp4), 4096, false),
        (QuantFormat::Int8, 64, false),
        (QuantFormat::Ternary, 64, false),
    ];
    for (k, (format, bs, dq)) in cases.into_iter().enumerate() {
        let what = format!("{} blocksize {bs} double_quant {dq}", format.name());
        let (a, b) = (
            dir.path().join(format!("s{k}")),
            dir.path().join(format!("r{k}")),
        );
        let streamed = QuantizeJob::prepare(&src, &a, opts(format, bs, dq))
            .unwrap()
            .run(&dev, &mut |_| {})
            .unwrap();
        let reference = QuantizeJob::prepare(&src, &b, opts(format, bs, dq))
            .unwrap()
            .run_tensor_by_tensor(&dev, &mut |_| {})
            .unwrap();
        let (fa, fb) = (files(&a), files(&b));
        assert_eq!(
            fa.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
            fb.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
            "{what}"
        );
        for (pa, pb) in fa.iter().zip(&fb) {
            let (ba, bb) = (std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
            assert!(ba == bb, "{what}: {} differs", pa.display());
        }
        assert_eq!(streamed.bytes_in, reference.bytes_in, "{what}");
        assert_eq!(streamed.bytes_out, reference.bytes_out, "{what}");
        assert_eq!(streamed.quantized, reference.quantized, "{what}");
        for (s, r) in streamed.tensors.iter().zip(&reference.tensors) {
            assert_eq!((&s.name, s.bytes_out), (&r.name, r.bytes_out), "{what}");
            if let (Some(es), Some(er)) = (s.rel_error, r.rel_error) {
                // Same statistic (4-bit values compared in f32 on both paths), different summation order.
                assert!(
                    (es - er).abs() <= 1e-3 * er.max(1e-6),
                    "{what}: {} rel_error {es} vs {er}",
                    s.name
                );
            }
        }
        eprintln!(
            "{what}: identical, {} tensors, mean rel error {:.5}",
            streamed.tensors.len(),
            streamed.mean_rel_error
        );
    }
}

#[test]
fn streaming_reports_the_same_checks_as_the_reference() {
    // A NaN in the second chunk of a chunked tensor, and an int8 value beyond float16's range.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad.safetensors");
    let n = 1536 * 2048;
    let mut v = vec![f16::from_f32(0.01); n];
    v[n - 5] = f16::NAN;
    v[n - 7] = f16::INFINITY;
    let big = vec![70000.0f32; 64 * 64];
    write_all(
        &src,
        &[
            (
                PlannedTensor::new("a.weight", StDtype::F16, vec![1536, 2048]),
                bytemuck::cast_slice(&v).to_vec(),
            ),
            (
                PlannedTensor::new("b.weight", StDtype::F32, vec![64, 64]),
                bytemuck::cast_slice(&big).to_vec(),
            ),
        ],
        pt_metadata(),
    )
    .unwrap();
    let dev = Device::cpu();
    for (format, exclude) in [
        (QuantFormat::FourBit(FourBitType::Nf4), None),
        (QuantFormat::Int8, None),
        (QuantFormat::Int8, Some("a\\.")),
        (QuantFormat::Ternary, None),
    ] {
        let mut o = opts(format, 64, false);
        o.exclude = exclude.map(String::from);
        let out = |k: &str| {
            dir.path()
                .join(format!("{k}-{}.safetensors", format.name()))
        };
        let s = QuantizeJob::prepare(&src, &out("s"), o.clone())
            .unwrap()
            .run(&dev, &mut |_| {})
            .unwrap_err();
        let r = QuantizeJob::prepare(&src, &out("r"), o)
            .unwrap()
            .run_tensor_by_tensor(&dev, &mut |_| {})
            .unwrap_err();
        assert_eq!(s.to_string(), r.to_string(), "{}", format.name());
        assert!(!out("s").exists() && !out("r").exists());
        eprintln!("{}: {s}", format.name());
    }
}
