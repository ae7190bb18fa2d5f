//! A small host tensor: a shape and typed storage. Floating-point inputs may be f32, f16 or bf16; every
//! kernel widens them to f32 exactly before doing arithmetic (FORMATS.md §0.3).

use half::{bf16, f16};
use std::fmt;

/// Element types lowbit stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    U8,
    I8,
    I32,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The name torch and bitsandbytes use (`quant_state` JSON, config.json).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I32 => "int32",
            DType::I64 => "int64",
        }
    }

    /// Parses torch names (`float16`, `torch.bfloat16`) and short names (`f16`, `bf16`, `fp32`).
    pub fn parse(name: &str) -> Option<DType> {
        let n = name
            .trim()
            .trim_start_matches("torch.")
            .to_ascii_lowercase();
        Some(match n.as_str() {
            "float32" | "f32" | "fp32" | "float" => DType::F32,
            "float16" | "f16" | "fp16" | "half" => DType::F16,
            "bfloat16" | "bf16" => DType::BF16,
            "uint8" | "u8" => DType::U8,
            "int8" | "i8" => DType::I8,
            "int32" | "i32" => DType::I32,
            "int64" | "i64" => DType::I64,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        })
    }
}

/// A floating-point element type the kernels accept. Conversions are exact widening (to f32) and
/// round-to-nearest-even narrowing (from f32), as `__float2half_rn` / `__float2bfloat16_rn` do.
pub trait Float: Copy + Send + Sync + Default + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// The slice itself when `Self` is f32 (kernels that widen rows into a scratch buffer skip the copy).
    #[inline(always)]
    fn as_f32_slice(_s: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn as_f32_slice(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
}

impl Float for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Float for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Borrowed floating-point data of one of the three accepted dtypes.
#[derive(Clone, Copy, Debug)]
pub enum Floats<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// Owned floating-point data of one of the three accepted dtypes.
#[derive(Clone, Debug, PartialEq)]
pub enum FloatVec {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// Runs `$body` with `$s` bound to the typed slice inside a [`Floats`] (generic code over [`Float`]).
#[macro_export]
macro_rules! with_floats {
    ($floats:expr, $s:ident => $body:expr) => {
        match $floats {
            $crate::tensor::Floats::F32($s) => $body,
            $crate::tensor::Floats::F16($s) => $body,
            $crate::tensor::Floats::BF16($s) => $body,
        }
    };
}

impl<'a> Floats<'a> {
    pub fn len(&self) -> usize {
        with_floats!(self, s => s.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Floats::F32(_) => DType::F32,
            Floats::F16(_) => DType::F16,
            Floats::BF16(_) => DType::BF16,
        }
    }
    /// Widens every value to f32 (exact).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        with_floats!(self, s => s.iter().map(|v| v.to_f32()).collect())
    }
    /// Element `i` widened to f32.
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        with_floats!(self, s => s[i].to_f32())
    }
    pub fn slice(&self, range: std::ops::Range<usize>) -> Floats<'a> {
        match *self {
            Floats::F32(s) => Floats::F32(&s[range]),
            Floats::F16(s) => Floats::F16(&s[range]),
            Floats::BF16(s) => Floats::BF16(&s[range]),
        }
    }
    /// Index and count of non-finite values (NaN or ±inf), for input validation.
    pub fn non_finite(&self) -> Option<(usize, usize)> {
        with_floats!(self, s => {
            let mut first = None;
            let mut count = 0;
            for (i, v) in s.iter().enumerate() {
                if !v.to_f32().is_finite() {
                    count += 1;
                    first.get_or_insert(i);
                }
            }
            first.map(|f| (f, count))
        })
    }
}

