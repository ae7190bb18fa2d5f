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
                    double_quant: true,
                },
                compute_dtype: DType::F32,
                include: None,
                exclude: None,
                force: true,
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
