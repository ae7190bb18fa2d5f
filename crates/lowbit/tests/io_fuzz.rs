//! Mutation fuzzing of the checkpoint readers: random byte edits of valid quantized files (header, JSON and
//! data) must give Ok or a typed error, never a panic. Bounded: a fixed number of cases per run.

mod io_common;

use io_common::*;
use lowbit::io::layout::{self, QuantFormat};
use lowbit::io::{QuantSpec, QuantizeJob, QuantizeOptions, SafetensorsFile};
use lowbit::tensor::DType;
use lowbit::{Device, FourBitType};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Valid quantized files (nf4 + double quant, int8, ternary) built once per run.
fn seeds() -> &'static Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = io_common::Rng::fresh();
        let mut t = llama_tensors(&mut rng, 1);
        t.retain(|x| x.0.contains("q_proj") || x.0.contains("norm"));
        let src = dir.path().join("m.safetensors");
        write_tensors(&src, &t);
        [
            QuantFormat::FourBit(FourBitType::Nf4),
            QuantFormat::Int8,
            QuantFormat::Ternary,
        ]
        .iter()
        .map(|&format| {
            let out = dir.path().join(format!("{}.safetensors", format.name()));
            let o = QuantizeOptions {
                spec: QuantSpec {
                    format,
                    blocksize: 64,
                    double_quant: matches!(format, QuantFormat::FourBit(_)),
                },
                compute_dtype: DType::F32,
                include: None,
                exclude: None,
                force: true,
                allow_ptq_ternary: true,
            };
            QuantizeJob::prepare(&src, &out, o)
                .unwrap()
                .run(&Device::cpu(), &mut |_| {})
                .unwrap();
            std::fs::read(out).unwrap()
        })
        .collect()
    })
}

/// Everything a reader does with a file: open, group, inspect, decode every group.
fn read_everything(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let Ok(f) = SafetensorsFile::open(&p) else {
        return;
    };
    let _ = lowbit::io::inspect(&p);
    let Ok(groups) = layout::groups(&f) else {
        return;
    };
    let dev = Device::cpu();
    for g in &groups {
        let _ = layout::original_shape_dtype(&f, g);
        let _ = layout::decode(&dev, &f, g, Some(DType::F32));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<u32>(), any::<u8>(), 0u8..4), 1..6),
        header_bias in any::<bool>(),
    ) {
        let mut b = seeds()[which].clone();
        let hlen = (u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 8).min(b.len());
        for (pos, val, kind) in edits {
            let range = if header_bias { hlen.min(b.len()) } else { b.len() };
            let i = pos as usize % range.max(1);
            match kind {
                0 => b[i] = val,
                1 => b[i] = b[i].wrapping_add(1),
                2 => { b.truncate(i.max(1)); }
                _ => { if b[i].is_ascii_digit() { b[i] = b'0' + val % 10; } }
            }
            if b.is_empty() { break; }
        }
        read_everything(&b);
    }
}

// ---- Structure-aware fuzzing --------------------------------------------------------------------------------
//
// Valid framing (a header the writer lays out, contiguous offsets, data of the declared length) around a
// quantized weight whose structure is then edited: dtypes, shapes, names, dropped or duplicated keys, and the
// quant_state JSON fields (quant_type, blocksize, dtype, shape, nested_offset). Every reader must answer Ok or
// a typed error; `inspect` must never accept what `dequantize` rejects.

use lowbit::io::StDtype;
use lowbit::io::safetensors_write::{PlannedTensor, pt_metadata, write_all};
use lowbit::tensor::{FloatVec, Tensor};

type Entry = (String, StDtype, Vec<usize>, Vec<u8>);