impl FloatVec {
    /// Narrows f32 values to `dtype` with round-to-nearest-even.
    pub fn from_f32(values: Vec<f32>, dtype: DType) -> FloatVec {
        match dtype {
            DType::F16 => FloatVec::F16(values.into_iter().map(f16::from_f32).collect()),
            DType::BF16 => FloatVec::BF16(values.into_iter().map(bf16::from_f32).collect()),
            _ => FloatVec::F32(values),
        }
    }
    /// A zero-filled buffer of `len` elements.
    pub fn zeros(len: usize, dtype: DType) -> FloatVec {
        match dtype {
            DType::F16 => FloatVec::F16(vec![f16::ZERO; len]),
            DType::BF16 => FloatVec::BF16(vec![bf16::ZERO; len]),
            _ => FloatVec::F32(vec![0.0; len]),
        }
    }
    pub fn as_floats(&self) -> Floats<'_> {
        match self {
            FloatVec::F32(v) => Floats::F32(v),
            FloatVec::F16(v) => Floats::F16(v),
            FloatVec::BF16(v) => Floats::BF16(v),
        }
    }
    pub fn len(&self) -> usize {
        self.as_floats().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        self.as_floats().dtype()
    }
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.as_floats().to_f32_vec()
    }
    /// Raw little-endian bytes (for checkpoints and byte comparisons).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            FloatVec::F32(v) => bytemuck::cast_slice(v).to_vec(),
            FloatVec::F16(v) => bytemuck::cast_slice(v).to_vec(),
            FloatVec::BF16(v) => bytemuck::cast_slice(v).to_vec(),
        }
    }
}

impl From<Vec<f32>> for FloatVec {
    fn from(v: Vec<f32>) -> Self {
        FloatVec::F32(v)
    }
}
impl From<Vec<f16>> for FloatVec {
    fn from(v: Vec<f16>) -> Self {
        FloatVec::F16(v)
    }
}
impl From<Vec<bf16>> for FloatVec {
    fn from(v: Vec<bf16>) -> Self {
        FloatVec::BF16(v)
    }
}

/// The shape of an output that replaces the last dimension of `shape` with `n`.
pub fn with_last_dim(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(last) = s.last_mut() {
        *last = n;
    }
    s
}

/// `(rows, cols)` of a row-major shape read as rows of its last dimension (a scalar is one value).
pub fn split_last_dim(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&c, rest)) => (rest.iter().product(), c),
        None => (1, 1),
    }
}

/// The element count of a row-major shape, or None when it overflows `usize` (no such tensor fits in memory).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// A host tensor: row-major shape and typed storage. The fields are private so that every tensor holds
/// exactly the elements its shape claims: kernels index by shape and would otherwise read past the data.
/// Build one with [`Tensor::new`] (checked) or [`Tensor::vector`]; a struct literal does not compile:
///
/// ```compile_fail
/// use lowbit::tensor::{Tensor, TensorData};
/// let short = Tensor { shape: vec![1, 64], data: TensorData::U8(vec![0; 32]) };
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Typed storage of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Float(FloatVec),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl TensorData {
    /// The elements' little-endian bytes (how device backends upload them).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            TensorData::Float(FloatVec::F32(v)) => bytemuck::cast_slice(v),
            TensorData::Float(FloatVec::F16(v)) => bytemuck::cast_slice(v),
            TensorData::Float(FloatVec::BF16(v)) => bytemuck::cast_slice(v),
            TensorData::U8(v) => v,
            TensorData::I8(v) => bytemuck::cast_slice(v),
            TensorData::I32(v) => bytemuck::cast_slice(v),
            TensorData::I64(v) => bytemuck::cast_slice(v),
        }
    }

    /// Elements of `dtype` from little-endian bytes (a device download); a trailing partial element is
    /// dropped.
    pub fn from_bytes(dtype: DType, b: &[u8]) -> TensorData {
        let b = &b[..b.len() - b.len() % dtype.size_in_bytes()];
        match dtype {
            DType::F32 => TensorData::Float(FloatVec::F32(bytemuck::pod_collect_to_vec(b))),
            DType::F16 => {
                TensorData::Float(FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(b)))
            }
            DType::BF16 => {
                TensorData::Float(FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(b)))
            }
            DType::U8 => TensorData::U8(b.to_vec()),
            DType::I8 => TensorData::I8(bytemuck::pod_collect_to_vec(b)),
            DType::I32 => TensorData::I32(bytemuck::pod_collect_to_vec(b)),
            DType::I64 => TensorData::I64(bytemuck::pod_collect_to_vec(b)),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Float(f) => f.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Float(f) => f.dtype(),
            TensorData::U8(_) => DType::U8,
            TensorData::I8(_) => DType::I8,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
        }
    }
}

