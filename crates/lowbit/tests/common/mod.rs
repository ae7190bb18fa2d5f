//! Shared test helpers: golden-vector loading and float64 reference checks.
#![allow(dead_code)]

pub mod golden_cases;

use half::{bf16, f16};
use lowbit::tensor::{FloatVec, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// Special f32 values the quantizer tests sprinkle into their inputs: NaN, infinities, a signed zero and
/// subnormals.
pub const SPECIAL_F32: [f32; 6] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -0.0,
    1e-40,
    -3e-39,
];

/// One golden file: its cases (JSON objects) and tensors by name.
pub struct GoldenFile {
    pub cases: Vec<Value>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.safetensors"))
}

pub fn load_golden(name: &str) -> GoldenFile {
    let bytes = std::fs::read(golden_path(name)).expect("golden file present");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(meta.metadata().as_ref().unwrap().get("cases").unwrap()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, to_tensor(&view)))
        .collect();
    GoldenFile { cases, tensors }
}

fn to_tensor(v: &safetensors::tensor::TensorView) -> Tensor {
    let b = v.data();
    let shape = v.shape().to_vec();
    macro_rules! cast {
        ($t:ty) => {
            b.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<$t>>()
        };
    }
    let data = match v.dtype() {
        Dtype::F32 => TensorData::Float(FloatVec::F32(cast!(f32))),
        Dtype::F16 => TensorData::Float(FloatVec::F16(
            cast!(u16).into_iter().map(f16::from_bits).collect(),
        )),
        Dtype::BF16 => TensorData::Float(FloatVec::BF16(
            cast!(u16).into_iter().map(bf16::from_bits).collect(),
        )),
        Dtype::U8 => TensorData::U8(b.to_vec()),
        Dtype::I8 => TensorData::I8(b.iter().map(|&x| x as i8).collect()),
        Dtype::I32 => TensorData::I32(cast!(i32)),
        Dtype::I64 => TensorData::I64(cast!(i64)),
        other => panic!("unexpected golden dtype {other:?}"),
    };
    Tensor::new(shape, data).expect("golden tensor of its shape")
}

impl GoldenFile {
    pub fn get(&self, case: &Value, role: &str) -> &Tensor {
        let name = format!("{}.{}", case["name"].as_str().unwrap(), role);
        self.tensors
            .get(&name)
            .unwrap_or_else(|| panic!("golden tensor {name} missing"))
    }
    pub fn try_get(&self, case: &Value, role: &str) -> Option<&Tensor> {
        self.tensors
            .get(&format!("{}.{}", case["name"].as_str().unwrap(), role))
    }
}

/// Raw little-endian bytes of a tensor, for byte-exact comparisons.
pub fn bytes(t: &Tensor) -> Vec<u8> {
    match t.data() {
        TensorData::Float(f) => f.to_le_bytes(),
        TensorData::U8(v) => v.clone(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn as_f32(t: &Tensor) -> Vec<f32> {
    match t.data() {
        TensorData::Float(f) => f.to_f32_vec(),
        TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

pub fn u8s(t: &Tensor) -> &[u8] {
    match t.data() {
        TensorData::U8(v) => v,
        _ => panic!("expected u8 tensor"),
    }
}

/// Tallies exact matches per op and prints one summary line per op and a total.
#[derive(Default)]
pub struct Tally {
    pub rows: Vec<(String, usize, usize)>,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, op: &str, name: &str, ok: bool, why: impl FnOnce() -> String) {
        match self.rows.iter_mut().find(|r| r.0 == op) {
            Some(r) => {
                r.1 += ok as usize;
                r.2 += 1;
            }
            None => self.rows.push((op.to_string(), ok as usize, 1)),
        }
        if !ok {
            self.failures.push(format!("{name}: {}", why()));
        }
    }
    pub fn finish(&self, label: &str) {
        let (mut m, mut t) = (0, 0);
        for (op, ok, total) in &self.rows {
            println!("golden[{label}] {op:<24} {ok}/{total} byte-exact");
            m += ok;
            t += total;
        }
        println!("golden[{label}] summary: {m}/{t} cases matched byte for byte");
        assert!(
            self.failures.is_empty(),
            "golden mismatches:\n{}",
            self.failures.join("\n")
        );
    }
}

/// First index where two byte strings differ, for messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("length {} vs {}", a.len(), b.len());
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
    format!(
        "first difference at byte {i}: {} vs {} ({} bytes differ)",
        a[i],
        b[i],
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    )
}

/// A fresh random seed for `test`, printed so a failure can be replayed (`LOWBIT_SEED` overrides it).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    seed
}