/// The exact tensors lowbit writes for one `[rows, cols]` weight in `format`.
fn quantized_entries(
    format: QuantFormat,
    dq: bool,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Vec<Entry> {
    let spec = QuantSpec {
        format,
        blocksize: 64,
        double_quant: dq,
    };
    let mut s = seed | 1;
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let w = Tensor::from_floats(vec![rows, cols], FloatVec::from_f32(vals, DType::F16)).unwrap();
    let (planned, tail) = layout::plan(&spec, "m.l.weight", DType::F16, &[rows, cols]).unwrap();
    let enc = layout::encode(&Device::cpu(), &spec, "m.l.weight", &w).unwrap();
    let mut out: Vec<Entry> = planned
        .into_iter()
        .zip(enc.tensors)
        .map(|(p, (_, b))| (p.name, p.dtype, p.shape, b))
        .collect();
    if let (Some(t), Some((_, b))) = (tail, enc.tail) {
        out.push((t.name, StDtype::U8, vec![b.len()], b));
    }
    out.push(("m.norm.weight".into(), StDtype::F16, vec![4], vec![0; 8]));
    out
}

const DTYPES: &[StDtype] = &[
    StDtype::U8,
    StDtype::I8,
    StDtype::F16,
    StDtype::BF16,
    StDtype::F32,
    StDtype::F64,
    StDtype::I32,
    StDtype::I64,
    StDtype::Bool,
];

fn json_value(pick: u32) -> serde_json::Value {
    use serde_json::json;
    match pick % 16 {
        0 => json!(7),
        1 => json!(0),
        2 => json!(-64),
        3 => json!(1u64 << 40),
        4 => json!(u64::MAX),
        5 => json!(1e300),
        6 => json!("64"),
        7 => json!(null),
        8 => json!([1u64 << 40, 1u64 << 40]),
        9 => json!([0, 64]),
        10 => json!([-1, 4]),
        11 => json!("int8"),
        12 => json!("fp4"),
        13 => json!(4096),
        14 => json!([[1], 2]),
        _ => json!({}),
    }
}

/// Applies structural edit `kind` with parameters `a`, `b` to the entries.
fn edit(t: &mut Vec<Entry>, kind: u8, a: u32, b: u32) {
    if t.is_empty() {
        return;
    }
    let i = a as usize % t.len();
    match kind % 8 {
        // Another dtype over the same bytes (shape re-derived so the framing stays valid).
        0 => {
            let d = DTYPES[b as usize % DTYPES.len()];
            let n = t[i].3.len() / d.size().max(1);
            t[i].3.truncate(n * d.size());
            t[i].1 = d;
            t[i].2 = vec![n];
        }
        // Another shape: same numel reshaped, a dimension off by one, a zero dimension with a huge one.
        1 => {
            let size = t[i].1.size().max(1);
            let n = t[i].3.len() / size;
            t[i].2 = match b % 5 {
                0 => vec![n, 1],
                1 => vec![1, n, 1],
                2 => vec![(1usize << 62) + (b as usize % 7), 0],
                3 => vec![0, usize::MAX / 2],
                _ => vec![n + 1],
            };
            let numel: usize = t[i].2.iter().product();
            t[i].3.resize(numel * size, 0x3c);
        }
        // Drop a key.
        2 => {
            t.remove(i);
        }
        // Rename a key: another suffix, a control character, another quant type.
        3 => {
            let suffixes = [
                ".absmax",
                ".quant_map",
                ".nested_absmax",
                ".quant_state.bitsandbytes__fp4",
                ".quant_state.bitsandbytes__int9",
                "\u{1b}[2J",
                ".SCB",
            ];
            let base = t[i].0.split(".weight").next().unwrap_or("").to_string();
            t[i].0 = format!("{base}.weight{}", suffixes[b as usize % suffixes.len()]);
        }
        // Duplicate a key under a sibling name.
        4 => {
            let mut e = t[i].clone();
            e.0 = format!(
                "m.k.weight{}",
                &t[i].0[t[i].0.find(".weight").map_or(0, |p| p + 7)..]
            );
            t.push(e);
        }
        // Flip bytes of a (small) tensor's data.
        5 => {
            let len = t[i].3.len();
            if len > 0 {
                t[i].3[b as usize % len] ^= (a >> 8) as u8 | 1;
            }
        }
        // Edit a quant_state field.
        _ => {
            let Some(q) = t.iter_mut().find(|e| e.0.contains(".quant_state.")) else {
                return;
            };
            let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&q.3) else {
                return;
            };
            let keys = [
                "quant_type",
                "blocksize",
                "dtype",
                "shape",
                "nested_offset",
                "nested_blocksize",
            ];
            let k = keys[a as usize % keys.len()];
            if b.is_multiple_of(9) {
                m.remove(k);
            } else {
                m.insert(k.into(), json_value(b));
            }
            q.3 = serde_json::to_vec(&m).unwrap();
            q.2 = vec![q.3.len()];
        }
    }
}

fn to_file(t: &[Entry]) -> Option<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    let tensors: Vec<_> = t
        .iter()
        .filter(|e| seen.insert(e.0.clone()))
        .map(|(n, d, s, b)| (PlannedTensor::new(n, *d, s.clone()), b.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    write_all(&p, &tensors, pt_metadata()).ok()?;
    std::fs::read(p).ok()
}

/// `inspect` accepts a file only if `dequantize` would too (decoding every quantized group succeeds).
fn inspect_agrees_with_decode(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let inspected = lowbit::io::inspect(&p);
    let Ok(f) = SafetensorsFile::open(&p) else {
        assert!(inspected.is_err());
        return;
    };
    let dev = Device::cpu();
    // What `dequantize` does: plain tensors are copied byte for byte, quantized groups decoded.
    let decoded = layout::groups(&f).and_then(|gs| {
        gs.iter()
            .filter(|g| !matches!(g, layout::Group::Plain(_)))
            .try_for_each(|g| layout::decode(&dev, &f, g, Some(DType::F32)).map(drop))
    });
    if let (Ok(_), Err(e)) = (&inspected, &decoded) {
        panic!("inspect accepted a file decode rejects: {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn structured_edits_never_panic_and_inspect_is_honest(
        format in 0usize..4,
        rows in 1usize..9,
        cols in 1usize..40,
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..4),
    ) {
        let (fmt, dq) = match format {
            0 => (QuantFormat::FourBit(FourBitType::Nf4), false),
            1 => (QuantFormat::FourBit(FourBitType::Fp4), true),
            2 => (QuantFormat::Int8, false),
            _ => (QuantFormat::Ternary, false),
        };
        let rows = if fmt == QuantFormat::Ternary { rows * 4 } else { rows };
        let mut t = quantized_entries(fmt, dq, rows, cols * 4, seed);
        for (k, a, b) in edits {
            edit(&mut t, k, a, b);
        }
        if let Some(bytes) = to_file(&t) {
            read_everything(&bytes);
            inspect_agrees_with_decode(&bytes);
        }
    }
}