impl From<FloatVec> for TensorData {
    fn from(v: FloatVec) -> Self {
        TensorData::Float(v)
    }
}
impl From<Vec<f32>> for TensorData {
    fn from(v: Vec<f32>) -> Self {
        TensorData::Float(FloatVec::F32(v))
    }
}
impl From<Vec<f16>> for TensorData {
    fn from(v: Vec<f16>) -> Self {
        TensorData::Float(FloatVec::F16(v))
    }
}
impl From<Vec<bf16>> for TensorData {
    fn from(v: Vec<bf16>) -> Self {
        TensorData::Float(FloatVec::BF16(v))
    }
}
impl From<Vec<u8>> for TensorData {
    fn from(v: Vec<u8>) -> Self {
        TensorData::U8(v)
    }
}
impl From<Vec<i8>> for TensorData {
    fn from(v: Vec<i8>) -> Self {
        TensorData::I8(v)
    }
}
impl From<Vec<i32>> for TensorData {
    fn from(v: Vec<i32>) -> Self {
        TensorData::I32(v)
    }
}
impl From<Vec<i64>> for TensorData {
    fn from(v: Vec<i64>) -> Self {
        TensorData::I64(v)
    }
}

impl Tensor {
    /// A tensor of `shape` over `data`: a typed error unless `data` holds exactly the shape's element count.
    pub fn new(shape: Vec<usize>, data: impl Into<TensorData>) -> crate::Result<Tensor> {
        const OP: &str = "Tensor::new";
        let data = data.into();
        let expected = checked_numel(&shape).ok_or_else(|| {
            crate::Error::shape(
                OP,
                format!("shape {shape:?} has more elements than usize holds"),
            )
        })?;
        if data.len() != expected {
            return Err(crate::Error::Length {
                op: OP,
                what: "data",
                got: data.len(),
                expected,
            });
        }
        Ok(Tensor { shape, data })
    }
    /// A one-dimensional tensor of all of `data` (cannot mismatch, so it cannot fail).
    pub fn vector(data: impl Into<TensorData>) -> Tensor {
        let data = data.into();
        Tensor {
            shape: vec![data.len()],
            data,
        }
    }
    /// [`Tensor::new`] over float data.
    pub fn from_floats(shape: Vec<usize>, data: FloatVec) -> crate::Result<Tensor> {
        Tensor::new(shape, data)
    }
    /// [`Tensor::new`] over f32 data.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> crate::Result<Tensor> {
        Tensor::new(shape, FloatVec::F32(data))
    }
    /// The same data under another shape of the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> crate::Result<Tensor> {
        Tensor::new(shape, self.data)
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The row-major shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The typed storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }
    /// Shape and storage, moved out.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    /// A float tensor widened exactly to f32 (itself when already f32); a typed error naming `op` otherwise.
    pub fn into_f32(self, op: &'static str) -> crate::Result<Tensor> {
        if self.dtype() == DType::F32 {
            return Ok(self);
        }
        let v = self.floats(op)?.to_f32_vec();
        Tensor::f32(self.shape, v)
    }
    /// The float data, or a typed error naming `op` if this tensor is not f32/f16/bf16.
    pub fn floats(&self, op: &'static str) -> crate::Result<Floats<'_>> {
        match &self.data {
            TensorData::Float(f) => Ok(f.as_floats()),
            _ => Err(crate::Error::DType {
                op,
                got: self.dtype().to_string(),
                expected: "f32, f16, bf16",
            }),
        }
    }
}
